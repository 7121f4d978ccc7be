"""Analysis faults: the windows of a trace whose figures cannot be trusted, and what they touch.

A damaged trace must never give a silently wrong number. Each detector below finds one fault
from the normalized events and the interval table, as windows (DAMAGED_WINDOWS: cpu, tid,
start_ns, end_ns, kind, detail; a null cpu or tid means every CPU or every task):

- `lost_events`: the tracer dropped events on a CPU: from that CPU's last event before the
  lost-event mark to the mark (dated by the first event after the gap).
- `cpu_without_events`: a CPU the trace names (a wakeup's target_cpu, a migration, the bundle
  manifest) has no event at all: its interrupts and tasks are unknown for the whole trace.
- `buffer_wrapped`: a CPU's ring buffer overwrote its oldest events: from the trace start to
  that CPU's first event.
- `interrupt_without_exit`: a hard IRQ or softirq whose exit was never seen (the trace ends
  inside it, or an edge is lost): from its entry to the next event on its CPU (the trace end).
- `clock_order`: a task switched in after sleeping before the sched_waking that woke it, on
  another CPU, or a waking and its wakeup recorded on two CPUs in swapped order: one of the two
  CPUs' clocks went backwards. Every such case gives the window between the two events on both
  CPUs; overlapping ones are merged. A single event the trace lacks (a VM's ring buffer can miss
  a wakeup or a switch-in without counting it lost) is not a clock fault.
- `pid_reuse`: a tid is seen again after its task exited (its last sched_switch out in state X
  or Z): another task took the tid, so that tid's intervals across the change are not one
  task's. The window runs from the exit to the first sight of the new task, for that tid on
  every CPU. A reuse whose exit the trace lacks is not found (an exec renames a task too).
- `counter_wrap`: a counter delta below 0 or at 2^47 or more (no real delta between two reads
  comes near: 10 hours at 4 GHz): the epoll iteration it closes, from the previous read.
- `counters_missing`: counter reads that should close an epoll iteration are absent: between
  two reads on a CPU lie several epoll_wait returns (perf reads at each), or a CPU returns from
  epoll_wait but has no read at all while others do.

`mark_faults` adds the table to an Analysis, marks each request that overlaps a window
(`damaged`, `fault_kinds`), counts windows and their covered time next to each attribution row
(`damaged_windows`, `damaged_ns`), and adds one warning per fault kind to meta.json's warnings.
The figures themselves are left as they are: the marks say which ones to distrust.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from kptrace import tables
from kptrace.requests import EPOLL

if TYPE_CHECKING:
    from kptrace.analysis import Analysis

Table = pl.DataFrame | pl.LazyFrame

WINDOW_SCHEMA = tables.polars_schema("damaged_windows")
#: A counter delta at or beyond this is a wrap or a damaged read, never a real count.
WRAPPED_DELTA = 2**47
#: Two clock_order cases less than this apart on a CPU are one window: a skew proved twice that
#: close is taken to hold between them too (each case proves it only where a wakeup shows it).
SKEW_PERSISTS_NS = 1_000_000
#: What each fault kind means, for the warning line.
FAULT_WORDS = {
    "lost_events": "the tracer lost events",
    "cpu_without_events": "a CPU the trace names has no events",
    "buffer_wrapped": "a CPU's ring buffer overwrote its oldest events",
    "interrupt_without_exit": "an interrupt's exit was never seen",
    "clock_order": "timestamps go backwards across CPUs (a task ran before the wakeup that woke it)",
    "pid_reuse": "a tid was used again after its task exited (pid reuse)",
    "counter_wrap": "a counter delta wrapped (negative or impossibly large)",
    "counters_missing": "counter reads are missing at epoll_wait returns",
}

_EVENT = pl.col("event").cast(pl.String)
_REAL = pl.col("subsystem").cast(pl.String) != "kptrace"
#: The mark a duty-cycled recording puts on every CPU where a window starts after a gap.
TRACE_GAP = "trace_gap"
#: Events whose sched fields name a task (pid and comm) at the time they fire.
_SIGHTINGS = ["sched_switch", "sched_waking", "sched_wakeup", "sched_wakeup_new", "sched_migrate_task"]


def _windows(frame: pl.DataFrame | pl.LazyFrame, kind: str) -> pl.DataFrame:
    """Typed as DAMAGED_WINDOWS; missing cpu/tid columns mean every CPU/task."""
    frame = frame.lazy().with_columns(kind=pl.lit(kind))
    present = frame.collect_schema().names()
    return frame.select([(pl.col(c) if c in present else pl.lit(None)).cast(t).alias(c)
                         for c, t in WINDOW_SCHEMA.items()]).collect()


#: Events read at a time when finding neighbours on a CPU (a Parquet row group of
#: kptrace.export.parquet): the whole table is never held at once.
NEIGHBOUR_ROWS = 1 << 20


def _columns(table: Table) -> list[str]:
    return table.lazy().collect_schema().names()


def _streamed(query: pl.LazyFrame) -> pl.DataFrame:
    """A query whose answer does not depend on row order (a set, a minimum), run by the streaming
    engine: over a scan it holds a batch of rows at a time, never the whole column."""
    return query.collect(engine="streaming")


def _per_cpu(events: Table, wanted: pl.Expr) -> pl.DataFrame:
    """The tracer's `wanted` events with their row (`seq`, the order of record) and the previous
    and next event's time (and the next one's name) on their CPU; counter reads come from perf,
    not the tracer, and are left out. Read NEIGHBOUR_ROWS rows at a time (a 50 M-event scan
    never whole): a neighbour outside its chunk is the last (first) event of the CPU in the
    nearest chunk before (after) it."""
    total = events.lazy().select(pl.len()).collect().item()
    kept, edges = [], []
    for chunk, offset in enumerate(range(0, max(total, 1), NEIGHBOUR_ROWS)):
        # Rows are in the order of record, which a window over each CPU keeps: no sort needed.
        rows = (events.lazy().slice(offset, NEIGHBOUR_ROWS).select("cpu", "ts", "event", "subsystem", "value")
                .with_row_index("seq", offset=offset)
                .filter(pl.col("cpu").is_not_null() & (pl.col("subsystem") != "counter")).drop("subsystem").collect())
        # The windows over every row only for a chunk that holds a wanted one: most hold none.
        around = rows if rows.filter(wanted).height else rows.clear()
        kept.append(around.with_columns(prev_ts=pl.col("ts").shift(1).over("cpu"),
                                        next_ts=pl.col("ts").shift(-1).over("cpu"),
                                        next_event=pl.col("event").shift(-1).over("cpu"))
                    .filter(wanted).with_columns(chunk=pl.lit(chunk, pl.UInt32)))
        edges.append(rows.group_by("cpu").agg(chunk=pl.lit(chunk, pl.UInt32), first_ts=pl.col("ts").first(),
                                              first_event=pl.col("event").first(), last_ts=pl.col("ts").last()))
    edges = pl.concat(edges).sort("chunk")
    return (pl.concat(kept).sort("chunk")
            .join_asof(edges.select("cpu", "chunk", "last_ts"), on="chunk", by="cpu", strategy="backward",
                       allow_exact_matches=False, check_sortedness=False)
            .join_asof(edges.select("cpu", "chunk", "first_ts", "first_event"), on="chunk", by="cpu",
                       strategy="forward", allow_exact_matches=False, check_sortedness=False)
            .select("seq", "cpu", "ts", "event", "value",
                    prev_ts=pl.coalesce("prev_ts", "last_ts"), next_ts=pl.coalesce("next_ts", "first_ts"),
                    next_event=pl.coalesce("next_event", "first_event"))
            .sort("seq"))


def _neighbours(events: Table, wanted: pl.Expr, found: pl.DataFrame | None) -> pl.DataFrame:
    """_per_cpu's rows for `wanted`: taken from `found` (_per_cpu's answer for more rows, which
    damaged_windows reads once for every detector) when given, else read."""
    return _per_cpu(events, wanted) if found is None else found.filter(wanted)


def untraced_spans(events: Table, found: pl.DataFrame | None = None) -> pl.DataFrame:
    """Spans a CPU's trace does not cover by design: the gaps between the windows of a
    duty-cycled recording (`trace_gap` marks, kptrace.read.duty), from the CPU's last event to
    the mark. Not a fault: what they cut is incomplete already, and nothing is marked for them;
    but a missing waking there proves nothing about clocks. (`found`: see _neighbours.)"""
    marks = _neighbours(events, _EVENT == TRACE_GAP, found)
    return marks.select("cpu", start_ns=pl.coalesce("prev_ts", "ts"), end_ns="ts")


def lost_event_windows(events: Table, found: pl.DataFrame | None = None) -> pl.DataFrame:
    """Each lost-event mark: from its CPU's last event before the loss to the mark, which the
    readers date by the first event after it. (`found`: see _neighbours.)"""
    marks = _neighbours(events, _EVENT == "lost_events", found)
    count = pl.col("value").cast(pl.String)
    return _windows(marks.select(
        "cpu", start_ns=pl.coalesce("prev_ts", "ts"), end_ns="ts",
        detail=pl.lit("the tracer lost ") + pl.when(pl.col("value").is_null()).then(pl.lit("an unknown number of"))
        .otherwise(count) + pl.lit(" events on this CPU")), "lost_events")


def cpu_windows(events: Table, meta: dict) -> pl.DataFrame:
    """CPUs named but without events, and CPUs whose buffer wrapped (their trace starts late)."""
    first = _streamed(events.lazy().filter(_REAL).group_by("cpu").agg(first_ts=pl.col("ts").min()))
    present = set(first["cpu"].drop_nulls().to_list())
    named = {}
    columns = {"target_cpu": "a wakeup targets it", "orig_cpu": "a migration leaves it"}
    targets = _streamed(events.lazy().select(pl.col(column).drop_nulls().unique().implode() for column in columns))
    for column, how in columns.items():
        for cpu in targets[column][0].to_list():
            named.setdefault(cpu, how)
    for entry in (meta.get("bundle") or {}).get("per_cpu") or []:
        if isinstance(entry, dict) and isinstance(entry.get("cpu"), int):
            named.setdefault(entry["cpu"], "the bundle manifest lists it")
    missing = pl.DataFrame({"cpu": sorted(set(named) - present)}, schema={"cpu": pl.Int16})
    absent = _windows(missing.with_columns(
        start_ns=pl.lit(meta["start_ns"]), end_ns=pl.lit(meta["end_ns"]),
        detail=pl.format("CPU {} has no events, yet {}: its interrupts and tasks are unknown", "cpu",
                         pl.col("cpu").replace_strict(named, return_dtype=pl.String))), "cpu_without_events")
    started = events.lazy().filter(_EVENT == "buffer_started").select("cpu").unique().collect()
    wrapped = started.join(first, on="cpu").filter(pl.col("first_ts") > meta["start_ns"])
    late = _windows(wrapped.select("cpu", start_ns=pl.lit(meta["start_ns"]), end_ns="first_ts",
                                   detail=pl.lit("the ring buffer of this CPU wrapped: its events before are "
                                                 "overwritten")), "buffer_wrapped")
    return pl.concat([absent, late])


def _open_interrupts(intervals: Table) -> pl.DataFrame:
    """The hard IRQ and softirq intervals without their exit."""
    return (intervals.lazy().filter(pl.col("kind").is_in(["hardirq", "softirq"]) & ~pl.col("complete"))
            .select("cpu", "ts", "kind", "name", "seq").collect())


def open_interrupt_windows(events: Table | None, intervals: Table, meta: dict,
                           found: pl.DataFrame | None = None) -> pl.DataFrame:
    """Hard IRQs and softirqs without their exit: from the entry to the next event on the CPU
    (without events: to the trace end). (`found`: see _neighbours.)"""
    open_ = _open_interrupts(intervals)
    following = (pl.DataFrame(schema={"seq": pl.UInt32, "next_ts": pl.Int64, "next_event": pl.String})
                 if events is None else _neighbours(events, pl.col("seq").is_in(open_["seq"].implode()), found).select(
                     pl.col("seq").cast(pl.UInt32), "next_ts", next_event=pl.col("next_event").cast(pl.String)))
    # One cut by the gap between two windows of a duty-cycled recording is cut by design.
    open_ = open_.join(following, on="seq", how="left").filter(pl.col("next_event").ne_missing(TRACE_GAP))
    return _windows(open_.select(
        "cpu", start_ns="ts", end_ns=pl.coalesce("next_ts", pl.lit(meta["end_ns"])),
        detail=pl.format("{} {} entered without a traced exit: its length is unknown", "kind", "name")),
        "interrupt_without_exit")


def _merge(windows: pl.DataFrame, within_ns: int = 0) -> pl.DataFrame:
    """Windows of one (cpu, tid) that overlap, or lie less than `within_ns` apart, merged into
    one, its detail counting what it joins."""
    if windows.height == 0:
        return windows
    grouped = (windows.sort("cpu", "tid", "start_ns", "end_ns")
               .with_columns(reach=pl.col("end_ns").cum_max().shift(1).over("cpu", "tid"))
               .with_columns(group=(pl.col("reach").is_null() | (pl.col("start_ns") > pl.col("reach") + within_ns))
                             .cast(pl.UInt32).cum_sum()))
    merged = grouped.group_by("group", maintain_order=True).agg(
        pl.col("cpu", "tid", "kind").first(), start_ns=pl.col("start_ns").min(), end_ns=pl.col("end_ns").max(),
        detail=pl.col("detail").first(), cases=pl.len())
    return merged.with_columns(detail=pl.when(pl.col("cases") > 1).then(
        pl.format("{} cases, the first: {}", "cases", "detail")).otherwise("detail")).select(list(WINDOW_SCHEMA))


def _sched_events(events: Table) -> pl.DataFrame:
    """The scheduler events (_SIGHTINGS) with their row (`seq`) and the fields clock_order_windows
    and pid_reuse_windows read: one pass over the events for both."""
    return events.lazy().with_row_index("seq").filter(_EVENT.is_in(_SIGHTINGS)).select(
        "seq", "cpu", "ts", "event", "prev_pid", "prev_comm", "prev_state", "next_pid", "next_comm", "task_pid",
        "task_comm").collect()


def clock_order_windows(sched: pl.DataFrame, intervals: Table, unseen: pl.DataFrame) -> pl.DataFrame:
    """A task that slept (switched out in state S or D) is switched in again only after a
    sched_waking of it, which may come while it still runs (it had set its sleeping state but not
    yet switched out). When no waking lies between the start of the run that slept and the next
    switch-in, and the first waking after it comes from another CPU, the two clocks disagree,
    unless events were lost or not traced (`unseen`) meanwhile: then the waking may be there.
    The waking must come before the task sleeps again: a later one woke that later sleep, and the
    switch-in before it simply lacks its own waking in the trace. (`sched`: _sched_events.)"""
    # Lazily: an eager filter of `sched` would copy its comm strings too (~1 GB at 5 M rows).
    rows = (sched.lazy().filter(_EVENT.is_in(["sched_waking", "sched_wakeup", "sched_switch"]))
            .select(pl.col("seq").cast(pl.UInt32), "cpu", "ts", "event", "prev_pid", "prev_state", "next_pid",
                    "task_pid").collect())
    wakings = rows.filter(_EVENT == "sched_waking").select(
        tid="task_pid", waking_ts="ts", waking_cpu="cpu").sort("waking_ts")
    if wakings.height == 0:
        return _windows(pl.DataFrame(), "clock_order").clear()
    switches = rows.filter(_EVENT == "sched_switch")
    sleeps = switches.filter(~pl.col("prev_state").str.starts_with("R"))
    slept = sleeps.select(end_seq="seq", sleeper="prev_pid")
    woken = switches.select("seq", woken="next_pid")
    runs = (intervals.lazy().filter((pl.col("kind") == "running") & (pl.col("tid") != 0))
            .select("id", "cpu", "tid", "ts", "seq", "end_seq").collect()
            .join(woken, on="seq", how="left")
            .sort("tid", "ts", "id")
            .with_columns(next_ts=pl.col("ts").shift(-1).over("tid"), next_cpu=pl.col("cpu").shift(-1).over("tid"),
                          next_switched_in=(pl.col("woken") == pl.col("tid")).shift(-1).over("tid"))
            .join(slept, on="end_seq", how="inner")
            .filter((pl.col("sleeper") == pl.col("tid")) & pl.col("next_switched_in").fill_null(False))
            .select("tid", run_ts="ts", next_ts="next_ts", next_cpu="next_cpu")
            .sort("next_ts"))
    last = wakings.select("tid", last_waking_ts="waking_ts")
    late = (runs.join_asof(last, left_on="next_ts", right_on="last_waking_ts", by="tid", strategy="backward",
                           check_sortedness=False)
            .join_asof(wakings, left_on="next_ts", right_on="waking_ts", by="tid", strategy="forward",
                       allow_exact_matches=False, check_sortedness=False)
            .join_asof(sleeps.select(tid="prev_pid", sleep_ts="ts").sort("sleep_ts"), left_on="next_ts",
                       right_on="sleep_ts", by="tid", strategy="forward", check_sortedness=False)
            .filter((pl.col("last_waking_ts").is_null() | (pl.col("last_waking_ts") < pl.col("run_ts")))
                    & (pl.col("waking_cpu") != pl.col("next_cpu"))
                    & (pl.col("sleep_ts").is_null() | (pl.col("waking_ts") <= pl.col("sleep_ts")))))
    explained = _touched(unseen["start_ns"].to_numpy(), unseen["end_ns"].to_numpy(),
                         late["run_ts"].to_numpy(), late["waking_ts"].to_numpy())
    late = late.filter(~pl.Series(explained))
    detail = pl.format("tid {} switched in on CPU {} at {} ns, {} ns before the sched_waking on CPU {} that woke it",
                       "tid", "next_cpu", "next_ts", pl.col("waking_ts") - pl.col("next_ts"), "waking_cpu")
    cases = pl.concat([late.select(cpu=cpu, start_ns="next_ts", end_ns="waking_ts", detail=detail)
                       for cpu in ("next_cpu", "waking_cpu")] + _unpaired_wakeups(rows, unseen))
    return _merge(_windows(cases, "clock_order"), SKEW_PERSISTS_NS)


def _unpaired_wakeups(rows: pl.DataFrame, unseen: pl.DataFrame) -> list[pl.DataFrame]:
    """Each sched_waking of a task is followed by its sched_wakeup before the next waking of it.
    When the two are recorded on CPUs whose clocks disagree, a pair can come out swapped, and the
    task's order reads waking, waking, wakeup, wakeup (or the mirror): two repeats in a row, the
    swapped pair between them. One repeat alone is one missing event, not a clock. The window is
    the swapped pair's span, unless events went unseen from the first repeat to the second."""
    after = [pl.col(name).shift(-1).over("task_pid").alias(f"next_{name}") for name in ("event", "ts", "cpu")]
    pairs = (rows.filter(_EVENT.is_in(["sched_waking", "sched_wakeup"]))
             .select("seq", "ts", "cpu", "task_pid", event=_EVENT).sort("task_pid", "seq")
             .with_columns(*after, repeated=pl.col("event") == pl.col("event").shift(1).over("task_pid"),
                           repeated_next=(pl.col("event").shift(-1) == pl.col("event").shift(-2)).over("task_pid"),
                           prev_ts=pl.col("ts").shift(1).over("task_pid"),
                           last_ts=pl.col("ts").shift(-2).over("task_pid"))
             .filter(pl.col("repeated") & pl.col("repeated_next") & (pl.col("next_event") != pl.col("event"))
                     & (pl.col("cpu") != pl.col("next_cpu"))))
    pairs = pairs.filter(~pl.Series(_touched(unseen["start_ns"].to_numpy(), unseen["end_ns"].to_numpy(),
                                             pairs["prev_ts"].to_numpy(), pairs["last_ts"].to_numpy())))
    detail = pl.format("tid {}: {} on CPU {} at {} ns and {} on CPU {} at {} ns recorded in swapped order",
                       "task_pid", "event", "cpu", "ts", "next_event", "next_cpu", "next_ts")
    return [pairs.select(cpu=cpu, start_ns="ts", end_ns="next_ts", detail=detail) for cpu in ("cpu", "next_cpu")]


def pid_reuse_windows(sched: pl.DataFrame) -> pl.DataFrame:
    """A tid seen again after its task exited (switched out for the last time in state X or Z)
    belongs to another task. Seen in the scheduler's own fields (sched_switch, wakeups,
    migrations), which the kernel fills at event time; a name change alone is not counted, since
    exec renames a task without a new tid. (`sched`: _sched_events.)"""
    sightings = pl.concat([sched.lazy().select("seq", "ts", tid=pid, comm=comm, dead=dead) for pid, comm, dead in (
        ("prev_pid", "prev_comm", pl.col("prev_state").str.contains("^[XZ]").fill_null(False)),
        ("next_pid", "next_comm", pl.lit(False)), ("task_pid", "task_comm", pl.lit(False)))])
    after_exit = (sightings.drop_nulls(["tid"]).filter(pl.col("tid") != 0).sort("tid", "seq")
                  .with_columns(exited=pl.col("dead").shift(1).over("tid"), before=pl.col("comm").shift(1).over("tid"),
                                last_ts=pl.col("ts").shift(1).over("tid"))
                  .filter(pl.col("exited").fill_null(False)))
    return _windows(after_exit.select(
        "tid", start_ns="last_ts", end_ns="ts",
        detail=pl.format("tid {} exited as '{}', then '{}' ran under it: another task took the tid (pid reuse); "
                         "its intervals across the change are not one task's", "tid", "before", "comm")), "pid_reuse")


def counter_windows(events: Table, meta: dict) -> pl.DataFrame:
    """Wrapped counter deltas, and epoll iterations whose closing counter read is missing."""
    reads = events.lazy().filter(pl.col("subsystem") == "counter").select(
        "cpu", "ts", counter=_EVENT, value="value").collect()
    if reads.height == 0:
        return _windows(pl.DataFrame(), "counter_wrap").clear()
    reads = reads.sort("cpu", "counter", "ts").with_columns(prev_ts=pl.col("ts").shift(1).over("cpu", "counter"))
    wrapped = _windows(reads.filter((pl.col("value") < 0) | (pl.col("value") >= WRAPPED_DELTA)).select(
        "cpu", start_ns=pl.coalesce("prev_ts", pl.lit(meta["start_ns"])), end_ns="ts",
        detail=pl.format("{} read a delta of {}: wrapped or damaged", "counter", "value")), "counter_wrap")
    instants = reads.select("cpu", "ts").unique().sort("cpu", "ts").with_columns(
        prev_ts=pl.col("ts").shift(1).over("cpu"))
    # A text trace rounds to its resolution, so a return may print up to that much after its read.
    slack = meta.get("ts_resolution_ns") or 1
    exits = events.lazy().filter(_EVENT.is_in([f"sys_exit_{name}" for name in EPOLL])).select(
        "cpu", exit_ts="ts", earliest=pl.col("ts") - slack).collect()
    closed = (exits.sort("earliest").join_asof(instants.sort("ts"), left_on="earliest", right_on="ts", by="cpu",
                                               strategy="forward", check_sortedness=False)
              .filter(pl.col("prev_ts").is_not_null())
              .group_by("cpu", "prev_ts", "ts").agg(returns=pl.len()).filter(pl.col("returns") > 1))
    gaps = _windows(closed.select(
        "cpu", start_ns="prev_ts", end_ns="ts",
        detail=pl.format("{} epoll_wait returns between two counter reads: the reads of the others are missing",
                         "returns")), "counters_missing")
    unread = (exits.join(instants.select("cpu").unique(), on="cpu", how="anti")
              .group_by("cpu").agg(start_ns=pl.col("exit_ts").min(), end_ns=pl.col("exit_ts").max(), n=pl.len()))
    absent = _windows(unread.select("cpu", "start_ns", "end_ns", detail=pl.format(
        "{} epoll_wait returns on this CPU but no counter read, while other CPUs have them", "n")),
        "counters_missing")
    return pl.concat([wrapped, gaps, absent])


def damaged_windows(events: Table | None, intervals: Table, meta: dict) -> pl.DataFrame:
    """Every fault's windows, ordered by (start_ns, end_ns, cpu, tid, kind)."""
    if events is None:
        return open_interrupt_windows(None, intervals, meta).sort("start_ns", "end_ns", "cpu", "tid", "kind",
                                                                  nulls_last=True)
    # The neighbours of every mark and open interrupt in one pass over the events, not one each.
    neighbours = _per_cpu(events, _EVENT.is_in([TRACE_GAP, "lost_events"])
                          | pl.col("seq").is_in(_open_interrupts(intervals)["seq"].implode()))
    lost, missing = lost_event_windows(events, neighbours), cpu_windows(events, meta)
    unseen = pl.concat([frame.select("start_ns", "end_ns")
                        for frame in (lost, missing, untraced_spans(events, neighbours))])
    sched = _sched_events(events)
    found = [open_interrupt_windows(events, intervals, meta, neighbours), lost, missing,
             clock_order_windows(sched, intervals, unseen), pid_reuse_windows(sched), counter_windows(events, meta)]
    return pl.concat(found).sort("start_ns", "end_ns", "cpu", "tid", "kind", nulls_last=True)


def _touched(starts: np.ndarray, ends: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether each span [lo, hi] overlaps any window [start, end] (closed on both sides)."""
    if len(starts) == 0:
        return np.zeros(len(lo), dtype=bool)
    order = np.argsort(starts, kind="stable")
    reach = np.maximum.accumulate(ends[order])
    opened = np.searchsorted(starts[order], hi, side="right")
    return (opened > 0) & (reach[np.maximum(opened - 1, 0)] >= lo)


def mark_requests(requests: Table, windows: pl.DataFrame) -> Table:
    """`fault_kinds`: the kinds of the windows a request overlaps in time on its CPU (any CPU when
    it migrated) and its thread; `damaged`: it overlaps one. A scan stays a scan, the marks
    added to it as columns."""
    spans = requests.lazy().select("ts", "cpu", "tid", "migrated", end=pl.col("ts") + pl.col("dur")).collect()
    lo, hi = spans["ts"].to_numpy(), spans["end"].to_numpy()
    cpu, tid, migrated = spans["cpu"].to_numpy(), spans["tid"].to_numpy(), spans["migrated"].to_numpy()
    hits = {}
    for kind in sorted(set(windows["kind"])):
        of_kind = windows.filter(pl.col("kind") == kind)
        hit = np.zeros(spans.height, dtype=bool)
        for (w_cpu, w_tid), group in of_kind.group_by("cpu", "tid"):
            applies = ((w_cpu is None) | (cpu == w_cpu) | migrated) & ((w_tid is None) | (tid == w_tid))
            hit |= applies & _touched(group["start_ns"].to_numpy(), group["end_ns"].to_numpy(), lo, hi)
        hits[kind] = hit
    if not hits:
        return requests.with_columns(damaged=pl.lit(False),
                                     fault_kinds=pl.lit([], dtype=pl.List(pl.String)))
    # The kinds' names gathered per row by Polars: a Python list per request cost ~1 s per 50 k requests.
    kinds = pl.DataFrame(hits).select(
        damaged=pl.any_horizontal(pl.all()),
        fault_kinds=pl.concat_list([pl.when(pl.col(kind)).then(pl.lit(kind)) for kind in hits]).list.drop_nulls())
    return requests.with_columns(kinds.get_columns())


def _covered_ns(starts: np.ndarray, ends: np.ndarray) -> int:
    """Length of the union of windows [start, end]."""
    if len(starts) == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.concatenate([[starts[0]], np.maximum.accumulate(ends)[:-1]])
    return int(np.clip(ends - np.maximum(starts, reach), 0, None).sum())


def mark_attribution(attribution: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """`damaged_windows` and `damaged_ns` of each row's CPU (windows for every CPU included)."""
    per_cpu = {}
    for cpu in attribution["cpu"].unique().to_list():
        on_cpu = windows.filter(pl.col("cpu").is_null() | (pl.col("cpu") == cpu))
        per_cpu[cpu] = (on_cpu.height, _covered_ns(on_cpu["start_ns"].to_numpy(), on_cpu["end_ns"].to_numpy()))
    counts = pl.DataFrame([(cpu, n, ns) for cpu, (n, ns) in per_cpu.items()],
                          schema={"cpu": pl.Int16, "damaged_windows": pl.UInt32, "damaged_ns": pl.Int64}, orient="row")
    return attribution.join(counts, on="cpu", how="left", maintain_order="left")


def fault_overview(windows: pl.DataFrame | None, requests: Table | None) -> list[dict]:
    """Per fault kind: its windows, the CPUs they lie on, the time they cover (ns), the requests
    they mark (null without requests) and the first window's detail; for summary.json."""
    if windows is None:
        return []
    rows = []
    for kind in sorted(set(windows["kind"])):
        of_kind = windows.filter(pl.col("kind") == kind)
        rows.append({
            "kind": kind, "meaning": FAULT_WORDS[kind], "windows": of_kind.height,
            "cpus": sorted({"all" if c is None else str(c) for c in of_kind["cpu"].to_list()}),
            "covered_ns": _covered_ns(of_kind["start_ns"].to_numpy(), of_kind["end_ns"].to_numpy()),
            "requests_marked": None if requests is None or "fault_kinds" not in _columns(requests)
            else requests.lazy().filter(pl.col("fault_kinds").list.contains(kind)).select(pl.len()).collect().item(),
            "first": of_kind["detail"][0]})
    return rows


def fault_text(fault: dict) -> str:
    """One fault kind in a line, for the warning and the printed summary."""
    marked = "" if fault["requests_marked"] is None else f"; {fault['requests_marked']:,} requests marked damaged"
    return (f"damaged windows ({fault['kind']}): {fault['meaning']}: {fault['windows']:,} window(s) on CPU "
            f"{', '.join(fault['cpus'])}, {fault['covered_ns'] / 1e3:,.1f} µs{marked}; damaged_windows.parquet "
            f"lists them (first: {fault['first']})")


def mark_faults(analysis: Analysis, windows: pl.DataFrame | None = None) -> Analysis:
    """The analysis with its damaged windows (damaged_windows, found here unless given), its
    requests and attribution marked, and a warning per fault."""
    windows = damaged_windows(analysis.events, analysis.intervals, analysis.meta) if windows is None else windows
    requests = None if analysis.requests is None else mark_requests(analysis.requests, windows)
    meta = analysis.meta | {"warnings": [*analysis.meta["warnings"], *map(fault_text, fault_overview(windows, requests))]}
    return replace(analysis, meta=meta, requests=requests, attribution=mark_attribution(analysis.attribution, windows),
                   damaged_windows=windows)
