"""`analysis.analyze` of a binary capture window by window, so that no per-event table is ever
held whole: events -> intervals -> charged work -> requests and hits, each written to
`<out>/<table>.parquet` (row groups) as it is made, and the Analysis scans those files.

The stages are the windowed building blocks (kptrace.windowed.*, each equal row for row to its
whole-trace stage); the notes need only small facts of the tables (counts, syscall names,
missed switches, raises, whether counters were read), summed over the windows (analysis.Seen).
After the windows, nothing is held whole: the disruptions are grouped a range of roots at a
time (windowed.disruptions.chains_in_parts) and the requests and hits, spilled a part at a time
to scratch Parquet, are numbered a range of requests at a time (windowed.requests.
numbered_in_parts). What still grows with the trace in memory: the roots of the charged work
(9 bytes per interrupt, windowed.disruptions; 4 more per chain to number them), the requests'
sort keys while they are numbered (12 bytes per request; about 1 request per 20 events on the
lab's memcached), the fault marks of the requests (faults.mark_requests) and a bundle's perf
counter rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from kptrace import tables
from kptrace.analysis import Analysis, Seen, completed
from kptrace.export.parquet import ROW_GROUP_ROWS, ParquetAppender, write_table
from kptrace.requests import REQUEST_SCHEMA
from kptrace.windowed.disruptions import chains_in_parts
from kptrace.windowed.events import Source, event_windows
from kptrace.windowed.intervals import Inferred, interval_windows
from kptrace.windowed.requests import HIT_SCHEMA, empty_work, numbered_in_parts, request_parts


def analyze_windowed(source: Source, out: Path, progress: Callable[[str], None],
                     window_rows: int) -> Analysis:
    """The analysis of a binary capture (windowed.events.open_source) read `window_rows` events
    at a time, its tables written to `out` and scanned from there (`stored`): equal to
    analysis.analyze(path)."""
    def meta() -> dict:
        progress(f"read {source.meta['event_count']:,} events ({source.meta['source_format']})")
        return source.meta
    return analyze_event_windows(event_windows(source, window_rows), meta, out, progress)


def analyze_event_windows(windows: Iterable[pl.DataFrame], meta: Callable[[], dict], out: Path,
                          progress: Callable[[str], None] = lambda stage: None) -> Analysis:
    """The analysis of the event table given in consecutive windows (split where the time
    changes), its tables written to `out`; `meta()` describes the input once every window is
    read (the windowed read builds it as it goes)."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".windows-", dir=out))  # what waits between passes
    try:
        return _analyzed(windows, meta, out, scratch, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _EventFacts:
    """The facts of the event table the notes read (analysis.Seen), counted window by window."""

    def __init__(self) -> None:
        self.softirq_raises, self.counter_rows = 0, False

    def add(self, events: pl.DataFrame) -> None:
        raised = pl.col("event").cast(pl.Categorical) == "softirq_raise"  # compared on the distinct names
        self.softirq_raises += events.lazy().filter(raised).select(pl.len()).collect().item()
        self.counter_rows |= bool((events["subsystem"] == "counter").any())


def _analyzed(windows: Iterable[pl.DataFrame], meta: Callable[[], dict], out: Path, scratch: Path,
              progress: Callable[[str], None]) -> Analysis:
    files = {name: ParquetAppender(out / f"{name}.parquet") for name in ("events", "intervals")}
    spilled = {name: ParquetAppender(scratch / f"{name}.parquet") for name in ("charged_work", "request_parts",
                                                                              "hit_parts")}
    facts, inferred, seen, described = _EventFacts(), Inferred(), [Seen(0, 0, set())], []

    def events() -> Iterator[pl.DataFrame]:
        for frame in windows:
            files["events"].append(frame)
            facts.add(frame)
            yield frame
        described.append(meta())

    def intervals() -> Iterator[pl.DataFrame]:
        for batch in interval_windows(events(), scratch / "on-time", inferred):
            files["intervals"].append(batch)
            seen[0] += Seen.of_intervals(batch)
            yield batch

    def part(requests: pl.DataFrame, hits: pl.DataFrame) -> None:
        spilled["request_parts"].append(requests)
        spilled["hit_parts"].append(hits)

    try:
        roots = request_parts(intervals(), part, spilled["charged_work"].append)
    finally:
        for appender in (*files.values(), *spilled.values()):
            appender.close()
    meta = described[0] if described else meta()
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")  # as write_event_windows
    if not files["intervals"].rows:
        _written(out, "intervals", pl.DataFrame(schema=tables.polars_schema("intervals")))
    charged = pl.scan_parquet(spilled["charged_work"].path) if spilled["charged_work"].rows else empty_work().lazy()
    chains = _appended(out / "disruptions.parquet", lambda append: chains_in_parts(charged, roots, append))
    progress(f"rebuilt {seen[0].intervals:,} intervals and {len(roots):,} interrupt chains")
    requests, hits = _numbered_requests(spilled["request_parts"], spilled["hit_parts"], roots, scratch)
    seen = replace(seen[0], missed_switches=inferred.missed_switches, softirq_raises=facts.softirq_raises,
                   counter_rows=facts.counter_rows)
    analysis = completed(meta, pl.scan_parquet(out / "events.parquet"), pl.scan_parquet(out / "intervals.parquet"),
                         chains, requests, hits, seen, progress, keep=lambda name, table: _stored(out, name, table))
    if analysis.requests is not None:  # written once faults.mark_faults has marked them
        os.replace(scratch / "request_hits.parquet", out / "request_hits.parquet")
        analysis = replace(analysis, requests=_stored(out, "requests", analysis.requests),
                           hits=pl.scan_parquet(out / "request_hits.parquet"))
    return replace(analysis, stored=out)


def _numbered_requests(parts: ParquetAppender, hit_parts: ParquetAppender, roots: np.ndarray,
                       scratch: Path) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Scans of the requests and hits numbered from their stored parts, written to `scratch`
    (the requests are marked by faults.mark_faults before they are kept)."""
    if not parts.rows:
        return (_written(scratch, "requests", pl.DataFrame(schema=REQUEST_SCHEMA)),
                _written(scratch, "request_hits", pl.DataFrame(schema=HIT_SCHEMA)))
    files = {name: ParquetAppender(scratch / f"{name}.parquet") for name in ("requests", "request_hits")}

    def append(requests: pl.DataFrame, hits: pl.DataFrame) -> None:
        files["requests"].append(requests)
        files["request_hits"].append(hits)
    try:
        numbered_in_parts(pl.scan_parquet(parts.path), pl.scan_parquet(hit_parts.path), roots, append)
    finally:
        for appender in files.values():
            appender.close()
    return pl.scan_parquet(files["requests"].path), pl.scan_parquet(files["request_hits"].path)


def _appended(path: Path, write: Callable[[Callable[[pl.DataFrame], None]], None]) -> pl.LazyFrame:
    """A table written to `path` by `write`, a part at a time, and its scan."""
    appender = ParquetAppender(path)
    try:
        write(appender.append)
    finally:
        appender.close()
    return pl.scan_parquet(path)


def _stored(out: Path, name: str, table: pl.LazyFrame) -> pl.LazyFrame:
    """`table` written to `<out>/<name>.parquet` by the streaming engine, and its scan."""
    path = out / f"{name}.parquet"
    table.sink_parquet(path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return pl.scan_parquet(path)


def _written(out: Path, name: str, table: pl.DataFrame) -> pl.LazyFrame:
    """`table` written to `<out>/<name>.parquet` as write_tables writes it, and its scan."""
    path = out / f"{name}.parquet"
    write_table(path, table)
    return pl.scan_parquet(path)
