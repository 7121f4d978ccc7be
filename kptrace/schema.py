"""The one typed event table every reader produces and every later stage consumes.

Column names follow Perfetto's vocabulary (``ts`` in ns, ``cpu``, ``tid``) so the Parquet
tables sit naturally beside a Perfetto trace processor session. Each column is documented
here, once; ``docs/schema.md`` is generated from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


#: Where a figure comes from: read off the trace, a statistic over measured rows (with its 95%
#: interval), or a figure that assumes a model (named in its meaning).
PROVENANCES = ("measured", "estimated", "modelled")


@dataclass(frozen=True)
class Column:
    """One declared column: the contract readers of a table rely on (docs are generated from it).
    `ci` names the column holding this one's 95% interval half-width, and `bounds` the two columns
    holding its 95% lower and upper bounds (an interval that need not be symmetric), when it has them."""

    name: str
    dtype: pl.DataType
    unit: str
    meaning: str
    provenance: str = "measured"
    ci: str = ""
    bounds: tuple[str, str] | tuple[()] = ()

    def __post_init__(self):
        if self.provenance not in PROVENANCES:
            raise ValueError(f"column {self.name}: provenance {self.provenance!r} is not one of {PROVENANCES}")


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("ts", pl.Int64(), "ns", "timestamp on the trace clock; resolution in meta.json `ts_resolution_ns` (1 ns from trace.dat and raw pages)"),
    Column("cpu", pl.Int16(), "", "CPU the event was recorded on"),
    Column("tid", pl.Int32(), "", "kernel task id (the `PID` of tracefs text); 0 is the idle task"),
    Column("tgid", pl.Int32(), "", "thread-group id (user-space pid) when the format carries it, else null"),
    Column("comm", pl.String(), "", "task name as the tracer printed it (`<...>` when unknown)"),
    Column("subsystem", pl.Categorical(), "", "tracepoint system: irq, irq_vectors, napi, net, sched, syscalls, counter, ...; text formats that do not print it give `unknown` for events kptrace has no typed columns for, binary formats (trace.dat, raw pages) every event's own system"),
    Column("event", pl.Categorical(), "", "tracepoint name as tracefs names it (`sys_enter_read`, `local_timer_entry`); counters use the perf event name"),
    Column("irqs_off", pl.Boolean(), "", "interrupts disabled (flags column `d`/`D`); null when the format has no flags"),
    Column("bh_off", pl.Boolean(), "", "bottom halves disabled (flags `b`/`D`); null without flags"),
    Column("need_resched", pl.Boolean(), "", "a reschedule is pending (flags `N`, `n`, `L`, `l`, `B`, `b`, `p`); null without flags"),
    Column("in_hardirq", pl.Boolean(), "", "recorded in hard-IRQ context (flags `h`, `H`, `Z`); null without flags"),
    Column("in_softirq", pl.Boolean(), "", "recorded in softirq context (flags `s`, `H`); null without flags"),
    Column("in_nmi", pl.Boolean(), "", "recorded in NMI context (flags `z`, `Z`); null without flags"),
    Column("preempt_depth", pl.Int8(), "", "preemption count digit of the flags column; null without flags"),
    # irq:irq_handler_entry/exit
    Column("irq", pl.Int32(), "", "Linux IRQ number (irq_handler_entry/exit)"),
    Column("irq_name", pl.String(), "", "IRQ handler name, e.g. `virtio1-req.0` (irq_handler_entry)"),
    # irq_vectors:*_entry/_exit
    Column("vector", pl.Int32(), "", "x86 APIC vector (irq_vectors:*_entry/_exit)"),
    # irq:softirq_raise/entry/exit
    Column("softirq_vec", pl.Int8(), "", "softirq vector number (softirq_raise/entry/exit)"),
    Column("softirq", pl.Categorical(), "", "softirq name: HI TIMER NET_TX NET_RX BLOCK IRQ_POLL TASKLET SCHED HRTIMER RCU"),
    # napi / net
    Column("dev", pl.Categorical(), "", "network device (napi_poll, netif_receive_skb, netif_rx, net_dev_xmit); `(no_device)` for loopback NAPI"),
    Column("napi_work", pl.Int32(), "packets", "packets processed by this NAPI poll"),
    Column("napi_budget", pl.Int32(), "packets", "poll budget"),
    Column("len", pl.Int32(), "bytes", "skb length (netif_receive_skb, netif_rx, net_dev_xmit)"),
    # sched
    Column("prev_comm", pl.String(), "", "sched_switch: task switched out"),
    Column("prev_pid", pl.Int32(), "", "sched_switch: tid switched out"),
    Column("prev_prio", pl.Int16(), "", "sched_switch: its priority"),
    Column("prev_state", pl.String(), "", "sched_switch: its state letters (R, S, D, ...; `R+` preempted)"),
    Column("next_comm", pl.String(), "", "sched_switch: task switched in"),
    Column("next_pid", pl.Int32(), "", "sched_switch: tid switched in"),
    Column("next_prio", pl.Int16(), "", "sched_switch: its priority"),
    Column("task_comm", pl.String(), "", "sched_wakeup/waking/migrate_task: the task concerned"),
    Column("task_pid", pl.Int32(), "", "sched_wakeup/waking/migrate_task: its tid"),
    Column("task_prio", pl.Int16(), "", "sched_wakeup/waking/migrate_task: its priority"),
    Column("target_cpu", pl.Int16(), "", "sched_wakeup/waking: CPU the task will run on; migrate_task: destination"),
    Column("orig_cpu", pl.Int16(), "", "sched_migrate_task: CPU it leaves"),
    # syscalls
    Column("fd", pl.Int64(), "", "syscall enter: file descriptor (epfd for epoll_*)"),
    Column("count", pl.Int64(), "", "syscall enter: count/len/maxevents/vlen"),
    Column("ret", pl.Int64(), "", "syscall exit: return value (negative errno); irq_handler_exit: 1 handled, 0 unhandled"),
    # counters read by perf group-leader sampling
    Column("value", pl.Int64(), "event units", "counter delta read at this sample (cycles, instructions, ns of task-clock, ...)"),
    Column("fields", pl.String(), "", "raw field text of events kptrace has no typed columns for (binary formats: `name=value` of every field, integers in decimal, other arrays in hex); null otherwise"),
)

EVENT_SCHEMA: dict[str, pl.DataType] = {c.name: c.dtype for c in EVENT_COLUMNS}


@dataclass(frozen=True)
class Family:
    """Events that share typed columns: held as a table of their own rows only (kptrace.read.table),
    so a column that only sched_switch fills costs nothing on the other rows. `claims` picks the
    rows whose values of a column shared with another family (`ret`) belong here."""

    name: str
    columns: tuple[str, ...]
    claims: pl.Expr | None = None


_IRQ_HANDLER = pl.col("event").cast(pl.String).is_in(["irq_handler_entry", "irq_handler_exit"])

#: What every event has: the core table's columns (plus the row order, which is its own).
CORE_COLUMNS: tuple[str, ...] = ("ts", "cpu", "tid", "tgid", "comm", "subsystem", "event", "irqs_off", "bh_off",
                                 "need_resched", "in_hardirq", "in_softirq", "in_nmi", "preempt_depth")
FAMILIES: tuple[Family, ...] = (
    Family("irq", ("irq", "irq_name", "ret"), claims=_IRQ_HANDLER),
    Family("vectors", ("vector",)),
    Family("softirq", ("softirq_vec", "softirq")),
    Family("net", ("dev", "napi_work", "napi_budget", "len")),
    Family("sched_switch", ("prev_comm", "prev_pid", "prev_prio", "prev_state", "next_comm", "next_pid", "next_prio")),
    Family("wakeups", ("task_comm", "task_pid", "task_prio", "target_cpu", "orig_cpu")),
    Family("syscalls", ("fd", "count", "ret"), claims=~_IRQ_HANDLER),
    Family("counters", ("value",)),
    Family("other", ("fields",)),
)
#: Text columns of names that repeat a few values: held Categorical (4 B a row, not a 16 B view).
HELD_AS_NAMES: frozenset[str] = frozenset({"comm", "irq_name", "prev_comm", "prev_state", "next_comm", "task_comm"})

#: Softirq vector numbers as the kernel numbers them (include/linux/interrupt.h).
SOFTIRQ_NAMES: tuple[str, ...] = (
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
)


def conform(frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Add missing columns as nulls, cast every column to its schema type, order as the schema."""
    lazy = frame.lazy()
    present = lazy.collect_schema().names()
    return lazy.select(
        [
            (pl.col(c.name) if c.name in present else pl.lit(None)).cast(c.dtype).alias(c.name)
            for c in EVENT_COLUMNS
        ]
    )


def schema_markdown() -> str:
    """The schema as a Markdown table, for docs/schema.md."""
    rows = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    rows += [f"| `{c.name}` | {c.dtype} | {c.unit} | {c.meaning} |" for c in EVENT_COLUMNS]
    return "\n".join(rows) + "\n"
