"""The stages in order, to every table `kptrace analyze` reports: from an input path (analyze), an
event table (analyze_events) or an interval table (analyze_intervals)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kptrace.attribute import (HARDWARE_COUNTERS, OUTLIER_FACTOR, attribute, counter_iterations, ipc_decomposition,
                               outlier_requests)
from kptrace.faults import damaged_windows, mark_faults
from kptrace.intervals import build_intervals, missed_switches, serving_load
from kptrace.normalize import normalize
from kptrace.read import read_any
from kptrace.read.chunks import window_bounds
from kptrace.requests import EPOLL, RECEIVES, SENDS, build_requests, charged_work, disruptions, request_counters
from kptrace.windowed.events import DEFAULT_WINDOW_ROWS, event_windows, open_source

#: Syscall exits a request view needs, one of each family, and how to get them.
REQUEST_FAMILIES = {"epoll_wait": EPOLL, "a receive": RECEIVES, "a send": SENDS}
REQUEST_HINT = "record syscall events (kptrace record does by default; with --events, add syscalls)"
#: Events without which interrupt costs are undercounted.
INTERRUPT_EVENTS = {"irq_handler_entry", "irq_handler_exit", "softirq_entry", "softirq_exit", "local_timer_entry"}
INTERRUPT_HINT = "record irq:* and irq_vectors:* (kptrace record does by default)"
#: A binary capture the windowed read would decode in one window of this many rows (estimated
#: from its pages, kptrace.read.chunks.window_bounds, at 24 bytes a row: a memcached trace has
#: about 38) is analysed whole even when `stored`: a 1 M-event trace.dat analysed whole peaks
#: lower (819 vs 954 MiB) and finishes sooner; the 1.44 M-event benchmark trace (estimated 2.25 M
#: rows) takes 11.0 s of CPU whole against 14.9 s in three windows, with identical outputs.
WHOLE_MAX_ROWS = 3_000_000


#: A table held in memory, or scanned from the Parquet file a windowed analysis wrote it to.
Table = pl.DataFrame | pl.LazyFrame
#: Hears each table as soon as a whole-trace analysis has built it, so the outputs that need only
#: those can start while the analysis goes on (kptrace.export.outputs.EarlyOutputs): ("events", the
#: events) once read, then ("intervals", ...), ("disruptions", ...) and ("requests", the requests
#: or None when the trace gives none) before attribution. They are the analysis's own tables,
#: unchanged later but for the fault-mark columns mark_faults adds to the requests.
Built = Callable[[str, Table | None], None]


def _unheard(name: str, table: Table | None) -> None:
    """A Built that nobody listens to."""


@dataclass
class Analysis:
    """Every table of one analysis; `requests` and `hits` are None when the trace cannot give them,
    `events` when the analysis started from intervals.

    A capture too large to hold is analysed window by window: its tables are written to Parquet
    in `stored` as they are built, and the per-event tables here are scans of those files. So a
    consumer takes every table through `.lazy()` and collects only the rows and columns it needs."""

    meta: dict
    events: Table | None
    intervals: Table
    disruptions: Table
    requests: Table | None
    hits: Table | None
    attribution: pl.DataFrame
    notes: list[str]
    ipc: pl.DataFrame | None = None
    request_counters: Table | None = None
    damaged_windows: pl.DataFrame | None = None
    stored: Path | None = None  # the directory the tables are already written to (windowed analysis)

    def tables(self) -> dict[str, Table]:
        tables = {"intervals": self.intervals, "disruptions": self.disruptions, "attribution": self.attribution}
        if self.events is not None:
            tables = {"events": self.events} | tables
        if self.requests is not None:
            tables |= {"requests": self.requests, "request_hits": self.hits}
        if self.request_counters is not None:
            tables |= {"request_counters": self.request_counters}
        if self.ipc is not None:
            tables |= {"ipc": self.ipc}
        if self.damaged_windows is not None:
            tables |= {"damaged_windows": self.damaged_windows}
        return tables


@dataclass
class Seen:
    """What the notes need from the event and interval tables: counted on the whole tables, or
    summed over the windows of a windowed analysis. Event facts are None without events."""

    intervals: int
    incomplete: int  # intervals without their entry or exit
    syscalls: set[str]  # names of the syscalls with an interval
    missed_switches: int | None = None  # intervals.missed_switches
    softirq_raises: int | None = None  # softirq_raise events
    counter_rows: bool = False  # whether the events hold perf counter reads

    @staticmethod
    def of(intervals: pl.DataFrame, events: Table | None) -> Seen:
        seen = Seen.of_intervals(intervals)
        if events is not None:
            lazy = events.lazy()
            seen.missed_switches = missed_switches(lazy)
            raises = lazy.filter(pl.col("event") == "softirq_raise")  # on the categories as held
            seen.softirq_raises = raises.select(pl.len()).collect().item()
            seen.counter_rows = lazy.filter(pl.col("subsystem") == "counter").select(pl.len()).collect().item() > 0
        return seen

    @staticmethod
    def of_intervals(intervals: pl.DataFrame) -> Seen:
        return Seen(intervals.height, intervals.filter(~pl.col("complete")).height,
                    set(intervals.filter(pl.col("kind") == "syscall")["name"].unique().to_list()))

    def __add__(self, other: Seen) -> Seen:
        """Interval facts of two windows together (event facts are counted by the windowed read)."""
        return Seen(self.intervals + other.intervals, self.incomplete + other.incomplete,
                    self.syscalls | other.syscalls)


def _missing_request_families(calls: set[str]) -> list[str]:
    return [family for family, names in REQUEST_FAMILIES.items() if not calls & set(names)]


def frame_meta(table: pl.DataFrame) -> dict:
    """The meta an analysis needs, for an event or interval table handed in by a library caller
    rather than read from a file."""
    end = pl.col("ts") + pl.col("dur").fill_null(0) if "dur" in table.columns else pl.col("ts")
    start_ns, end_ns = (table.select(pl.col("ts").min(), end.max().alias("end")).row(0) if table.height else (0, 0))
    is_events = "event" in table.columns
    counts = (dict(sorted(table.group_by(pl.col("event").cast(pl.String)).len().iter_rows()))
              if is_events else {})
    return {
        "source_format": "event table" if is_events else "interval table", "files": [],
        "clock": "unknown (handed in as a table)",
        # µs text traces give whole microseconds; anything finer is taken as ns.
        "ts_resolution_ns": 1000 if table.height and (table["ts"] % 1000 == 0).all() else 1,
        "start_ns": start_ns, "end_ns": end_ns, "duration_s": (end_ns - start_ns) / 1e9,
        "event_count": table.height if is_events else 0, "event_counts": counts,
        "per_cpu": [{"cpu": cpu, "events": n if is_events else 0, "lost_events": None, "lost_markers": 0,
                     "buffer_wrapped": False}
                    for cpu, n in table.group_by("cpu").len().drop_nulls("cpu").sort("cpu").iter_rows()],
        "warnings": [],
    }


def analyze(path: str | Path, progress: Callable[[str], None] = lambda stage: None, stored: Path | None = None,
            window_rows: int | None = None, built: Built = _unheard) -> Analysis:
    """Read and normalize a trace file or bundle, then analyze its events (analyze_events);
    `progress` hears one line as each stage ends. With `stored`, a binary capture is analysed
    window by window in bounded memory, its tables written there as they are built
    (kptrace.windowed.analyze): in windows of `window_rows` events, or by default whole when it
    fits WHOLE_MAX_ROWS and else in windows of DEFAULT_WINDOW_ROWS. A text input is read whole.
    `built` hears the tables of a whole-trace analysis as they are built (Built); a windowed one
    stores its own."""
    if stored is not None and (source := open_source(path)) is not None:
        if window_rows is not None or window_bounds(source.capture, WHOLE_MAX_ROWS):
            from kptrace.windowed.analyze import analyze_windowed  # it imports this module

            return analyze_windowed(source, Path(stored), progress, window_rows or DEFAULT_WINDOW_ROWS)
        events = pl.concat(event_windows(source, WHOLE_MAX_ROWS))  # one window: the whole capture
        progress(f"read {source.meta['event_count']:,} events ({source.meta['source_format']})")
        return analyze_events(events, source.meta, progress, built)
    normalized = normalize(read_any(path))
    progress(f"read {normalized.meta['event_count']:,} events ({normalized.meta['source_format']})")
    # The wide table, built once: the stages query it many times, faster than through the view.
    return analyze_events(normalized.events, normalized.meta, progress, built)


def analyze_events(events: Table, meta: dict | None = None,
                   progress: Callable[[str], None] = lambda stage: None, built: Built = _unheard) -> Analysis:
    """Analyze a typed event table (kptrace.schema): rebuild its intervals, then analyze_intervals.
    `meta` describes the input (normalize's meta.json); without it, it is derived from the table."""
    meta = meta if meta is not None else frame_meta(events)
    built("events", events)
    return analyze_intervals(build_intervals(events.lazy()).collect(), meta, events, progress, built)


def analyze_intervals(intervals: pl.DataFrame, meta: dict | None = None, events: Table | None = None,
                      progress: Callable[[str], None] = lambda stage: None, built: Built = _unheard) -> Analysis:
    """Disruptions, requests and attribution from an interval table (kptrace.intervals). Events
    are optional: without them the analysis cannot check which interrupt events were recorded
    nor read counters, and says so."""
    meta = meta if meta is not None else frame_meta(intervals)
    work = charged_work(intervals.lazy()).collect().lazy()  # held: the chains and the requests both read it
    chains = disruptions(intervals.lazy(), work).collect()
    progress(f"rebuilt {intervals.height:,} intervals and {chains.height:,} interrupt chains")
    seen = Seen.of(intervals, events)
    requests = hits = None
    if not _missing_request_families(seen.syscalls):
        requests_lazy, hits_lazy = build_requests(intervals.lazy(), work)
        requests, hits = requests_lazy.collect(), hits_lazy.collect()
    return completed(meta, events, intervals, chains, requests, hits, seen, progress, built=built, held=True)


def completed(meta: dict, events: Table | None, intervals: Table, chains: Table, requests: Table | None,
              hits: Table | None, seen: Seen, progress: Callable[[str], None],
              keep: Callable[[str, pl.LazyFrame], Table] = lambda name, table: table.collect(),
              built: Built = _unheard, held: bool = False) -> Analysis:
    """The analysis from its built tables: notes, attribution, counters per request and faults.
    Tables may be scans (a windowed analysis); `keep` makes a table that grows with the trace
    (request_counters): collected, or written and scanned. `built` hears the tables this starts
    from once it knows whether there are requests (Built). With the tables `held` whole, the
    damaged windows (Polars) are found on a thread beside the attribution (whose bootstrap is
    numpy holding the GIL); a windowed analysis finds them after, so that no two of its
    whole-trace scans peak at once."""
    notes = []
    if seen.incomplete:
        notes.append(f"{seen.incomplete:,} of {seen.intervals:,} intervals lack their entry or exit (trace edges, "
                     "lost events or a damaged trace): kept as incomplete, without a duration")
    if missing := _missing_request_families(seen.syscalls):
        notes.append(f"no per-request view: this trace has no syscall events for {' or '.join(missing)}; "
                     + REQUEST_HINT)
        requests = hits = None
    elif requests is not None and _rows(requests) == 0:
        notes.append("no requests found: no thread read data and answered on the same fd between "
                     "epoll_wait calls (kptrace's request model is an epoll server)")
        requests = hits = None
    progress(f"found {0 if requests is None else _rows(requests):,} requests")
    for name, table in (("intervals", intervals), ("disruptions", chains), ("requests", requests)):
        built(name, table)
    if not held:
        return mark_faults(_attributed(meta, events, intervals, chains, requests, hits, seen, notes, keep))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="damaged-windows") as beside:
        windows = beside.submit(damaged_windows, events, intervals, meta)
        analysis = _attributed(meta, events, intervals, chains, requests, hits, seen, notes, keep)
        return mark_faults(analysis, windows.result())


def _attributed(meta: dict, events: Table | None, intervals: Table, chains: Table, requests: Table | None,
                hits: Table | None, seen: Seen, notes: list[str],
                keep: Callable[[str, pl.LazyFrame], Table]) -> Analysis:
    """completed's analysis before its faults: attribution, counters per request and the notes."""
    if events is None:
        notes.append("analysed from an interval table without events: which interrupt events were recorded "
                     "is not checked, and counters (IPC) are not read")
    else:
        notes += _event_coverage_notes(meta) + _recording_notes(seen)
    load = None if requests is None else serving_load(intervals.lazy(), chains.lazy(), requests.lazy())
    attribution = attribute(chains.lazy(), None if requests is None else requests.lazy(), load, meta["duration_s"])
    if requests is not None:
        notes += _outlier_notes(requests)
    ipc = counters = None
    if events is not None and requests is not None and seen.counter_rows:
        counters = keep("request_counters", request_counters(events.lazy(), requests.lazy()))
    if counters is not None and all(name in meta["event_counts"] for name in HARDWARE_COUNTERS):
        ipc = ipc_decomposition(counter_iterations(counters.lazy(), requests.lazy()).collect())
    elif events is not None and requests is not None:
        notes.append("no IPC/IPQ decomposition: it needs cycles and instructions read at each epoll_wait return "
                     "(kptrace record does so where the CPU exposes a PMU; this trace has none)")
    return Analysis(meta=meta, events=events, intervals=intervals, disruptions=chains, requests=requests, hits=hits,
                    attribution=attribution, notes=notes, ipc=ipc, request_counters=counters)


def _rows(table: Table) -> int:
    return table.height if isinstance(table, pl.DataFrame) else table.select(pl.len()).collect().item()


def _recording_notes(seen: Seen) -> list[str]:
    """What the analysis had to infer because the trace lacks it."""
    notes = []
    if missed := seen.missed_switches:
        notes.append(f"{missed:,} task switches have no sched_switch in the trace; each was inferred from the "
                     "task's own events (its run starts at the last event before its first one)")
    if not seen.softirq_raises:  # requests.softirq_charging: "adjacency"
        notes.append("softirqs charged by adjacency: this trace has no softirq_raise events, so each softirq goes to "
                     "the interrupt it ran straight after, which may charge a task's own network work to an "
                     "interrupt; record irq:softirq_raise (kptrace record does by default)")
    return notes


def _outlier_notes(requests: Table) -> list[str]:
    """Requests the indirect-cost comparison set aside, and where their time went."""
    outliers = outlier_requests(requests.lazy()).collect()
    if outliers.height == 0:
        return []
    where = outliers.group_by("long_in").len().sort("long_in").iter_rows()
    return [f"{outliers.height:,} requests set aside from the indirect-cost comparison as outliers (own time over "
            f"{OUTLIER_FACTOR}x the median of their CPU, thread and size class; long in "
            + ", ".join(f"{place}: {n:,}" for place, n in where) + ")"]


def _event_coverage_notes(meta: dict) -> list[str]:
    """Interrupt events missing from the trace (an event the recorder enabled that never fired is
    not missing)."""
    enabled = {name.split(":")[-1] for name in ((meta.get("bundle") or {}).get("events") or {}).get("enabled", [])}
    if missing := INTERRUPT_EVENTS - set(meta["event_counts"]) - enabled:
        return [f"interrupt costs may be undercounted: no {', '.join(sorted(missing))} events; " + INTERRUPT_HINT]
    return []
