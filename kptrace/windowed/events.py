"""The event table of a binary capture built window by window, so that reading a 50 M-event
capture never holds more than one window of decoded rows (kptrace.read.chunks).

Each window is normalized with normalize's own steps, and meta.json is built by normalize's
`describe` from the windows' `Tally` figures added up: the windows are split by time, so rows
that share a timestamp (the only ones that can repeat each other) are always in one window.
The windows concatenated equal `normalize(read_any(path)).events`, and the meta equals its
meta (tests/test_windows.py).

Inputs read this way: a trace.dat with one buffer, a raw/ directory, a bundle with raw/ pages
(its perf counters are merged by time, after raw rows of the same time, and a duty-cycled
bundle's gap marks after both, as read_bundle sorts them). Anything else returns None from
`open_source` and is read whole.
"""

from __future__ import annotations

import gzip
import json
import lzma
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import zstandard

from kptrace.errors import TraceError
from kptrace.normalize import Events, Tally, describe, idle_named, in_time_order, tally
from kptrace.read import UNDECODABLE, RawTrace, read_counter_samples, undecodable_examples, undecodable_warning
from kptrace.read.binary import Capture
from kptrace.read.chunks import decoded_windows
from kptrace.read.duty import gap_markers, recorded_windows
from kptrace.read.rawpages import is_raw_dir, read_raw_dir
from kptrace.read.source import read_bytes
from kptrace.read.table import EventTable
from kptrace.read.tracedat import TraceDatError, is_tracedat, read_tracedat
from kptrace.schema import conform

#: Decoded rows per window by default. Decoding peaks at about 1.3 KB of RSS per row of the
#: window (measured on a lab capture: 0.85 GB with 0.5 M-row windows, 2.4 GB with 2.7 M), so
#: about 1.5 GB with the interpreter and libraries; smaller windows are slower.
DEFAULT_WINDOW_ROWS = 1_000_000


@dataclass
class Source:
    """A binary capture to read in windows, and what the whole-trace readers would add to it."""

    capture: Capture
    source_format: str  # of the pages alone ("trace.dat", "raw-pages")
    path: Path  # the pages' file or directory
    warnings: list[str] = field(default_factory=list)  # from reading the file's bytes
    counters: RawTrace | None = None  # a bundle's perf counter samples, in (ts, seq) order
    manifest: dict | None = None
    meta: dict | None = None  # set once every window was read


def _bundle_source(directory: Path) -> Source | None:
    """A bundle with raw/ pages: the pages, and the perf counter rows read_bundle would add."""
    try:
        manifest = json.loads((directory / "manifest.json").read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        return None  # read_bundle says what is wrong with it
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files") or {}, dict):
        return None
    raw = directory / "raw"
    if not is_raw_dir(raw):
        return None
    source = Source(read_raw_dir(raw, mapped=True), "raw-pages", raw, manifest=manifest)
    counters_file = (manifest.get("files") or {}).get("perf_counters")
    if counters_file:
        path = (directory / counters_file).resolve() if isinstance(counters_file, str) else None
        if path is None or not path.is_relative_to(directory.resolve()):
            return None  # read_bundle refuses it with a one-line error
        counters = read_counter_samples(path)
        counters.rows = counters.rows.sort("ts", "seq")
        source.counters = counters
    return source


def _head(path: Path) -> bytes:
    """The first bytes of a file, decompressed (gzip, zstd, xz) when it is compressed."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
        handle.seek(0)
        try:
            if magic.startswith(b"\x1f\x8b"):
                return gzip.GzipFile(fileobj=handle).read(64)
            if magic.startswith(b"\x28\xb5\x2f\xfd"):
                return zstandard.ZstdDecompressor().stream_reader(handle).read(64)
            if magic.startswith(b"\xfd7zXZ"):
                return lzma.LZMAFile(handle).read(64)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError):  # zlib.error: bad deflate data
            return b""  # the whole-file reader says what is wrong with it
        return handle.read(64)


def open_source(path: str | Path) -> Source | None:
    """The input as a windowed source, or None when it is not a binary capture read this way."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").exists():
        return _bundle_source(path)
    if is_raw_dir(path):
        return Source(read_raw_dir(path, mapped=True), "raw-pages", path)
    if not path.is_file():
        return None
    if not is_tracedat(_head(path)):
        return None
    data = read_bytes(path)
    try:
        capture = read_tracedat(data.data)
    except (TraceDatError, ValueError) as exc:
        raise TraceError(path, f"trace.dat: {exc}") from None
    return Source(capture, "trace.dat", path, warnings=list(data.warnings))


def _in_span(rows: pl.DataFrame, lo: int | None, hi: int | None) -> pl.DataFrame:
    return rows.filter((pl.col("ts") >= lo if lo is not None else pl.lit(True))
                       & (pl.col("ts") < hi if hi is not None else pl.lit(True)))


def _merged(rows: pl.DataFrame, later: list[pl.DataFrame]) -> pl.DataFrame:
    """`rows` with the rows of `later` frames, each after the rows before it at the same time."""
    later = [f for f in later if f.height]
    if not later:
        return rows
    return pl.concat([rows, *later], how="diagonal_relaxed").sort("ts", maintain_order=True)


def _gap_marks(source: Source) -> pl.DataFrame:
    """A duty-cycled bundle's gap marks (read_bundle's), on every CPU that has pages or counters."""
    windows = recorded_windows(source.manifest)
    if len(windows) <= 1:
        return pl.DataFrame()
    size = source.capture.header.page_size
    cpus = {cpu for _, blobs in source.capture.buffers for cpu, blob in blobs if len(blob) >= size}
    if source.counters is not None:
        cpus |= set(source.counters.rows["cpu"].drop_nulls().cast(pl.Int64).to_list())
    return gap_markers(windows, sorted(cpus), 0)


@dataclass
class _Undecodable:
    """Records with an event id the capture has no format for, counted as read._binary_trace does."""

    count: int = 0
    names: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def drop(self, rows: pl.DataFrame) -> pl.DataFrame:
        if not rows.select((pl.col("subsystem") == "unknown").any()).item():
            return rows  # UNDECODABLE needs it; its name test reads a string per row
        found = rows.filter(UNDECODABLE)
        if not found.height:
            return rows
        self.count += found.height
        self.names += [n for n in found["event"].cast(pl.String).unique(maintain_order=True) if n not in self.names]
        self.examples += undecodable_examples(found)
        return rows.filter(~UNDECODABLE)


def _notes(source: Source, records: int, undecodable: _Undecodable, lost_pages: int) -> RawTrace:
    """What read_any would say of the input beside its rows (RawTrace's notes; no rows)."""
    warnings = list(source.warnings)
    if undecodable.count:
        warnings.append(undecodable_warning(undecodable.count, undecodable.names))
    warnings += source.capture.warnings + ([f"{lost_pages} ring-buffer pages follow lost events"] if lost_pages else [])
    pages = RawTrace(rows=pl.DataFrame(), source_format=source.source_format, files=[str(source.path)],
                     warnings=warnings, unparsed_count=undecodable.count,
                     unparsed_examples=undecodable.examples[:3], unit="records", units=records)
    if source.manifest is None:
        return pages
    parts = [pages] + ([source.counters] if source.counters is not None else [])
    return RawTrace(
        rows=pl.DataFrame(), source_format="kptrace-bundle (" + "+".join(p.source_format for p in parts) + ")",
        files=[f for p in parts for f in p.files], warnings=[w for p in parts for w in p.warnings],
        unparsed_count=sum(p.unparsed_count for p in parts),
        unparsed_examples=[e for p in parts for e in p.unparsed_examples][:3], manifest=source.manifest,
        unit="+".join(dict.fromkeys(p.unit for p in parts)), units=sum(p.units for p in parts),
        ignored_count=sum(p.ignored_count for p in parts), repeated_count=sum(p.repeated_count for p in parts))


def event_windows(source: Source, rows_per_window: int = DEFAULT_WINDOW_ROWS,
                  progress: Callable[[int, int], None] = lambda rows, done_bytes: None) -> Iterator[pl.DataFrame]:
    """The normalized event table in consecutive time windows; `source.meta` is set at the end.
    `progress` hears the rows so far and the page bytes decoded so far after each window."""
    counters = source.counters.rows if source.counters is not None else pl.DataFrame()
    gaps = _gap_marks(source)
    figures: Tally | None = None
    undecodable, records, lost_pages, done = _Undecodable(), 0, 0, 0
    try:
        for lo, hi, rows, done_bytes in decoded_windows(source.capture, rows_per_window):
            if rows.height:
                records += rows.select(pl.col("subsystem").ne_missing("kptrace").sum()).item()
                lost_pages += rows.select((pl.col("event") == "lost_events").sum()).item()
                rows = undecodable.drop(rows)
            later = [_in_span(f, lo, hi) for f in (counters, gaps) if f.height]
            rows = _merged(rows, later)
            if rows.height == 0:
                progress(done, done_bytes)
                continue
            if counters.height and "payload" not in rows.columns:
                rows = rows.with_columns(payload=pl.lit(None, pl.String))  # as in the bundle's joined table
            if any(f.height for f in later):  # the decoder's rows alone are idle-named already
                rows = idle_named(rows)
            events = conform(in_time_order(rows)).collect()
            figures = tally(rows, events) if figures is None else figures + tally(rows, events)
            done += events.height
            progress(done, done_bytes)
            yield events
    except ValueError as exc:  # the decoder's word for pages or formats it cannot use
        raise TraceError(source.path, f"{source.source_format}: {exc}") from None
    if figures is None or figures.event_count == 0:
        raise TraceError(source.path, f"no events found (read as {source.source_format})")
    source.meta = describe(_notes(source, records, undecodable, lost_pages), figures)


def _reporter(progress: Callable[[str], None] | None, total_bytes: int) -> Callable[[int, int], None]:
    """Progress of the windowed read: a bar on stderr when it is a terminal (rich), else one
    line per window through `progress`; nothing when `progress` is None (quiet)."""
    if progress is None:
        return lambda rows, done_bytes: None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("reading pages"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                       TextColumn("{task.fields[rows]:,} events"), TimeRemainingColumn(), transient=True,
                       console=Console(stderr=True))
        task = bar.add_task("read", total=total_bytes, rows=0)
        bar.start()

        def update(rows: int, done_bytes: int) -> None:
            bar.update(task, completed=done_bytes, rows=rows)
            if done_bytes >= total_bytes:
                bar.stop()
        return update
    return lambda rows, done_bytes: progress(
        f"read {rows:,} events ({100 * done_bytes / max(total_bytes, 1):.0f}% of the pages)")


def read_windowed(path: str | Path, progress: Callable[[str], None] | None = None,
                  rows_per_window: int = DEFAULT_WINDOW_ROWS) -> Events | None:
    """The normalized event table of a binary capture, read window by window (no more than one
    window's decoded rows at once), equal to normalize(read_any(path)); None when the input is
    not a binary capture this module reads (module docstring)."""
    source = open_source(path)
    if source is None:
        return None
    blobs = source.capture.buffers[0][1] if len(source.capture.buffers) == 1 else []
    report = _reporter(progress, sum(len(b) for _, b in blobs))
    tables = [EventTable.split(frame) for frame in event_windows(source, rows_per_window, report)]
    return Events(EventTable.concat(tables), source.meta)


def write_event_windows(path: str | Path, out: str | Path, progress: Callable[[str], None] | None = None,
                        rows_per_window: int = DEFAULT_WINDOW_ROWS) -> dict | None:
    """Write the event table of a binary capture to `out`/events.parquet one window at a time
    (row groups), with meta.json: memory bounded by one window, whatever the capture's size.
    Returns the meta, or None when the input is not a binary capture read in windows."""
    from kptrace.export.parquet import ParquetAppender

    source = open_source(path)
    if source is None:
        return None
    out = Path(out)
    blobs = source.capture.buffers[0][1] if len(source.capture.buffers) == 1 else []
    appender = ParquetAppender(out / "events.parquet")
    try:
        for frame in event_windows(source, rows_per_window, _reporter(progress, sum(len(b) for _, b in blobs))):
            appender.append(frame)
    finally:
        appender.close()
    (out / "meta.json").write_text(json.dumps(source.meta, indent=2, default=str) + "\n")
    return source.meta
