"""Normalize raw reader rows into the schema's event table, and describe the input in meta.json.

The table's row order is the order of record, and later stages rely on it to break ties
(kptrace.intervals numbers events by row): time, then the readers' sequence number (`seq`: the
input line for text, the record order for binary pages; unique across a bundle's files).
Within one CPU the tracer writes events in the order they happened, so at microsecond
resolution the input order is the true order of events that share a timestamp. Every summary here is sorted by its key, so meta.json is the same each run.

meta.json is built in two steps, `tally` (the figures of an event table) and `describe` (the
reader's notes and those figures), so that kptrace.windowed.events builds the same meta.json from a
capture read in time windows: it tallies each window and adds the tallies up (`Tally + Tally`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

import kptrace
from kptrace.read import RawTrace
from kptrace.read.duty import GAP_EVENT, recorded_windows, traced_seconds
from kptrace.read.table import EventTable
from kptrace.schema import conform

#: The idle task is `<idle>` in tracefs and trace-cmd, `swapper` in perf: use one name.
IDLE_COMM = "<idle>"


@dataclass
class Events:
    """The normalized event table, held compact (kptrace.read.table), and its meta.json description."""

    table: EventTable
    meta: dict

    def view(self) -> pl.LazyFrame:
        """The wide event table (kptrace.schema) as a LazyFrame over the held parts."""
        return self.table.view()

    @property
    def events(self) -> pl.DataFrame:
        """The wide event table built whole: for small tables and tests; a large consumer takes
        `view()` and collects only the rows and columns it needs."""
        return self.table.view().collect()


def idle_named(rows: pl.DataFrame) -> pl.DataFrame:
    """One name for the idle task, whatever the reader called it."""
    return rows.with_columns(comm=pl.when(pl.col("tid") == 0).then(pl.lit(IDLE_COMM)).otherwise(pl.col("comm")))


def in_time_order(rows: pl.DataFrame) -> pl.DataFrame:
    """Sorted by time, stable, so same-time events keep input order (`tally` counts what moved)."""
    return rows.sort("ts", "seq", maintain_order=True) if _backwards(rows) else rows


def _backwards(rows: pl.DataFrame) -> int:
    return _steps_back(rows["ts"])


def _steps_back(ts: pl.Series) -> int:
    """How many times stepping back from the row before; without nulls compared in numpy where
    the column lies, not through a difference column of every row."""
    if ts.null_count():
        return int((ts.diff() < 0).sum())
    values = ts.to_numpy()
    return int(np.count_nonzero(values[1:] < values[:-1]))


def _tied(ts: pl.Series) -> np.ndarray:
    """Which rows share their time with another row: in time order (the usual input) those
    are neighbours, found without hashing every row."""
    if ts.null_count() or _steps_back(ts):
        return ts.is_duplicated().to_numpy()
    values = ts.to_numpy()
    tied = np.zeros(len(values), dtype=bool)
    tied[1:] = values[1:] == values[:-1]
    tied[:-1] |= tied[1:]
    return tied


def _duplicates(rows: pl.DataFrame) -> int:
    """Rows that repeat another exactly. Text rows carry their field text; binary rows are
    compared on every typed column. Only rows sharing a time and CPU can repeat each other:
    check those (few) on every key."""
    key = (["ts", "cpu", "tid", "event", "payload"] if "payload" in rows.columns
           else [c for c in rows.columns if c not in ("seq", "ts_resolution_ns")])
    tied = np.flatnonzero(_tied(rows["ts"]))  # gathered: a filter would test every row of every column
    same_time = tied[rows.select("ts", "cpu")[tied].is_duplicated().to_numpy()]  # then every key column of fewer
    return int(rows.select(key)[same_time].is_duplicated().sum())


@dataclass
class Tally:
    """What meta.json says of an event table, for the whole of it or one time window of it.
    Windows add up (`+`) to the whole: counts are sums, the span a min and a max, and rows
    that can repeat each other share a time, so they are never split between windows."""

    per_cpu: pl.DataFrame
    event_counts: dict[str, int]
    start_ns: int | None
    end_ns: int | None
    resolution: int | None
    unknown: frozenset[str]
    backwards: int
    duplicates: int
    markers: int  # marker rows that stand for an input line (duty-cycle gap marks do not)

    @property
    def event_count(self) -> int:
        return sum(self.event_counts.values())

    def __add__(self, other: Tally) -> Tally:
        def pick(f, a, b):
            return b if a is None else a if b is None else f(a, b)
        counts = dict(self.event_counts)
        for name, n in other.event_counts.items():
            counts[name] = counts.get(name, 0) + n
        per_cpu = pl.concat([self.per_cpu, other.per_cpu]).group_by("cpu").agg(
            pl.col("events", "lost_events", "lost_markers").sum(), pl.col("buffer_wrapped").any())
        return Tally(per_cpu=per_cpu.sort("cpu"), event_counts=counts,
                     start_ns=pick(min, self.start_ns, other.start_ns), end_ns=pick(max, self.end_ns, other.end_ns),
                     resolution=pick(max, self.resolution, other.resolution), unknown=self.unknown | other.unknown,
                     backwards=self.backwards + other.backwards, duplicates=self.duplicates + other.duplicates,
                     markers=self.markers + other.markers)


def tally(rows: pl.DataFrame, events: pl.DataFrame) -> Tally:
    """The meta.json figures of `events`, conformed from the reader rows `rows` (idle-named, in
    input order: how many are out of time order is one of the figures)."""
    resolution = rows["ts_resolution_ns"].max() if rows.height else None
    return _figures(events, resolution, _backwards(rows), _duplicates(rows))


def held_tally(table: EventTable) -> Tally:
    """`tally` of a binary reader's table: already in time order, idle-named and at 1 ns (the
    decoder's), so only the figures' columns are built, and only rows sharing a time and CPU
    (the few that can repeat each other) are built whole to find repeats."""
    events = table.view().select("ts", "cpu", "subsystem", "event", "value").collect()
    candidates = np.flatnonzero(_tied(events["ts"]))
    same_time = candidates[events[candidates].select(pl.struct("ts", "cpu").is_duplicated()).to_series().to_numpy()]
    repeats = int(table.rows_at(same_time).is_duplicated().sum()) if len(same_time) else 0
    return _figures(events, 1 if events.height else None, 0, repeats)


#: meta.json's per-CPU figures, as a Polars group_by on the CPU made them.
_PER_CPU_SCHEMA = {"cpu": pl.Int16, "events": pl.UInt32, "lost_events": pl.Int64, "lost_markers": pl.UInt32,
                   "buffer_wrapped": pl.Boolean}


def _per_cpu(events: pl.DataFrame) -> pl.DataFrame:
    """Per CPU (a null CPU first, then ascending): its rows that are not kptrace marks, the events
    its lost-events rows count, those rows, and whether it has a buffer_started mark. Its rows are
    counted by numpy over each row's CPU slot, the few other rows found by index: a Polars
    group_by with these filters took ~45 ms of CPU on a process's first (1.44 M rows), every
    full-length column it made fresh memory paid in page faults."""
    cpu = events["cpu"]
    low = cpu.min() if cpu.null_count() < len(cpu) else 0
    values = cpu.cast(pl.Int32).fill_null(low - 1) if cpu.null_count() else cpu
    slot = np.subtract(values.to_numpy(), low - 1, dtype=np.intp)  # 0: the null CPU
    width = int(slot.max(initial=0)) + 1

    def rows_where(condition: pl.Expr) -> np.ndarray:
        return events.select(pl.arg_where(condition.fill_null(False))).to_series().to_numpy()

    rows = np.bincount(slot, minlength=width)
    marked = rows_where((pl.col("subsystem") != "kptrace").fill_null(False).not_())  # marks and null subsystems
    unmarked = rows - np.bincount(slot[marked], minlength=width)
    lost = rows_where(pl.col("event") == "lost_events")
    lost_events = np.zeros(width, np.int64)
    np.add.at(lost_events, slot[lost], events["value"].gather(lost).fill_null(0).to_numpy())
    wrapped = np.bincount(slot[rows_where(pl.col("event") == "buffer_started")], minlength=width) > 0
    present = np.flatnonzero(rows)
    cpus = pl.Series("cpu", present + low - 1, dtype=pl.Int64).set(pl.Series(present == 0), None)
    return pl.DataFrame({"cpu": cpus, "events": unmarked[present], "lost_events": lost_events[present],
                         "lost_markers": np.bincount(slot[lost], minlength=width)[present],
                         "buffer_wrapped": wrapped[present]}, schema=_PER_CPU_SCHEMA)


def _event_counts(event: pl.Series) -> dict[str | None, int]:
    """Rows of each event name (Categorical `event`): its ids counted by numpy, each id named from
    one of its rows (a Polars group_by took ~15 ms of CPU on a process's first)."""
    ids = event.to_physical().drop_nulls().to_numpy()
    counts = np.bincount(ids)
    present = np.flatnonzero(counts)
    row_of = np.empty(len(counts), np.uint32)
    row_of[ids] = np.arange(len(ids), dtype=np.uint32)  # any row of an id will do: they all hold its name
    names = event.drop_nulls().gather(row_of[present]).cast(pl.String).to_list()
    nulls = {None: event.null_count()} if event.null_count() else {}
    return {**dict(zip(names, counts[present].tolist())), **nulls}


def _figures(events: pl.DataFrame, resolution: int | None, backwards: int, duplicates: int) -> Tally:
    events = events.select("ts", "cpu", "subsystem", "event", "value")  # the filters move these, not every column
    real = events.filter(pl.col("subsystem") != "kptrace")
    marks = events.filter(pl.col("subsystem") == "kptrace")
    return Tally(
        per_cpu=_per_cpu(events),
        event_counts=_event_counts(real["event"]),
        start_ns=real["ts"].min(), end_ns=real["ts"].max(),
        resolution=resolution,
        unknown=frozenset(real.filter(pl.col("subsystem") == "unknown")["event"].cast(pl.String).unique()),
        backwards=backwards, duplicates=duplicates,
        markers=marks.filter(pl.col("event") != GAP_EVENT).height,
    )


def _accounting(raw: RawTrace, figures: Tally) -> dict:
    """Where every input line (or binary record) went: `input` = `events` + `markers` +
    `unreadable` + `ignored` + `repeated`, so that nothing is lost without a count."""
    return {"unit": raw.unit, "input": raw.units, "events": figures.event_count,
            "markers": figures.markers if raw.unit == "lines" else 0, "unreadable": raw.unparsed_count,
            "ignored": raw.ignored_count, "repeated": raw.repeated_count}


def describe(raw: RawTrace, figures: Tally) -> dict:
    """meta.json: the input's notes (`raw`; its rows are not read) and the event table's figures."""
    warnings = list(raw.warnings)
    if figures.backwards:
        warnings.append(f"{figures.backwards} lines were out of time order; sorted by timestamp")
    if figures.duplicates:
        warnings.append(f"{figures.duplicates} event rows repeat another row exactly (same time, CPU, task and "
                        "fields); kept, since microsecond timestamps can make real repeats identical")
    per_cpu = figures.per_cpu.to_dicts()
    lost_markers = sum(c["lost_markers"] for c in per_cpu)
    if lost_markers:
        warnings.append(f"the tracer lost events {lost_markers} times "
                        f"({sum(c['lost_events'] or 0 for c in per_cpu)} events counted); "
                        "intervals across those gaps are marked incomplete")
    wrapped = [c["cpu"] for c in per_cpu if c["buffer_wrapped"]]
    if wrapped:
        warnings.append(f"the ring buffer of CPU {', '.join(map(str, wrapped))} wrapped: its oldest events "
                        "were overwritten, so that CPU's trace starts later than the others")
    manifest = raw.manifest or {}
    span_s = (int(figures.end_ns) - int(figures.start_ns)) / 1e9
    if len(windows := recorded_windows(manifest)) > 1:
        warnings.append(f"duty-cycled recording: {len(windows)} windows, {traced_seconds(windows):.3f} s traced "
                        f"in {span_s:.3f} s; intervals across the {len(windows) - 1} gaps are marked incomplete "
                        "and rates are per traced second")
    meta = {
        "kptrace_version": kptrace.__version__,
        "source_format": raw.source_format,
        "files": raw.files,
        "clock": manifest.get("trace_clock", "unknown (not recorded in this format)"),
        "ts_resolution_ns": int(figures.resolution) if figures.resolution is not None else None,
        "start_ns": int(figures.start_ns),
        "end_ns": int(figures.end_ns),
        "duration_s": traced_seconds(windows) if len(windows) > 1 else span_s,
        "event_count": figures.event_count,
        "event_counts": dict(sorted(figures.event_counts.items())),
        "per_cpu": per_cpu,
        "unknown_events": sorted(figures.unknown),
        "unparsed_lines": raw.unparsed_count,
        "unparsed_examples": raw.unparsed_examples,
        "input_accounting": _accounting(raw, figures),
        "warnings": warnings,
    }
    if len(windows) > 1:
        meta["windows"] = [{"start_ns": start, "end_ns": end} for start, end in windows]
    if raw.manifest is not None:
        meta["bundle"] = {k: manifest.get(k) for k in ("created_utc", "hostname", "command", "counters",
                                                       "not_recorded", "workload", "per_cpu", "events",
                                                       "tracing_cost")}
    return meta


def normalize(raw: RawTrace) -> Events:
    """Conform to the schema, order by time, and summarise what the input held and lacked. A
    binary reader's table is all of that already (kptrace.read.binary.decode_table): it is kept
    as it is, never built wide."""
    if raw.table is not None:
        return Events(table=raw.table, meta=describe(raw, held_tally(raw.table)))
    rows = idle_named(raw.rows)
    events = conform(in_time_order(rows)).collect()
    return Events(table=EventTable.split(events), meta=describe(raw, tally(rows, events)))
