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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kptrace.errors import TraceError
from kptrace.read.binary import Capture, decode
from kptrace.read.duty import gap_markers, recorded_windows
from kptrace.read.fields import type_fields
from kptrace.read.lines import detect_format, split_lines
from kptrace.read.rawpages import is_raw_dir, read_raw_dir
from kptrace.read.source import SourceBytes, as_text, looks_like_text, read_bytes
from kptrace.read.tracedat import TraceDatError, is_tracedat, read_tracedat


@dataclass
class RawTrace:
    """Typed event rows (schema columns plus `seq`, `ts_resolution_ns`) and input notes."""

    rows: pl.DataFrame
    source_format: str
    files: list[str]
    warnings: list[str] = field(default_factory=list)
    unparsed_count: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    manifest: dict | None = None


def _text_trace(source: SourceBytes) -> RawTrace:
    """A tracefs, trace-cmd report or perf script text file."""
    source = as_text(source)
    text = source.text
    warnings = list(source.warnings)
    if not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        warnings.append(f"last line is incomplete (file ends mid-line); dropped: {text[cut:][:80]!r}")
        text = text[:cut]
    fmt = detect_format(text)
    if fmt is None:
        raise TraceError(source.path, "unknown format: no line looks like tracefs text, "
                                      "`trace-cmd report` or `perf script` output")
    split = split_lines(text, fmt)
    if split.rows.filter(pl.col("subsystem").ne_missing("kptrace")).height == 0:
        raise TraceError(source.path, f"no events found (read as {fmt}; "
                                      f"{split.unparsed_count} lines not understood)")
    if split.unparsed_count:
        warnings.append(f"skipped {split.unparsed_count} lines that are not {fmt} events, e.g. "
                        + "; ".join(split.unparsed_examples[:2]))
    return RawTrace(
        rows=type_fields(split.rows).rename({"line_no": "seq"}),
        source_format=fmt,
        files=[str(source.path)],
        warnings=warnings,
        unparsed_count=split.unparsed_count,
        unparsed_examples=split.unparsed_examples,
    )


def _binary_trace(capture: Capture, path: Path, source_format: str, warnings: list[str]) -> RawTrace:
    """Rows decoded from ring-buffer pages; a capture without records is an error, as for text."""
    rows = decode(capture)
    if rows.filter(pl.col("subsystem").ne_missing("kptrace")).height == 0 if rows.height else True:
        raise TraceError(path, f"no events found (read as {source_format})")
    lost = rows.filter(pl.col("event") == "lost_events").height
    return RawTrace(rows=rows, source_format=source_format, files=[str(path)],
                    warnings=warnings + capture.warnings + (
                        [f"{lost} ring-buffer pages follow lost events"] if lost else []))


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


def _bundle_member(directory: Path, manifest_path: Path, name: object) -> Path:
    """A file the manifest names, which must be a relative path inside the bundle: a copied
    bundle is untrusted, and its manifest must not make kptrace read /etc/passwd."""
    if not isinstance(name, str):
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
        # Its tracepoint rows only anchor the samples and repeat events the trace already has.
        counters = read_text_trace(_bundle_member(directory, manifest_path, files["perf_counters"]))
        counters.rows = counters.rows.filter(pl.col("subsystem") == "counter")
        parts.append(counters)
    seq_offset = 0
    frames = []
    for part in parts:
        frames.append(part.rows.with_columns(pl.col("seq").cast(pl.Int64) + seq_offset))
        seq_offset += int(part.rows["seq"].max() or 0)
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
    )


def read_any(path: str | Path) -> RawTrace:
    """A bundle directory (with manifest.json), a directory of raw pages, or one trace file."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").exists():
        return read_bundle(path)
    if is_raw_dir(path):
        return read_raw_pages(path)
    return read_file(path)
