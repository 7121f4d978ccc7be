"""Readers: every input file kptrace accepts becomes typed event rows plus notes about the input.

Only this package opens input files. A reader picks the format from the content, never the
file name, and reports damage (unreadable lines, truncation, lost events) instead of hiding it.

The contract every reader keeps (`READERS`): it says whether it recognises a file from its
first bytes (after decompression), and returns a `RawTrace` whose rows carry the schema's
columns it knows, `ts_resolution_ns`, and `seq`, a number that orders rows as the input
recorded them (a line number for text, the time order of records for binary pages).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from kptrace.errors import TraceError
from kptrace.read.binary import Capture, decode_table, wide_rows
from kptrace.read.duty import gap_markers, recorded_windows
from kptrace.read.fields import OUT_OF_RANGE, type_fields
from kptrace.read.lines import detect_format, split_lines
from kptrace.read.rawpages import is_raw_dir, read_raw_dir
from kptrace.read.source import SourceBytes, check_text, looks_like_text, read_bytes
from kptrace.read.table import EventTable
from kptrace.read.tracedat import TraceDatError, is_tracedat, read_tracedat


@dataclass
class RawTrace:
    """Typed event rows (schema columns plus `seq`, `ts_resolution_ns`) and input notes. A binary
    reader hands its rows over held compact (`table`, kptrace.read.table: in time order, 1 ns
    resolution, `seq` the row order); `rows` then builds the wide rows from it on each use."""

    rows: pl.DataFrame | None
    source_format: str
    files: list[str]
    warnings: list[str] = field(default_factory=list)
    unparsed_count: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    manifest: dict | None = None
    #: What the input was counted in ("lines" of text, "records" of ring-buffer pages), how many
    #: it held, and how many carry no event by design (headers, comments, blank lines; a
    #: bundle's counter-file tracepoints that repeat the trace). With `unparsed_count` and the
    #: event and marker rows they account for every one (docs/reliability.md).
    unit: str = "lines"
    units: int = 0
    ignored_count: int = 0
    repeated_count: int = 0
    table: EventTable | None = None

    def frames(self) -> list[pl.DataFrame]:
        """Every frame the rows are held in, for measuring what they cost."""
        return self.table.frames() if self.table is not None else [self.__dict__["_rows"]]


def _rows(trace: RawTrace) -> pl.DataFrame:
    held = trace.__dict__["_rows"]
    return wide_rows(trace.table) if held is None and trace.table is not None else held


def _set_rows(trace: RawTrace, rows: pl.DataFrame | None) -> None:
    trace.__dict__["_rows"] = rows


RawTrace.rows = property(_rows, _set_rows)  # after @dataclass, which would take a property for a default


def _cut_last_line(text: str) -> tuple[str, str | None]:
    """The text up to its last newline, and the incomplete line after it (None when none)."""
    if text.endswith("\n"):
        return text, None
    cut = text.rfind("\n") + 1
    return text[:cut], text[cut:]


def _out_of_range_examples(rows: pl.DataFrame) -> list[str]:
    return [f"line {n}: {event}: {payload} (a number too large for its field)"[:200]
            for n, event, payload in rows.select("line_no", "event", "payload").head(3).iter_rows()]


#: Bytes of a text file parsed at a time when only some of its rows are kept (a bundle's perf
#: counter samples, `read_counter_samples`): one chunk's line frames are held, not the file's.
KEPT_CHUNK_BYTES = 32 << 20


def _chunks(raw: bytes, size: int | None) -> Iterator[bytes]:
    """`raw` in pieces of about `size` bytes, each but the last ending with a newline (so a
    UTF-8 character is never split); the whole of it when `size` is None."""
    if size is None:
        yield raw
        return
    start = 0
    while start < len(raw):
        newline = raw.find(b"\n", start + size - 1)
        end = len(raw) if newline < 0 else newline + 1
        yield raw[start:end]
        start = end


def _text_trace(source: SourceBytes, keep: pl.Expr | None = None) -> RawTrace:
    """A tracefs, trace-cmd report or perf script text file; every line is an event, a marker,
    ignorable, or counted unreadable with examples (a cut last line, a number out of range too).
    With `keep`, only the rows it selects are returned (the others counted `repeated_count`),
    and the file is parsed KEPT_CHUNK_BYTES at a time; lost-event markers are dated within a
    chunk, so `keep` must leave them out."""
    check_text(source)
    warnings, raw = list(source.warnings), source.data
    head = raw[: 4 << 20].decode("utf-8", errors="replace")  # detect_format reads the first 1 Mi characters
    fmt = detect_format(_cut_last_line(head)[0] if len(head) == len(raw) else head)
    if fmt is None:
        raise TraceError(source.path, "unknown format: no line looks like tracefs text, "
                                      "`trace-cmd report` or `perf script` output")
    kept, unreadable, out_of_range, lines, ignored, unparsed, events, dropped, cut = [], [], [], 0, 0, 0, 0, 0, None
    for piece in _chunks(raw, None if keep is None else KEPT_CHUNK_BYTES):
        text, cut = _cut_last_line(piece.decode("utf-8", errors="replace"))
        split = split_lines(text, fmt, lines + 1)
        rows = type_fields(split.rows)
        damaged = rows.filter(OUT_OF_RANGE)
        rows = rows.filter(~pl.col(OUT_OF_RANGE)).drop(OUT_OF_RANGE)
        unreadable += split.unparsed_examples
        out_of_range += _out_of_range_examples(damaged)
        lines, ignored = lines + split.lines, ignored + split.ignored_count
        unparsed += split.unparsed_count + damaged.height
        events += rows.filter(pl.col("subsystem").ne_missing("kptrace")).height
        if keep is not None:
            dropped, rows = dropped + rows.height, rows.filter(keep)
            dropped -= rows.height
        kept.append(rows)
    if cut is not None:
        warnings.append(f"last line is incomplete (file ends mid-line); counted unreadable: {cut[:80]!r}")
    unparsed += cut is not None
    examples = unreadable[:3] + out_of_range[:3]
    if cut is not None:
        examples.append(f"line {lines + 1} (incomplete): {cut[:160]}")
    if events == 0:
        raise TraceError(source.path, f"no events found (read as {fmt}; {unparsed} lines not understood)")
    if unparsed:
        warnings.append(f"skipped {unparsed} lines that are not {fmt} events, e.g. " + "; ".join(examples[:2]))
    return RawTrace(
        rows=(kept[0] if len(kept) == 1 else pl.concat(kept)).rename({"line_no": "seq"}),
        source_format=fmt,
        files=[str(source.path)],
        warnings=warnings,
        unparsed_count=unparsed,
        unparsed_examples=examples[:3],
        units=lines + (cut is not None),
        ignored_count=ignored,
        repeated_count=dropped,
    )


#: A record whose event id has no format in the capture (decode names it `unknown_event_N`).
UNDECODABLE = (pl.col("subsystem") == "unknown") & pl.col("event").cast(pl.String).str.starts_with("unknown_event_")


def undecodable_warning(count: int, names: list[str]) -> str:
    return f"skipped {count} records with an event id the capture has no format for, e.g. {', '.join(names[:3])}"


def undecodable_examples(found: pl.DataFrame) -> list[str]:
    """Up to three undecodable records, as the unreadable-input examples of meta.json."""
    return [f"record {seq} on CPU {cpu} at {ts} ns: {event} (no format for this event id)"
            for seq, cpu, ts, event in found.select("seq", "cpu", "ts", "event").head(3).iter_rows()]


def _binary_trace(capture: Capture, path: Path, source_format: str, warnings: list[str]) -> RawTrace:
    """Rows decoded from ring-buffer pages; a capture without records is an error, as for text.

    Every data record is an event row, except one whose event id has no format in the capture
    (a damaged record, or a format file missing): it cannot be decoded, so it is counted
    unreadable with examples, never an event of an invented name.
    """
    try:
        table = decode_table(capture)
    except ValueError as exc:  # the decoder's word for pages or formats it cannot use
        raise TraceError(path, f"{source_format}: {exc}") from None
    if table is None:
        raise TraceError(path, f"no events found (read as {source_format})")
    core = table.core
    # Counted in one query: a filter would copy every column of every kept row.
    records, unknown, lost = core.select(records=pl.col("subsystem").ne_missing("kptrace").sum(),
                                         unknown=(pl.col("subsystem") == "unknown").sum(),
                                         lost=(pl.col("event") == "lost_events").sum()).row(0)
    undecodable = core.filter(UNDECODABLE) if unknown else core.clear()
    if undecodable.height:
        seq = core.with_row_index("seq", offset=1).filter(UNDECODABLE)["seq"]
        found = table.rows_at(seq.to_numpy().astype(np.int64) - 1).with_columns(seq=seq)
        table = table.take(~core.select(UNDECODABLE).to_series().to_numpy())
        names = undecodable["event"].cast(pl.String).unique(maintain_order=True).head(3).to_list()
        warnings = warnings + [undecodable_warning(undecodable.height, names)]
    if records == undecodable.height:
        raise TraceError(path, f"no events found (read as {source_format}; "
                               f"{undecodable.height} records with no event format)")
    examples = undecodable_examples(found) if undecodable.height else []
    return RawTrace(rows=None, table=table, source_format=source_format, files=[str(path)],
                    warnings=warnings + capture.warnings + (
                        [f"{lost} ring-buffer pages follow lost events"] if lost else []),
                    unparsed_count=undecodable.height, unparsed_examples=examples, unit="records", units=records)


def _tracedat_trace(source: SourceBytes) -> RawTrace:
    """A trace-cmd trace.dat (version 6 or 7)."""
    try:
        capture = read_tracedat(source.data)
    except (TraceDatError, ValueError) as exc:
        raise TraceError(source.path, f"trace.dat: {exc}") from None
    return _binary_trace(capture, source.path, "trace.dat", list(source.warnings))


def read_raw_pages(directory: str | Path) -> RawTrace:
    """Raw tracefs ring-buffer pages in the collector's `raw/` layout (see kptrace.read.rawpages)."""
    directory = Path(directory)
    return _binary_trace(read_raw_dir(directory), directory, "raw-pages", [])


@dataclass(frozen=True)
class Reader:
    """One file format: how to recognise it from its first bytes, and how to read it."""

    name: str
    recognises: Callable[[bytes], bool]
    read: Callable[[SourceBytes], RawTrace]


#: Tried in order; the first that recognises a file reads it.
READERS = (
    Reader("trace.dat", is_tracedat, _tracedat_trace),
    Reader("text", looks_like_text, _text_trace),
)


def read_file(path: str | Path) -> RawTrace:
    """Read one trace file (optionally compressed) with the reader that recognises it."""
    source = read_bytes(path)
    head = source.data[: 1 << 16]
    reader = next((r for r in READERS if r.recognises(head)), READERS[-1])
    return reader.read(source)


def read_text_trace(path: str | Path) -> RawTrace:
    """Read one tracefs, trace-cmd report or perf script text file (optionally compressed)."""
    return _text_trace(read_bytes(path))


def read_counter_samples(path: str | Path) -> RawTrace:
    """The perf counter samples of a bundle's perf script text, in file order, with what
    read_text_trace says of the whole file; its other rows (tracepoints that only anchor the
    samples and repeat the trace's events) are counted in `repeated_count`, and never held
    whole: the file is parsed a chunk at a time."""
    return _text_trace(read_bytes(path), keep=pl.col("subsystem") == "counter")


def _bundle_member(directory: Path, manifest_path: Path, name: object) -> Path:
    """A file the manifest names, which must be a relative path inside the bundle: a copied
    bundle is untrusted, and its manifest must not make kptrace read /etc/passwd."""
    if not isinstance(name, str) or "\x00" in name:
        raise TraceError(manifest_path, f"a file entry is not a file name: {name!r}"[:200])
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise TraceError(manifest_path, f"names a file outside the bundle: {name!r}"[:200])
    return path


def read_bundle(directory: str | Path) -> RawTrace:
    """Read a kptrace-record bundle: its trace text, and counters sampled by perf if present."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise TraceError(manifest_path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TraceError(manifest_path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or not isinstance(files or {}, dict):
        raise TraceError(manifest_path, "not a kptrace manifest (a JSON object with a `files` object)")
    files = files or {}
    raw = directory / "raw"
    if is_raw_dir(raw):
        parts = [read_raw_pages(raw)]
    elif files.get("trace"):
        parts = [read_file(_bundle_member(directory, manifest_path, files["trace"]))]
    else:
        raise TraceError(manifest_path, "names no trace file under files.trace, and the bundle has no raw/ pages")
    if files.get("perf_counters"):
        parts.append(read_counter_samples(_bundle_member(directory, manifest_path, files["perf_counters"])))
    seq_offset = 0
    frames = []
    for part in parts:
        rows = part.rows  # a binary part's rows are built wide on each use: once here
        frames.append(rows.with_columns(pl.col("seq").cast(pl.Int64) + seq_offset))
        seq_offset += int(rows["seq"].max() or 0)
    if len(windows := recorded_windows(manifest)) > 1:
        cpus = pl.concat([f.select(pl.col("cpu").cast(pl.Int64)) for f in frames])["cpu"].drop_nulls().unique()
        frames.append(gap_markers(windows, cpus.to_list(), seq_offset + 1))
    return RawTrace(
        rows=pl.concat(frames, how="diagonal_relaxed").sort("ts", "seq", nulls_last=False),
        source_format="kptrace-bundle (" + "+".join(p.source_format for p in parts) + ")",
        files=[f for p in parts for f in p.files],
        warnings=[w for p in parts for w in p.warnings],
        unparsed_count=sum(p.unparsed_count for p in parts),
        unparsed_examples=[e for p in parts for e in p.unparsed_examples][:3],
        manifest=manifest,
        unit="+".join(dict.fromkeys(p.unit for p in parts)),
        units=sum(p.units for p in parts),
        ignored_count=sum(p.ignored_count for p in parts),
        repeated_count=sum(p.repeated_count for p in parts),
    )


def read_any(path: str | Path) -> RawTrace:
    """A bundle directory (with manifest.json), a directory of raw pages, or one trace file."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").exists():
        return read_bundle(path)
    if is_raw_dir(path):
        return read_raw_pages(path)
    return read_file(path)
