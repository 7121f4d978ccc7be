"""`analysis.analyze` of a binary capture window by window, so that no per-event table is ever
held whole: events -> intervals -> charged work -> requests and hits, each written to
`<out>/<table>.parquet` (row groups) as it is made, and the Analysis scans those files.

The stages are the windowed building blocks (kptrace.windowed.*, each equal row for row to its
whole-trace stage); the notes need only small facts of the tables (counts, syscall names,
missed switches, raises, whether counters were read), summed over the windows (analysis.Seen).
What still grows with the trace in memory: the requests and hits (requests_of_windows numbers
them at the end; about 1 request per 20 events on the lab's memcached), the roots of the charged
work (9 bytes per interrupt, windowed.disruptions) and a bundle's perf counter rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import polars as pl

from kptrace import tables
from kptrace.analysis import Analysis, Seen, completed
from kptrace.export.parquet import ROW_GROUP_ROWS, ParquetAppender
from kptrace.requests import _chains
from kptrace.windowed.events import event_windows, open_source
from kptrace.windowed.intervals import Inferred, interval_windows
from kptrace.windowed.requests import empty_work, requests_of_windows


def analyze_windowed(path: str | Path, out: Path, progress: Callable[[str], None],
                     window_rows: int) -> Analysis | None:
    """The analysis of a binary capture with its tables written to `out` and scanned from
    there (`stored`), equal to analysis.analyze(path); None when the input is not a binary
    capture read in windows (windowed.events.open_source)."""
    source = open_source(path)
    if source is None:
        return None

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
        self.softirq_raises += events.filter(pl.col("event").cast(pl.String) == "softirq_raise").height
        self.counter_rows |= bool((events["subsystem"] == "counter").any())


def _analyzed(windows: Iterable[pl.DataFrame], meta: Callable[[], dict], out: Path, scratch: Path,
              progress: Callable[[str], None]) -> Analysis:
    files = {name: ParquetAppender(out / f"{name}.parquet") for name in ("events", "intervals")}
    work = ParquetAppender(scratch / "charged_work.parquet")
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

    try:
        requests, hits = requests_of_windows(intervals(), work.append)
    finally:
        for appender in (*files.values(), work):
            appender.close()
    meta = described[0] if described else meta()
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")  # as write_event_windows
    if not files["intervals"].rows:
        _written(out, "intervals", pl.DataFrame(schema=tables.polars_schema("intervals")))
    charged = pl.scan_parquet(work.path) if work.rows else empty_work().lazy()
    chains = _stored(out, "disruptions", _chains(charged))
    progress(f"rebuilt {seen[0].intervals:,} intervals and {chains.select(pl.len()).collect().item():,} "
             "interrupt chains")
    seen = replace(seen[0], missed_switches=inferred.missed_switches, softirq_raises=facts.softirq_raises,
                   counter_rows=facts.counter_rows)
    analysis = completed(meta, pl.scan_parquet(out / "events.parquet"), pl.scan_parquet(out / "intervals.parquet"),
                         chains, requests, hits, seen, progress, keep=lambda name, table: _stored(out, name, table))
    if analysis.requests is not None:  # written once faults.mark_faults has marked them
        analysis = replace(analysis, requests=_written(out, "requests", analysis.requests),
                           hits=_written(out, "request_hits", analysis.hits))
    return replace(analysis, stored=out)


def _stored(out: Path, name: str, table: pl.LazyFrame) -> pl.LazyFrame:
    """`table` written to `<out>/<name>.parquet` by the streaming engine, and its scan."""
    path = out / f"{name}.parquet"
    table.sink_parquet(path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return pl.scan_parquet(path)


def _written(out: Path, name: str, table: pl.DataFrame) -> pl.LazyFrame:
    """`table` written to `<out>/<name>.parquet` as write_tables writes it, and its scan."""
    path = out / f"{name}.parquet"
    table.write_parquet(path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return pl.scan_parquet(path)
