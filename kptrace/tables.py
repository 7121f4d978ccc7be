"""The contract of every table `kptrace analyze` writes: typed columns with unit, meaning and
provenance, declared once here as `kptrace.schema.EVENT_COLUMNS` declares the event table.

Stage modules take their Polars schema from `polars_schema(name)`, the summary, report and
summary.json take units and provenance from `columns(name)`, and `docs/tables.md` is
`tables_markdown()` (a test keeps the file and the text equal), so a unit or a provenance is
written in one place only.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kptrace.schema import EVENT_COLUMNS, Column


@dataclass(frozen=True)
class Table:
    """One output table: who writes it, what one row is (`row` follows "One row per"), and its
    columns in order."""

    name: str
    module: str
    row: str
    columns: tuple[Column, ...]


def _ci(name: str, of: str, unit: str, provenance: str) -> Column:
    return Column(name, pl.Float64(), unit, f"95% interval half-width of `{of}`", provenance)


_TIME = "on the trace clock (`meta.json`: clock and resolution)"

INTERVALS = Table("intervals", "kptrace/intervals.py", "interval of one CPU, sorted by (ts, depth)", (
    Column("id", pl.UInt32(), "", "row number; requests and the timeline cite intervals by it"),
    Column("ts", pl.Int64(), "ns", f"start, {_TIME}"),
    Column("dur", pl.Int64(), "ns", "length; null when the interval is incomplete (never invented)"),
    Column("cpu", pl.Int16(), "", "CPU it ran on"),
    Column("tid", pl.Int32(), "", "task that ran; for IRQs and softirqs the task they interrupted"),
    Column("kind", pl.String(), "", "interval type: `hardirq`, `softirq`, `napi`, `syscall`, `running`"),
    Column("name", pl.String(), "", "IRQ handler (`virtio1-req.0`), APIC vector (`local_timer`), softirq "
                                    "(`NET_RX`), NAPI device, syscall, or task comm"),
    Column("depth", pl.Int8(), "", "nesting layer: running 0, syscall 1, softirq/napi 2, hardirq 3"),
    Column("complete", pl.Boolean(), "", "both ends seen, with no lost events in between"),
    Column("fd", pl.Int64(), "", "syscalls: the fd of the enter event"),
    Column("ret", pl.Int64(), "", "syscalls: the return value (bytes, or negative errno)"),
))

DISRUPTIONS = Table("disruptions", "kptrace/requests.py",
                    "hard IRQ and the softirqs that ran straight after it on its CPU (within 2 µs), "
                    "or softirq run with no hard IRQ in front of it (`inline:<softirq>`, not a disruption)", (
    Column("disruption_id", pl.UInt32(), "", "row number, in time order"),
    Column("cpu", pl.Int16(), "", "CPU it ran on"),
    Column("ts", pl.Int64(), "ns", f"start of its first interval, {_TIME}"),
    Column("end", pl.Int64(), "ns", "end of its last interval"),
    Column("hardirq_ns", pl.Int64(), "ns", "time in hard IRQ handlers"),
    Column("softirq_ns", pl.Int64(), "ns", "time in softirqs"),
    Column("complete", pl.Boolean(), "", "every interval in it is complete"),
    Column("span_ns", pl.Int64(), "ns", "`end - ts`: the time it took from the CPU"),
    Column("source", pl.String(), "", "the hard IRQ's name, or `inline:<softirq>`"),
    Column("disruptive", pl.Boolean(), "", "it began with a hard IRQ"),
))

REQUESTS = Table("requests", "kptrace/requests.py",
                 "request of an epoll server: from a read/recv that returned data on an fd to the last "
                 "send/write answering on that fd, within one epoll_wait iteration", (
    Column("request_id", pl.UInt32(), "", "row number, in time order"),
    Column("tid", pl.Int32(), "", "thread that served it"),
    Column("cpu", pl.Int16(), "", "CPU it started on"),
    Column("ts", pl.Int64(), "ns", f"start, {_TIME}"),
    Column("dur", pl.Int64(), "ns", "service time: start to the end of the last answering send"),
    Column("fd", pl.Int64(), "", "connection fd"),
    Column("bytes_in", pl.Int64(), "bytes", "bytes its receives returned"),
    Column("bytes_out", pl.Int64(), "bytes", "bytes its sends returned"),
    Column("size_class", pl.String(), "", "power-of-two classes of bytes in and out (`2^a/2^b`): requests are "
                                          "compared within a class"),
    Column("syscall_ns", pl.Int64(), "ns", "time in the thread's syscalls inside it"),
    Column("hardirq_ns", pl.Int64(), "ns", "time in hard IRQs on its CPU inside it"),
    Column("softirq_ns", pl.Int64(), "ns", "time in softirqs on its CPU inside it"),
    Column("n_irq", pl.UInt32(), "count", "hard IRQs on its CPU inside it"),
    Column("disruption_ns", pl.Int64(), "ns", "time of the disruptions that began inside it"),
    Column("own_ns", pl.Int64(), "ns", "`dur` less disruptions and off-CPU time: the request's own work"),
    Column("offcpu_ns", pl.Int64(), "ns", "time its thread was switched out"),
    Column("n_offcpu", pl.UInt32(), "count", "times its thread was switched out"),
    Column("migrated", pl.Boolean(), "", "its thread came back on another CPU"),
    Column("sources", pl.List(pl.String()), "", "sources of the disruptions that began inside it, sorted"),
    Column("disrupted", pl.Boolean(), "", "at least one disruption began inside it"),
    Column("irq_interval_ids", pl.List(pl.UInt32()), "", "`intervals.id` of its hard IRQs (timeline flows)"),
))

REQUEST_HITS = Table("request_hits", "kptrace/requests.py", "(request, disruption that began inside it)", (
    Column("request_id", pl.UInt32(), "", "`requests.request_id`"),
    Column("disruption_id", pl.UInt32(), "", "`disruptions.disruption_id`"),
    Column("source", pl.String(), "", "the disruption's source"),
    Column("span_ns", pl.Int64(), "ns", "the part of the disruption inside the request"),
))

REQUEST_COUNTERS = Table("request_counters", "kptrace/requests.py",
                         "(request, counter), where perf read counters at epoll_wait returns", (
    Column("request_id", pl.UInt32(), "", "`requests.request_id`"),
    Column("cpu", pl.Int16(), "", "CPU the counters were read on"),
    Column("iteration_ts", pl.Int64(), "ns", "the counter read that closed the epoll loop iteration the request "
                                             "ended in"),
    Column("counter", pl.String(), "", "perf event name (`cycles`, `instructions`, `task-clock`, ...)"),
    Column("iteration_delta", pl.Int64(), "counter units", "the counter's delta over that iteration"),
    Column("iteration_requests", pl.UInt32(), "count", "requests sharing that delta"),
))

ATTRIBUTION = Table("attribution", "kptrace/attribute.py", "(cpu, interrupt source), costliest first", (
    Column("cpu", pl.Int16(), "", "CPU the source's disruptions ran on"),
    Column("source", pl.String(), "", "hard IRQ handler or APIC vector"),
    Column("count", pl.UInt32(), "interrupts", "complete disruptions of this source on this CPU"),
    Column("rate_per_s", pl.Float64(), "interrupts/s", "`count` per second of trace"),
    Column("direct_per_irq_ns", pl.Float64(), "ns/interrupt",
           "mean span: hard IRQ entry to the end of the softirqs it ran", ci="direct_ci_ns"),
    _ci("direct_ci_ns", "direct_per_irq_ns", "ns/interrupt", "measured"),
    Column("indirect_per_irq_ns", pl.Float64(), "ns/interrupt",
           "extra own time of requests hit once by this source, against clean requests of the same size class, "
           "CPU and thread", "estimated", ci="indirect_ci_ns"),
    _ci("indirect_ci_ns", "indirect_per_irq_ns", "ns/interrupt", "estimated"),
    Column("indirect_significant", pl.Boolean(), "", "the indirect estimate's 95% interval excludes 0",
           "estimated"),
    Column("n_hit_requests", pl.UInt32(), "requests", "requests hit once by this source that the comparison used"),
    Column("n_clean_requests", pl.UInt32(), "requests", "clean requests the comparison used"),
    Column("cost_per_irq_ns", pl.Float64(), "ns/interrupt", "direct + indirect", "estimated"),
    Column("share_of_cpu", pl.Float64(), "fraction", "rate x (direct + indirect): fraction of the CPU's time",
           "estimated", ci="share_of_cpu_ci"),
    _ci("share_of_cpu_ci", "share_of_cpu", "fraction", "estimated"),
    Column("busy_share", pl.Float64(), "fraction",
           "fraction of the serving window (first to last request on that CPU) the CPU was busy; IRQs taken "
           "while idle count as busy"),
    Column("capacity_loss", pl.Float64(), "fraction",
           "the source's direct + indirect time in the serving window over the CPU's busy time: the throughput "
           "it costs while that CPU is the bottleneck", "modelled", ci="capacity_loss_ci"),
    _ci("capacity_loss_ci", "capacity_loss", "fraction", "modelled"),
    Column("direct_provenance", pl.String(), "", "how the direct cost was obtained, in words"),
    Column("indirect_provenance", pl.String(), "", "how the indirect cost was obtained, or why it was not",
           "estimated"),
))

IPC = Table("ipc", "kptrace/attribute.py",
            "(cpu, group) of epoll loop iterations that served requests: `clean`, `disrupted`, `all`; "
            "written only with hardware counters", (
    Column("cpu", pl.Int16(), "", "CPU the iterations ran on"),
    Column("group", pl.String(), "", "`clean`, `disrupted` (any of its requests was) or `all`"),
    Column("iterations", pl.UInt32(), "count", "epoll loop iterations"),
    Column("requests", pl.UInt32(), "requests", "requests they served"),
    Column("instructions", pl.Int64(), "instructions", "retired instructions, summed"),
    Column("cycles", pl.Int64(), "cycles", "CPU cycles, summed"),
    Column("ipc", pl.Float64(), "instructions/cycle", "instructions / cycles"),
    Column("ipq", pl.Float64(), "instructions/request", "instructions / requests"),
    Column("gain_at_clean_ipc", pl.Float64(), "fraction",
           "`all` only: throughput gained if every iteration ran at the clean IPC with the same IPQ "
           "(QPS = cores x clock x IPC / IPQ)", "modelled"),
))

EVENTS = Table("events", "kptrace/schema.py", "trace event (`docs/schema.md`)", EVENT_COLUMNS)

TABLES: dict[str, Table] = {t.name: t for t in (EVENTS, INTERVALS, DISRUPTIONS, REQUESTS, REQUEST_HITS,
                                                 REQUEST_COUNTERS, ATTRIBUTION, IPC)}


def columns(table: str) -> tuple[Column, ...]:
    """The declared columns of `table`, in order."""
    return TABLES[table].columns


def column(table: str, name: str) -> Column:
    """One declared column; a KeyError names the table when it has no such column."""
    for declared in columns(table):
        if declared.name == name:
            return declared
    raise KeyError(f"table {table} declares no column {name}")


def polars_schema(table: str) -> dict[str, pl.DataType]:
    """{column: dtype} in order, for stage modules to build and cast their output with."""
    return {c.name: c.dtype for c in columns(table)}


DOC_HEAD = """# The tables `kptrace analyze` writes

Each table is one Parquet file (zstd) in the output directory. All times are int64 nanoseconds
on the trace clock (`meta.json` says which clock and the resolution the input had: tracefs text
and `trace-cmd report` print microseconds). Column names follow Perfetto's (`ts`, `dur`, `cpu`,
`tid`). Provenance: **measured** — read off the trace; **estimated** — a statistic over measured
rows, with a 95% interval (the column named in its meaning); **modelled** — a figure that
assumes a model, named in its meaning.

Generated from `kptrace/tables.py` (`python -m kptrace.tables > docs/tables.md`); a test keeps
the two equal, and another checks that `analyze` writes exactly these columns and types.

## events.parquet (`kptrace/schema.py`)
The typed event table: `docs/schema.md`.
"""

DOC_TAIL = """
## summary.json, report.html, timeline.perfetto-trace.gz
The printed summary as JSON (its `units` and `provenance` are taken from the declarations
above), the offline report (`docs/report-screenshot.png`), and the Perfetto timeline
(`docs/timeline.md`).
"""


def table_markdown(table: Table) -> str:
    """One table's section of docs/tables.md."""
    rows = [f"## {table.name}.parquet (`{table.module}`)", f"One row per {table.row}.", "",
            "| column | type | unit | provenance | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{c.name}` | {c.dtype} | {c.unit} | {c.provenance} | {c.meaning} |" for c in table.columns]
    return "\n".join(rows) + "\n"


def tables_markdown() -> str:
    """The whole of docs/tables.md."""
    body = "\n".join(table_markdown(t) for name, t in TABLES.items() if name != "events")
    return DOC_HEAD + "\n" + body + DOC_TAIL


if __name__ == "__main__":
    print(tables_markdown(), end="")
