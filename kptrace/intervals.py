"""Per-CPU intervals rebuilt from the event table: hard IRQs, softirqs, NAPI polls, syscalls,
and task run intervals.

Pairing rules, and why they hold:
- Hard IRQ handlers (device IRQs and APIC vectors) do not nest within one CPU, nor do softirq
  runs, so within each (cpu, kind) stream an entry pairs with the next edge when that is the
  matching exit.
- A syscall's enter and exit come from one task, so they pair within each tid.
- `napi_poll` fires when a poll ends; the poll began at the previous boundary inside the same
  NET_RX softirq run (its entry, or the previous poll's end).
- A task runs on a CPU from the sched_switch that picks it to the next sched_switch there, or
  from a switch the trace missed, which the task's own events prove (`running`).
Anything else — an exit without entry at the trace start, an entry cut off by a lost-event gap
or the trace end — is kept with `complete = false` and a null `dur`: never an invented duration.

Output columns (INTERVAL_SCHEMA): ts (ns), dur (ns, null when incomplete), cpu, tid (for IRQs
and softirqs: the task they interrupted), kind (hardirq | softirq | napi | syscall | running),
name (IRQ handler name such as `virtio1-req.0`, APIC vector handler such as `local_timer`,
softirq such as `NET_RX`, NAPI device, syscall name, task comm), depth (nesting layer: running 0,
syscall 1, softirq and napi 2, hardirq 3), complete, for syscalls fd (from the enter event) and
ret (from the exit), seq and end_seq (rows of the event table holding the event that opened
and the one that closed the interval; for a NAPI poll both are its napi_poll event), and for
softirqs raise_ts and raised_in (who raised it, below). build_intervals numbers them (`id`).

Same input, same table: ties are broken by a documented rule, never by sort or join order.
The event table's row order is the order of record (time, then input line: within one CPU
that is the order the tracer wrote, exact even when microsecond timestamps tie), and `seq`
carries it. Intervals are numbered in (ts, depth, seq, end_seq) order: by start time, the outer
layer first, then the order their events were recorded (end_seq parts a run the trace missed
the switch into from the recorded switch out that ends it: both cite that switch's row). Whatever needs the true order of events at
one instant (pairing, containment, who raised a softirq) compares `seq`, not `ts`.

Who raised a softirq: raise_softirq sets the vector's pending bit on the local CPU; the
batch that runs it clears the bit before the run begins, so a raise after the vector's
previous run began either set the bit this run consumes or found it already set. The run is
credited to the first softirq_raise of its vector on its CPU after the previous run of that
vector there began (`raise_ts`), and `raised_in` is the id of the hard IRQ, else softirq, whose
entry and exit enclose that raise (null: raised in task context). raise_ts is null when no such
raise was traced (the trace start, lost events, or a trace without softirq_raise).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kptrace import tables

#: Added for softirqs after numbering (null for other kinds).
RAISE_SCHEMA = {c: t for c, t in tables.polars_schema("intervals").items() if c in ("raise_ts", "raised_in")}
#: What each kind's rows carry before numbering: the declared columns less `id` and RAISE_SCHEMA.
INTERVAL_SCHEMA = {c: t for c, t in tables.polars_schema("intervals").items() if c != "id" and c not in RAISE_SCHEMA}
#: build_intervals adds `id` (UInt32, the row position), which requests and the timeline cite.
DEPTH = {"running": 0, "syscall": 1, "softirq": 2, "napi": 2, "hardirq": 3}

_EVENT = pl.col("event").cast(pl.String)
#: Tests of the event and subsystem names: as categories they are made on the few distinct
#: names, not on a string per row (the normalized table's columns are categorical already).
_NAMED = pl.col("event").cast(pl.Categorical)
_SUBSYSTEM = pl.col("subsystem").cast(pl.Categorical)
_LOST = _SUBSYSTEM == "kptrace"
#: The rows that can tell who runs on a CPU (running): every event of a task, and lost-event marks.
TASK_ROW = pl.col("tid").is_not_null() | _LOST
#: Sorts like ("cpu", "seq"), null CPUs first: one integer key (cpu below 2^16, seq below 2^32),
#: which Polars sorts several times faster than the two columns.
CPU_ORDER = (pl.col("cpu").cast(pl.Int64) + (1 << 15) + 1).fill_null(0) * (1 << 32) + pl.col("seq").cast(pl.Int64)


def _finish(frame: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """Add the columns every kind shares, typed and ordered as INTERVAL_SCHEMA."""
    present = frame.collect_schema().names()
    return frame.with_columns(kind=pl.lit(kind), depth=pl.lit(DEPTH[kind])).select(
        [(pl.col(c) if c in present or c in ("kind", "depth") else pl.lit(None)).cast(t).alias(c)
         for c, t in INTERVAL_SCHEMA.items()]
    )


def _pair_next(stream: pl.LazyFrame, by: str) -> pl.LazyFrame:
    """Each entry (edge +1) with the next edge in its stream; complete when that is its exit.
    One shift over the streams finds each row's next row; the columns read there are gathered
    (cheaper than a shift over the streams for each, or a sort of every column by stream)."""
    following = pl.col("_pair_row").shift(-1).over(by)
    stream = stream.with_row_index("_pair_row").with_columns(_pair_next=following).with_columns(
        pl.col(c).gather(pl.col("_pair_next")).alias(f"next_{c}") for c in ("edge", "name", "ts", "ret", "seq")
    )
    complete = (pl.col("next_edge") == -1) & (pl.col("next_name") == pl.col("name"))
    return stream.filter(pl.col("edge") == 1).with_columns(
        complete=complete.fill_null(False),
        dur=pl.when(complete).then(pl.col("next_ts") - pl.col("ts")),
        ret=pl.when(complete).then(pl.col("next_ret")),
        end_seq=pl.when(complete).then(pl.col("next_seq")),
    )


def _irq_stream(events: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """Entry/exit edges of one kind, with lost-event marks as breaking edges (0), in the order
    given: record order on each CPU, as the event table is (_pair_next reads them per CPU)."""
    if kind == "hardirq":
        member = _NAMED.is_in(["irq_handler_entry", "irq_handler_exit"]) | (_SUBSYSTEM == "irq_vectors")
        name = (
            pl.when(_SUBSYSTEM == "irq_vectors").then(_EVENT.str.replace(r"_(entry|exit)$", ""))
            .otherwise(pl.col("irq").cast(pl.String))
        )
    else:
        member = _NAMED.is_in(["softirq_entry", "softirq_exit"])
        name = pl.col("softirq").cast(pl.String)
    return (
        events.filter(member & (_NAMED.cat.ends_with("_entry") | _NAMED.cat.ends_with("_exit")) | _LOST)
        .with_columns(
            name=name,
            edge=pl.when(_LOST).then(0).when(_NAMED.cat.ends_with("_entry")).then(1).otherwise(-1),
            ret=pl.lit(None, pl.Int64),
        )
    )


def hard_and_soft_irqs(events: pl.LazyFrame) -> pl.LazyFrame:
    """Hard IRQs named by the handler name their entry carries (the APIC vector otherwise)."""
    hard = _pair_next(_irq_stream(events, "hardirq"), "cpu").with_columns(name=pl.coalesce("irq_name", "name"))
    soft = _pair_next(_irq_stream(events, "softirq"), "cpu")
    return pl.concat([_finish(hard, "hardirq"), _finish(soft, "softirq")])


#: The rows a NAPI poll can start at or end at (napi_polls).
NAPI_BOUNDARY = ((_NAMED == "napi_poll") | ((_NAMED == "softirq_entry") & (pl.col("softirq") == "NET_RX"))
                 | ((_NAMED == "softirq_exit") & (pl.col("softirq") == "NET_RX")) | _LOST)


def napi_polls(events: pl.LazyFrame) -> pl.LazyFrame:
    """A poll runs from the previous boundary inside its NET_RX softirq run to its napi_poll."""
    # In (cpu, seq) order the previous boundary on the CPU is the row before, if on that CPU.
    same_cpu = pl.col("cpu").eq_missing(pl.col("cpu").shift(1))
    boundaries = (
        events.filter(NAPI_BOUNDARY)
        .sort(CPU_ORDER)
        .with_columns(prev_opens=same_cpu & _NAMED.is_in(["softirq_entry", "napi_poll"]).shift(1),
                      prev_ts=pl.when(same_cpu).then(pl.col("ts").shift(1)))
    )
    complete = pl.col("prev_opens").fill_null(False)
    return _finish(
        boundaries.filter(_NAMED == "napi_poll").with_columns(
            ts=pl.when(complete).then(pl.col("prev_ts")).otherwise(pl.col("ts")),
            dur=pl.when(complete).then(pl.col("ts") - pl.col("prev_ts")),
            complete=complete,
            name=pl.col("dev").cast(pl.String),
            end_seq=pl.when(complete).then(pl.col("seq")),
        ),
        "napi",
    )


_SYS_ENTER = _NAMED.cat.starts_with("sys_enter_")


def syscall_edges(events: pl.LazyFrame) -> pl.LazyFrame:
    """Every syscall enter (edge 1) and exit (-1), in the order given: record order, as the
    event table is (_pair_next reads them per task)."""
    return (
        events.filter(_SYS_ENTER | _NAMED.cat.starts_with("sys_exit_"))
        .with_columns(
            name=pl.when(_SYS_ENTER).then(_NAMED.cat.slice(len("sys_enter_"))).otherwise(_NAMED.cat.slice(len("sys_exit_"))),
            edge=pl.when(_SYS_ENTER).then(1).otherwise(-1),
        )
    )


def syscalls(events: pl.LazyFrame) -> pl.LazyFrame:
    """Enter/exit pairs per task; the enter gives fd, the exit the return value."""
    return _finish(_pair_next(syscall_edges(events), "tid"), "syscall")


#: The event columns a task run is built from (run_boundaries, runs_between, _finish): only
#: these are read of the whole table (a windowed caller collects the boundaries).
_RUN_COLUMNS = ("ts", "cpu", "tid", "seq", "event", "subsystem", "next_pid", "comm", "next_comm", "fd", "ret")


def _task_changes(events: pl.LazyFrame) -> pl.LazyFrame:
    """Every event of a task, in the order given (`events` in record order on each CPU, as the
    event table is: only the few columns _missed_after reads are put in CPU order), with
    `missed`: true where the task that recorded it is not the one the previous event on its
    CPU left running (that task, or the sched_switch's next_pid) — a switch the trace does not
    hold — and there `prev_ts`, the time of that previous event. Lost-event marks are kept
    (`missed` false)."""
    left_running = pl.when(_NAMED == "sched_switch").then(pl.col("next_pid")).otherwise(pl.col("tid"))
    present = events.collect_schema().names()
    rows = events.filter(TASK_ROW).select([c for c in _RUN_COLUMNS if c in present])
    missed, prev_ts = _missed_after(rows.select("cpu", "tid", "ts", lost=_LOST, left=left_running).collect())
    return rows.with_columns(missed=missed, prev_ts=prev_ts)


def _missed_after(rows: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """_task_changes' `missed` and `prev_ts` of `rows` (cpu, tid, ts, lost, left: the task the
    row leaves running), each row compared with the previous one on its CPU in numpy: the rows
    put in CPU order by a stable sort (Polars' shift over each CPU, or its gather, costs several
    times more). A null value proves nothing: no switch is inferred from it."""
    order = np.argsort(rows["cpu"].to_numpy(), kind="stable")  # null CPUs (NaN) sort together

    def in_cpu_order(name: str) -> tuple[np.ndarray, np.ndarray]:
        column = rows[name]
        known = column.is_not_null().to_numpy()[order] if column.null_count() else np.ones(len(order), dtype=bool)
        return column.fill_null(0).to_numpy()[order], known

    (cpu, cpu_known), (tid, tid_known), (left, left_known), (lost, lost_known) = map(
        in_cpu_order, ("cpu", "tid", "left", "lost"))
    same_cpu = (cpu[1:] == cpu[:-1]) & (cpu_known[1:] == cpu_known[:-1])
    not_lost = lost_known & ~lost
    missed_in_order = np.zeros(len(order), dtype=bool)
    missed_in_order[1:] = (same_cpu & not_lost[1:] & not_lost[:-1] & tid_known[1:] & left_known[:-1]
                           & (tid[1:] != left[:-1]))
    missed = np.empty_like(missed_in_order)
    missed[order] = missed_in_order
    after, before = order[1:][missed_in_order[1:]], order[:-1][missed_in_order[1:]]
    prev_ts = pl.Series("prev_ts", [], rows["ts"].dtype).extend_constant(None, rows.height)
    return pl.Series("missed", missed), prev_ts.scatter(after, rows["ts"].gather(before))


def missed_switches(events: pl.LazyFrame | pl.DataFrame) -> int:
    """How many task switches `running` inferred because the trace holds no sched_switch for them."""
    return _task_changes(events.lazy().with_row_index("seq")).select(pl.col("missed").sum()).collect().item()


def running(events: pl.LazyFrame) -> pl.LazyFrame:
    """Who ran on each CPU: from each sched_switch there to the next one, and from each switch
    the trace missed (below) to the next one.

    Every event names the task running on its CPU (in an interrupt, the task it interrupted), so
    an event from another task than the one the last switch picked proves a switch the trace did
    not record (seen on Linux 6.18: the idle task's switch to a task woken by an IPI is sometimes
    absent). The missed switch lies between the previous event and this one; the interval starts
    at the previous event: the last sign of the task before."""
    return runs_between(run_boundaries(events))


def run_boundaries(events: pl.LazyFrame) -> pl.LazyFrame:
    """The rows where a task starts running (`start`, `tid`, `name`) or the record breaks
    (lost events), per CPU in record order: each depends only on its row and the CPU's
    previous task row."""
    return _task_changes(events).filter((_NAMED == "sched_switch") | pl.col("missed") | _LOST).sort(CPU_ORDER).with_columns(
        start=pl.when(pl.col("missed")).then(pl.col("prev_ts")).otherwise(pl.col("ts")),
        tid=pl.when(pl.col("missed") | _LOST).then(pl.col("tid")).otherwise(pl.col("next_pid")),
        name=pl.when(pl.col("missed")).then(pl.col("comm")).otherwise(pl.col("next_comm")),
    )


def runs_between(boundaries: pl.LazyFrame) -> pl.LazyFrame:
    """A run from each start boundary to the CPU's next boundary (complete unless that is a
    lost-event mark or there is none)."""
    # A missed switch right before a sched_switch out of the same task: it ran from the
    # previous event to that switch; both rows are kept, in record order.
    switches = boundaries.sort(CPU_ORDER).with_columns(
        next_ts=pl.col("start").shift(-1).over("cpu"), next_lost=_LOST.shift(-1).over("cpu"),
        next_seq=pl.col("seq").shift(-1).over("cpu"),
    ).filter(~_LOST)
    complete = pl.col("next_ts").is_not_null() & ~pl.col("next_lost").fill_null(False)
    return _finish(
        switches.with_columns(
            ts=pl.col("start"),
            dur=pl.when(complete).then(pl.col("next_ts") - pl.col("start")),
            end_seq=pl.when(complete).then(pl.col("next_seq")),
            complete=complete,
        ),
        "running",
    )


def inside(items: pl.LazyFrame, windows: pl.LazyFrame, by: str | list[str], *, at: str = "ts",
           start: str = "w_ts", end: str = "w_end", closed: str = "left") -> pl.LazyFrame:
    """Items whose `at` falls inside a window with the same `by`, joined with that window's
    columns; items inside no window are dropped. The one definition of "falls inside".

    Windows are half-open: [start, end) with closed="left", (start, end] with closed="right".
    Windows with the same `by` must not overlap, so the latest window that starts at or before
    an item (closed="right": the first that ends at or after it) is the only one that can hold
    it: an as-of join, not a cross join. Of windows starting (ending) at the same instant the
    last (first) in (start, end) order is taken, the one that is not empty.
    """
    if closed == "left":
        joined = items.sort(at, maintain_order=True).join_asof(
            windows.sort(start, end, maintain_order=True), left_on=at, right_on=start, by=by,
            strategy="backward", check_sortedness=False)
        return joined.filter(pl.col(at) < pl.col(end))
    joined = items.sort(at, maintain_order=True).join_asof(
        windows.sort(end, start, maintain_order=True), left_on=at, right_on=end, by=by,
        strategy="forward", check_sortedness=False)
    return joined.filter(pl.col(at) > pl.col(start))


def lost_marks(events: pl.LazyFrame) -> pl.LazyFrame:
    """Where each CPU's record breaks (lost events, tracing gaps): (cpu, gap_seq)."""
    return events.filter(_LOST).select("cpu", gap_seq="seq")


def mark_lost_gaps(intervals: pl.LazyFrame, gaps: pl.LazyFrame) -> pl.LazyFrame:
    """A syscall whose CPU lost events while it was open may have lost its inner events too:
    broken when the first lost-event mark on its CPU (`gaps`: lost_marks) after its enter comes
    before its exit."""
    gaps = gaps.sort("gap_seq")
    marked = intervals.sort("seq").join_asof(
        gaps, left_on="seq", right_on="gap_seq", by="cpu", strategy="forward", check_sortedness=False
    ).with_columns(broken=(pl.col("kind") == "syscall") & (pl.col("gap_seq") < pl.col("end_seq")).fill_null(False))
    return marked.with_columns(
        complete=pl.col("complete") & ~pl.col("broken"),
        dur=pl.when(pl.col("broken")).then(None).otherwise(pl.col("dur")),
    ).drop("gap_seq", "broken")


def sorted_rows(frame: pl.DataFrame, by: list[pl.Series], nulls_last: bool = False) -> pl.DataFrame:
    """`frame` sorted by the keys `by` (nulls first, or last, as Polars sorts), ties kept in row
    order: numpy's lexsort, several times faster than Polars' sort on several integer keys."""
    keys = []
    for key in reversed(by):
        keys += [key.fill_null(0).to_numpy(), (key.is_null() if nulls_last else key.is_not_null()).to_numpy()]
    return frame[np.lexsort(keys)] if frame.height else frame


def _raisers(intervals: pl.LazyFrame, events: pl.LazyFrame) -> pl.LazyFrame:
    """raise_ts and raised_in of each softirq run (module docstring); `id` must be set."""
    # Vectors as categories: the as-of join matches them as integers, not as strings.
    runs = (
        intervals.filter(pl.col("kind") == "softirq")
        .select("id", "cpu", pl.col("name").cast(pl.Categorical), "seq")
        .sort("seq")
        .with_columns(after=pl.col("seq").shift(1).over("cpu", "name").fill_null(0))
    )
    raises = events.filter(_NAMED == "softirq_raise").select(
        "cpu", name=pl.col("softirq").cast(pl.Categorical), raise_seq="seq", raise_ts="ts")
    # The first raise at or after `after` (the vector's previous run on the CPU), if it comes
    # before the run: the runs of one vector part the CPU's record, so it is the first of the
    # raises in [after, seq).
    first = (
        runs.sort("after").join_asof(raises.sort("raise_seq"), left_on="after", right_on="raise_seq",
                                     by=["cpu", "name"], strategy="forward", check_sortedness=False)
        .filter(pl.col("raise_seq") < pl.col("seq"))
        .select("id", "cpu", "raise_seq", "raise_ts")
    )
    enclosing = {
        kind: inside(first.select("id", "cpu", "raise_seq"),
                     intervals.filter(pl.col("kind") == kind).select("cpu", encloser="id", w_ts="seq", w_end="end_seq"),
                     "cpu", at="raise_seq").select("id", pl.col("encloser").alias(kind))
        for kind in ("hardirq", "softirq")
    }
    return (
        first.join(enclosing["hardirq"], on="id", how="left").join(enclosing["softirq"], on="id", how="left")
        .select("id", "raise_ts", raised_in=pl.coalesce("hardirq", "softirq"))
    )


def build_intervals(events: pl.LazyFrame) -> pl.LazyFrame:
    """All interval kinds, numbered in (ts, depth, seq, end_seq) order, with the raiser of each softirq."""
    events = events.with_row_index("seq")
    calls = syscalls(events)
    # Only a syscall can be broken by a gap, and most traces have none.
    if (gaps := lost_marks(events).collect()).height:
        calls = mark_lost_gaps(calls, gaps.lazy())
    every = pl.concat([hard_and_soft_irqs(events), napi_polls(events), calls, running(events)]).collect()
    numbered = sorted_rows(every, [every["ts"], every["depth"], every["seq"], every["end_seq"]], nulls_last=True)
    numbered = numbered.with_row_index("id")
    raisers = _raisers(numbered.lazy(), events).collect()
    # Written into the softirqs' rows (`id` is the row number), null elsewhere: not joined.
    return numbered.with_columns(
        pl.Series(c, [], t).extend_constant(None, numbered.height).scatter(raisers["id"], raisers[c].cast(t))
        for c, t in RAISE_SCHEMA.items()
    ).lazy()


def irq_intervals(events: pl.LazyFrame) -> pl.LazyFrame:
    """Only the hard IRQ and softirq intervals, in (ts, seq) order."""
    return hard_and_soft_irqs(events.with_row_index("seq")).sort("ts", "seq")


def serving_load(intervals: pl.LazyFrame, chains: pl.LazyFrame, requests: pl.LazyFrame) -> pl.LazyFrame:
    """Per (cpu, source), over the window in which that CPU served requests (first request
    start to last request end, `window_ns`): `window_count` disruptions of the source, their
    `window_span_ns`, and the CPU's `busy_ns` — the window less idle time, counting interrupts
    taken while idle (their disruptions' charged spans) as busy."""
    window = requests.group_by("cpu").agg(w_lo=pl.col("ts").min(), w_hi=(pl.col("ts") + pl.col("dur")).max())
    clipped = (pl.min_horizontal(pl.col("ts") + pl.col("dur"), "w_hi") - pl.max_horizontal("ts", "w_lo")).clip(0)
    complete = intervals.filter(pl.col("complete") & (pl.col("tid") == 0)).join(window, on="cpu")
    idle = complete.filter(pl.col("kind") == "running").group_by("cpu").agg(idle_ns=clipped.sum())
    # An interrupt taken while idle is busy time: its whole charged span, the untraced irq_exit
    # gaps between its hard IRQ and softirqs included (as attribution's direct time counts them).
    idle_chains = inside(
        chains.join(intervals.select(interval_id="id", interrupted="tid"), on="interval_id")
        .filter(pl.col("interrupted") == 0), window.select("cpu", w_ts="w_lo", w_end="w_hi"), "cpu")
    irq_while_idle = idle_chains.group_by("cpu").agg(idle_irq_ns=pl.col("span_ns").sum())
    busy = (
        window.join(idle, on="cpu", how="left").join(irq_while_idle, on="cpu", how="left")
        .select("cpu", window_ns=pl.col("w_hi") - pl.col("w_lo"),
                busy_ns=pl.col("w_hi") - pl.col("w_lo") - pl.col("idle_ns").fill_null(0)
                + pl.col("idle_irq_ns").fill_null(0))
    )
    in_window = (
        inside(chains.filter("disruptive"), window.select("cpu", w_ts="w_lo", w_end="w_hi"), "cpu")
        .group_by("cpu", "source")
        .agg(window_count=pl.len(), window_span_ns=pl.col("span_ns").sum())
    )
    return in_window.join(busy, on="cpu").sort("cpu", "source")
