"""Per-CPU intervals rebuilt from the event table: hard IRQs, softirqs, NAPI polls, syscalls,
and task run intervals.

Pairing rules, and why they hold:
- Hard IRQ handlers (device IRQs and APIC vectors) do not nest within one CPU, nor do softirq
  runs, so within each (cpu, kind) stream an entry pairs with the next edge when that is the
  matching exit.
- A syscall's enter and exit come from one task, so they pair within each tid.
- `napi_poll` fires when a poll ends; the poll began at the previous boundary inside the same
  NET_RX softirq run (its entry, or the previous poll's end).
- A task runs on a CPU from the sched_switch that picks it to the next sched_switch there.
Anything else — an exit without entry at the trace start, an entry cut off by a lost-event gap
or the trace end — is kept with `complete = false` and a null `dur`: never an invented duration.

Output columns (INTERVAL_SCHEMA): ts (ns), dur (ns, null when incomplete), cpu, tid, kind
(hardirq | softirq | napi | syscall | running), name (IRQ handler name such as
`virtio1-req.0`, APIC vector handler such as `local_timer`, softirq such as `NET_RX`, NAPI
device, syscall name, task comm), depth (nesting layer: running 0, syscall 1, softirq and napi 2,
hardirq 3), complete, and for syscalls fd (from the enter event) and ret (from the exit);
build_intervals also numbers them (`id`).
"""

from __future__ import annotations

import polars as pl

INTERVAL_SCHEMA = {
    "ts": pl.Int64, "dur": pl.Int64, "cpu": pl.Int16, "tid": pl.Int32, "kind": pl.String,
    "name": pl.String, "depth": pl.Int8, "complete": pl.Boolean, "fd": pl.Int64, "ret": pl.Int64,
}
#: build_intervals adds `id` (UInt32, the row position), which requests and the timeline cite.
DEPTH = {"running": 0, "syscall": 1, "softirq": 2, "napi": 2, "hardirq": 3}

_EVENT = pl.col("event").cast(pl.String)
_SUBSYSTEM = pl.col("subsystem").cast(pl.String)
_LOST = _SUBSYSTEM == "kptrace"


def _finish(frame: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """Add the columns every kind shares, typed and ordered as INTERVAL_SCHEMA."""
    present = frame.collect_schema().names()
    return frame.with_columns(kind=pl.lit(kind), depth=pl.lit(DEPTH[kind])).select(
        [(pl.col(c) if c in present or c in ("kind", "depth") else pl.lit(None)).cast(t).alias(c)
         for c, t in INTERVAL_SCHEMA.items()]
    )


def _pair_next(stream: pl.LazyFrame, by: str) -> pl.LazyFrame:
    """Each entry (edge +1) with the next edge in its stream; complete when that is its exit."""
    stream = stream.with_columns(
        next_edge=pl.col("edge").shift(-1).over(by),
        next_name=pl.col("name").shift(-1).over(by),
        next_ts=pl.col("ts").shift(-1).over(by),
        next_ret=pl.col("ret").shift(-1).over(by),
    )
    complete = (pl.col("next_edge") == -1) & (pl.col("next_name") == pl.col("name"))
    return stream.filter(pl.col("edge") == 1).with_columns(
        complete=complete.fill_null(False),
        dur=pl.when(complete).then(pl.col("next_ts") - pl.col("ts")),
        ret=pl.when(complete).then(pl.col("next_ret")),
    )


def _irq_stream(events: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """Entry/exit edges of one kind per CPU, with lost-event marks as breaking edges (0)."""
    if kind == "hardirq":
        member = _EVENT.is_in(["irq_handler_entry", "irq_handler_exit"]) | (_SUBSYSTEM == "irq_vectors")
        name = (
            pl.when(_SUBSYSTEM == "irq_vectors").then(_EVENT.str.replace(r"_(entry|exit)$", ""))
            .otherwise(pl.col("irq").cast(pl.String))
        )
    else:
        member = _EVENT.is_in(["softirq_entry", "softirq_exit"])
        name = pl.col("softirq").cast(pl.String)
    return (
        events.filter(member & (_EVENT.str.ends_with("_entry") | _EVENT.str.ends_with("_exit")) | _LOST)
        .with_columns(
            name=name,
            edge=pl.when(_LOST).then(0).when(_EVENT.str.ends_with("_entry")).then(1).otherwise(-1),
            ret=pl.lit(None, pl.Int64),
        )
        .sort("cpu", "seq")
    )


def _irq_names(events: pl.LazyFrame) -> pl.LazyFrame:
    """Device IRQ number -> handler name, from irq_handler_entry (the exit does not carry it)."""
    return (
        events.filter(_EVENT == "irq_handler_entry")
        .group_by(pl.col("irq").cast(pl.String).alias("name"))
        .agg(irq_name=pl.col("irq_name").first())
    )


def hard_and_soft_irqs(events: pl.LazyFrame) -> pl.LazyFrame:
    hard = _pair_next(_irq_stream(events, "hardirq"), "cpu").join(_irq_names(events), on="name", how="left")
    hard = hard.with_columns(name=pl.coalesce("irq_name", "name"))
    soft = _pair_next(_irq_stream(events, "softirq"), "cpu")
    return pl.concat([_finish(hard, "hardirq"), _finish(soft, "softirq")])


def napi_polls(events: pl.LazyFrame) -> pl.LazyFrame:
    """A poll runs from the previous boundary inside its NET_RX softirq run to its napi_poll."""
    boundaries = (
        events.filter((_EVENT == "napi_poll") | ((_EVENT == "softirq_entry") & (pl.col("softirq") == "NET_RX"))
                      | ((_EVENT == "softirq_exit") & (pl.col("softirq") == "NET_RX")) | _LOST)
        .sort("cpu", "seq")
        .with_columns(prev_event=_EVENT.shift(1).over("cpu"), prev_ts=pl.col("ts").shift(1).over("cpu"))
    )
    complete = pl.col("prev_event").is_in(["softirq_entry", "napi_poll"]).fill_null(False)
    return _finish(
        boundaries.filter(_EVENT == "napi_poll").with_columns(
            ts=pl.when(complete).then(pl.col("prev_ts")).otherwise(pl.col("ts")),
            dur=pl.when(complete).then(pl.col("ts") - pl.col("prev_ts")),
            complete=complete,
            name=pl.col("dev").cast(pl.String),
        ),
        "napi",
    )


def syscalls(events: pl.LazyFrame) -> pl.LazyFrame:
    """Enter/exit pairs per task; the enter gives fd, the exit the return value."""
    edges = (
        events.filter(_EVENT.str.starts_with("sys_enter_") | _EVENT.str.starts_with("sys_exit_"))
        .with_columns(
            name=_EVENT.str.replace(r"^sys_(enter|exit)_", ""),
            edge=pl.when(_EVENT.str.starts_with("sys_enter_")).then(1).otherwise(-1),
        )
        .sort("tid", "seq")
    )
    return _finish(_pair_next(edges, "tid"), "syscall")


def running(events: pl.LazyFrame) -> pl.LazyFrame:
    """Who ran on each CPU between consecutive sched_switch events there."""
    switches = (
        events.filter((_EVENT == "sched_switch") | _LOST)
        .sort("cpu", "seq")
        .with_columns(next_ts=pl.col("ts").shift(-1).over("cpu"), next_lost=_LOST.shift(-1).over("cpu"))
        .filter(~_LOST)
    )
    complete = pl.col("next_ts").is_not_null() & ~pl.col("next_lost").fill_null(False)
    return _finish(
        switches.with_columns(
            tid=pl.col("next_pid"), name=pl.col("next_comm"),
            dur=pl.when(complete).then(pl.col("next_ts") - pl.col("ts")),
            complete=complete,
        ),
        "running",
    )


def _mark_lost_gaps(intervals: pl.LazyFrame, events: pl.LazyFrame) -> pl.LazyFrame:
    """A syscall whose CPU lost events while it was open may have lost its inner events too."""
    gaps = events.filter(_LOST).select("cpu", gap_ts="ts").sort("gap_ts")
    marked = (
        intervals.sort("ts")
        .join_asof(gaps, left_on="ts", right_on="gap_ts", by="cpu", strategy="forward", check_sortedness=False)
        .with_columns(
            broken=(pl.col("kind") == "syscall") & (pl.col("gap_ts") < pl.col("ts") + pl.col("dur")).fill_null(False)
        )
    )
    return marked.with_columns(
        complete=pl.col("complete") & ~pl.col("broken"),
        dur=pl.when(pl.col("broken")).then(None).otherwise(pl.col("dur")),
    ).drop("gap_ts", "broken")


def build_intervals(events: pl.LazyFrame) -> pl.LazyFrame:
    """All interval kinds, sorted by (ts, depth)."""
    events = events.with_row_index("seq")
    every = pl.concat([hard_and_soft_irqs(events), napi_polls(events), syscalls(events), running(events)])
    return _mark_lost_gaps(every, events).sort("ts", "depth", maintain_order=True).with_row_index("id")


def irq_intervals(events: pl.LazyFrame) -> pl.LazyFrame:
    """Only the hard IRQ and softirq intervals."""
    return hard_and_soft_irqs(events.with_row_index("seq")).sort("ts")



def serving_load(intervals: pl.LazyFrame, chains: pl.LazyFrame, requests: pl.LazyFrame) -> pl.LazyFrame:
    """Per (cpu, source), over the window in which that CPU served requests (first request
    start to last request end, `window_ns`): `window_count` disruptions of the source, their
    `window_span_ns`, and the CPU's `busy_ns` — the window less idle time, counting interrupts
    taken while idle as busy."""
    window = requests.group_by("cpu").agg(w_lo=pl.col("ts").min(), w_hi=(pl.col("ts") + pl.col("dur")).max())
    clipped = (pl.min_horizontal(pl.col("ts") + pl.col("dur"), "w_hi") - pl.max_horizontal("ts", "w_lo")).clip(0)
    complete = intervals.filter(pl.col("complete") & (pl.col("tid") == 0)).join(window, on="cpu")
    idle = complete.filter(pl.col("kind") == "running").group_by("cpu").agg(idle_ns=clipped.sum())
    irq_while_idle = complete.filter(pl.col("kind").is_in(["hardirq", "softirq"])).group_by("cpu").agg(
        idle_irq_ns=clipped.sum()
    )
    busy = (
        window.join(idle, on="cpu", how="left").join(irq_while_idle, on="cpu", how="left")
        .select("cpu", window_ns=pl.col("w_hi") - pl.col("w_lo"),
                busy_ns=pl.col("w_hi") - pl.col("w_lo") - pl.col("idle_ns").fill_null(0)
                + pl.col("idle_irq_ns").fill_null(0))
    )
    in_window = (
        chains.filter("disruptive").join(window, on="cpu")
        .filter(pl.col("ts").is_between("w_lo", "w_hi"))
        .group_by("cpu", "source")
        .agg(window_count=pl.len(), window_span_ns=pl.col("span_ns").sum())
    )
    return in_window.join(busy, on="cpu")
