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
    #: Columns kptrace/faults.py appends after the stage has built the table (written, not built).
    marks: tuple[Column, ...] = ()


def _ci(name: str, of: str, unit: str, provenance: str, how: str = "") -> Column:
    return Column(name, pl.Float64(), unit, f"95% interval half-width of `{of}`{how}", provenance)


def _bounds(of: str, unit: str, provenance: str, how: str = "", names: tuple[str, str] = ()) -> tuple[Column, Column]:
    """The two columns holding a figure's 95% lower and upper bounds (`<of>_lo`, `<of>_hi` unless named)."""
    lo, hi = names or (f"{of}_lo", f"{of}_hi")
    return (Column(lo, pl.Float64(), unit, f"95% lower bound of `{of}`{how}", provenance),
            Column(hi, pl.Float64(), unit, f"95% upper bound of `{of}`{how}", provenance))


#: The words a figure without an interval column uses to say so, and why (a test holds them to it).
NO_INTERVAL = "no 95% interval column"

_TIME = "on the trace clock (`meta.json`: clock and resolution)"

INTERVALS = Table("intervals", "kptrace/intervals.py", "interval of one CPU, numbered in (ts, depth, seq, end_seq) order", (
    Column("id", pl.UInt32(), "", "row number; requests, disruptions and the timeline cite intervals by it"),
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
    Column("seq", pl.UInt32(), "", "row of `events.parquet` (the order of record) holding the event that opened "
                                   "it: what orders events at one instant"),
    Column("end_seq", pl.UInt32(), "", "row of the event that closed it; null when incomplete (a NAPI poll: its "
                                       "`napi_poll` event, as `seq`)"),
    Column("raise_ts", pl.Int64(), "ns", "softirqs: the `softirq_raise` credited with this run (the first of its "
                                         "vector on its CPU since that vector's previous run there began); null "
                                         "when none was traced"),
    Column("raised_in", pl.UInt32(), "", "softirqs: `id` of the hard IRQ, else softirq, that enclosed that raise; "
                                         "null when raised in task context or not traced"),
))

DISRUPTIONS = Table("disruptions", "kptrace/requests.py",
                    "hard IRQ with the softirq runs charged to it (those it raised, directly or through a softirq "
                    "it raised), or inline chain of softirq runs raised in task context (`inline:<softirq>`, "
                    "not a disruption); a run with no traced raise joins the interrupt it ran straight after "
                    "(within 2 µs)", (
    Column("disruption_id", pl.UInt32(), "", "row number, in `interval_id` order"),
    Column("interval_id", pl.UInt32(), "", "`intervals.id` of its first interval: the hard IRQ, or an inline "
                                           "chain's first softirq run"),
    Column("cpu", pl.Int16(), "", "CPU it ran on"),
    Column("ts", pl.Int64(), "ns", f"start of its first interval, {_TIME}"),
    Column("end", pl.Int64(), "ns", "end of its last member; members may lie apart, so `end - ts` may exceed "
                                    "`span_ns`"),
    Column("span_ns", pl.Int64(), "ns", "time charged to it: its members' own time (a softirq less the hard IRQs "
                                        "nested in it) plus the untraced gap before each softirq that followed "
                                        "other interrupt work within 2 µs"),
    Column("source", pl.String(), "", "the hard IRQ's name, or `inline:<softirq>`"),
    Column("hardirq_ns", pl.Int64(), "ns", "own time of its hard IRQ"),
    Column("softirq_ns", pl.Int64(), "ns", "own time of its softirq runs"),
    Column("n_softirq", pl.UInt32(), "count", "softirq runs charged to it"),
    Column("complete", pl.Boolean(), "", "every interval in it is complete"),
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
    Column("hardirq_ns", pl.Int64(), "ns", "own time of the hard IRQs that interrupted its thread inside it "
                                           "(wherever the thread ran)"),
    Column("softirq_ns", pl.Int64(), "ns", "own time of the softirq runs on its thread inside it, whoever raised them"),
    Column("n_irq", pl.UInt32(), "count", "hard IRQs that interrupted its thread inside it"),
    Column("disruption_ns", pl.Int64(), "ns", "time charged to disruptions, for their work inside it"),
    Column("own_ns", pl.Int64(), "ns", "`dur` less `disruption_ns` and off-CPU time: the request's own work "
                                       "(softirq work its thread raised counts here)"),
    Column("offcpu_ns", pl.Int64(), "ns", "time its thread was switched out"),
    Column("n_offcpu", pl.UInt32(), "count", "times its thread was switched out"),
    Column("migrated", pl.Boolean(), "", "its thread came back on another CPU"),
    Column("sources", pl.List(pl.String()), "", "source of each disruption with work inside it, sorted"),
    Column("disrupted", pl.Boolean(), "", "a disruption's work ran inside it"),
    Column("irq_interval_ids", pl.List(pl.UInt32()), "", "`intervals.id` of the hard IRQs inside it (timeline flows)"),
), marks=(
    Column("damaged", pl.Boolean(), "", "it overlaps a `damaged_windows` row (on its CPU, any CPU when it migrated, "
                                        "and its thread): its figures may be wrong"),
    Column("fault_kinds", pl.List(pl.String()), "", "the `kind` of each damaged window it overlaps, sorted; empty "
                                                    "when clean"),
))

REQUEST_HITS = Table("request_hits", "kptrace/requests.py", "(request, disruption with work inside it)", (
    Column("request_id", pl.UInt32(), "", "`requests.request_id`"),
    Column("disruption_id", pl.UInt32(), "", "`disruptions.disruption_id`"),
    Column("source", pl.String(), "", "the disruption's source"),
    Column("span_ns", pl.Int64(), "ns", "the disruption's charged time for its work inside the request"),
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

_INDIRECT_BOUNDS = ("indirect_lo_ns", "indirect_hi_ns")

ATTRIBUTION = Table("attribution", "kptrace/attribute.py", "(cpu, interrupt source), costliest first", (
    Column("cpu", pl.Int16(), "", "CPU the source's disruptions ran on"),
    Column("source", pl.String(), "", "hard IRQ handler or APIC vector"),
    Column("count", pl.UInt32(), "interrupts", "complete disruptions of this source on this CPU"),
    Column("rate_per_s", pl.Float64(), "interrupts/s", "`count` per second of trace"),
    Column("direct_per_irq_ns", pl.Float64(), "ns/interrupt",
           "mean time charged to one of its disruptions (`disruptions.span_ns`): the hard IRQ and the softirqs "
           "it raised", ci="direct_ci_ns"),
    _ci("direct_ci_ns", "direct_per_irq_ns", "ns/interrupt", "measured", " (1.96 standard errors of the mean)"),
    Column("indirect_per_irq_ns", pl.Float64(), "ns/interrupt",
           "extra own time of a request hit once by this source: its own time less the length-weighted mean "
           "own time (E[x²]/E[x]) of clean requests of the same CPU, thread and size class, outliers set aside",
           "estimated", ci="indirect_ci_ns", bounds=_INDIRECT_BOUNDS),
    _ci("indirect_ci_ns", "indirect_per_irq_ns", "ns/interrupt", "estimated", " (half the distance between its bounds)"),
    *_bounds("indirect_per_irq_ns", "ns/interrupt", "estimated", " (percentile bootstrap)", _INDIRECT_BOUNDS),
    Column("indirect_significant", pl.Boolean(), "",
           "the indirect estimate's 95% interval excludes 0; when false it is shown as n.s. with its bounds and "
           "counted as 0 in `cost_per_irq_ns`, `share_of_cpu` and `capacity_loss`", "estimated"),
    Column("n_hit_requests", pl.UInt32(), "requests", "requests hit once by this source that the comparison used"),
    Column("n_clean_requests", pl.UInt32(), "requests", "clean requests the comparison used"),
    Column("n_outlier_requests", pl.UInt32(), "requests",
           "requests hit once by this source set aside as outliers, own time far beyond their group's typical "
           "one (`kptrace.attribute.outlier_requests` lists them, with where their time went)"),
    Column("cost_per_irq_ns", pl.Float64(), "ns/interrupt",
           f"direct + indirect when significant, else direct alone; {NO_INTERVAL}: its 95% half-width is "
           "`share_of_cpu_ci` / `rate_per_s`", "estimated"),
    Column("share_of_cpu", pl.Float64(), "fraction", "rate x `cost_per_irq_ns`: fraction of the CPU's time",
           "estimated", ci="share_of_cpu_ci"),
    _ci("share_of_cpu_ci", "share_of_cpu", "fraction", "estimated"),
    Column("busy_share", pl.Float64(), "fraction",
           "fraction of the serving window (first to last request on that CPU) the CPU was busy; IRQs taken "
           "while idle count as busy"),
    Column("capacity_loss", pl.Float64(), "fraction",
           "the source's direct time in the serving window plus its significant indirect cost for each of its "
           "interrupts that hit a request, over the CPU's busy time: the throughput it costs while that CPU is "
           "the bottleneck", "modelled", ci="capacity_loss_ci"),
    _ci("capacity_loss_ci", "capacity_loss", "fraction", "modelled",
        " (the indirect estimate's uncertainty, from the counted value to the farther end of its interval: "
        "the window's direct time is a measured sum)"),
    Column("direct_provenance", pl.String(), "", "`direct_per_irq_ns`'s provenance and meaning as declared here, "
                                                 "in words, for readers of this file alone"),
    Column("indirect_provenance", pl.String(), "",
           "`indirect_per_irq_ns`'s provenance and meaning as declared here, or why there is no estimate",
           "estimated"),
), marks=(
    Column("damaged_windows", pl.UInt32(), "windows", "`damaged_windows` rows on this CPU (or on every CPU): its "
                                                      "figures rest partly on a damaged trace when not 0"),
    Column("damaged_ns", pl.Int64(), "ns", "time of the trace those windows cover on this CPU (their union)"),
))

DAMAGED_WINDOWS = Table("damaged_windows", "kptrace/faults.py",
                        "window of the trace that a fault makes untrustworthy (`kptrace/faults.py` says how each "
                        "kind is found), ordered by (start_ns, end_ns, cpu, tid, kind)", (
    Column("cpu", pl.Int16(), "", "CPU the window lies on; null: every CPU"),
    Column("tid", pl.Int32(), "", "the one task it concerns (`pid_reuse`); null: every task"),
    Column("start_ns", pl.Int64(), "ns", f"start, {_TIME}"),
    Column("end_ns", pl.Int64(), "ns", "end (inclusive; a window may be a single instant)"),
    Column("kind", pl.String(), "", "`lost_events`, `cpu_without_events`, `buffer_wrapped`, `interrupt_without_exit`, "
                                    "`clock_order`, `pid_reuse`, `counter_wrap` or `counters_missing`"),
    Column("detail", pl.String(), "", "what was found, in words (merged `clock_order` windows: how many cases, "
                                      "and the first)"),
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
           f"(QPS = cores x clock x IPC / IPQ); {NO_INTERVAL}: no bootstrap over iterations yet", "modelled"),
))


def _predicted(name: str, unit: str, meaning: str) -> tuple[Column, ...]:
    """A what-if figure (modelled) and its 95% bounds (bootstrap over requests and interrupts)."""
    return (Column(name, pl.Float64(), unit, meaning, "modelled", bounds=(f"{name}_lo", f"{name}_hi")),
            *_bounds(name, unit, "modelled", " (bootstrap over requests and interrupts)"))


WHATIF = Table("whatif", "kptrace/whatif/predict.py",
               "(epoll server, policy): a replay of the server's cores under the policy (`docs/whatif.md`)", (
    Column("server", pl.String(), "", "the server's process or thread name (`kptrace.whatif.servers`)"),
    Column("tids", pl.List(pl.Int32()), "", "its threads that served requests"),
    Column("policy", pl.String(), "", "`vanilla` (the calibration), `move-irqs`, `remove`, `coalesce`, ..."),
    Column("params", pl.String(), "", "the policy's parameters, as JSON"),
    *_predicted("capacity_rps", "requests/s", "requests per busy second of the serving cores"),
    *_predicted("throughput_rps", "requests/s", "throughput with the serving cores saturated"),
    *_predicted("p50_us", "µs", "median request time at the recorded offered load"),
    *_predicted("p99_us", "µs", "99th percentile request time at the recorded offered load"),
    *_predicted("cpu_util", "fraction", "busy fraction of the serving cores at the recorded load"),
    *_predicted("irq_per_s", "interrupts/s", "interrupts the serving cores take per second, summed over them"),
    *_predicted("capacity_ratio", "ratio", "`capacity_rps` over vanilla's (both from the same resamples)"),
    *_predicted("throughput_ratio", "ratio", "`throughput_rps` over vanilla's (both from the same resamples)"),
    *_predicted("p99_ratio", "ratio", "`p99_us` over vanilla's (both from the same resamples)"),
))

EVENTS = Table("events", "kptrace/schema.py", "trace event (`docs/schema.md`)", EVENT_COLUMNS)

TABLES: dict[str, Table] = {t.name: t for t in (EVENTS, INTERVALS, DISRUPTIONS, REQUESTS, REQUEST_HITS,
                                                 REQUEST_COUNTERS, ATTRIBUTION, IPC, WHATIF, DAMAGED_WINDOWS)}


def columns(table: str) -> tuple[Column, ...]:
    """The declared columns of `table` as written, in order: the stage's, then the fault marks."""
    return TABLES[table].columns + TABLES[table].marks


def column(table: str, name: str) -> Column:
    """One declared column; a KeyError names the table when it has no such column."""
    for declared in columns(table):
        if declared.name == name:
            return declared
    raise KeyError(f"table {table} declares no column {name}")


def polars_schema(table: str) -> dict[str, pl.DataType]:
    """{column: dtype} in order, for stage modules to build and cast their output with (without
    the fault marks, which kptrace/faults.py adds after them)."""
    return {c.name: c.dtype for c in TABLES[table].columns}


def written_schema(table: str) -> dict[str, pl.DataType]:
    """{column: dtype} of the file `analyze` writes: the stage's columns, then the fault marks."""
    return {c.name: c.dtype for c in columns(table)}


def in_words(table: str, name: str) -> str:
    """`<provenance>: <meaning>` of one column: the declaration as a sentence, for a row that must
    carry it (attribution's *_provenance columns)."""
    declared = column(table, name)
    return f"{declared.provenance}: {declared.meaning}"


DOC_HEAD = """# The tables `kptrace analyze` writes

Each table is one Parquet file (zstd) in the output directory. All times are int64 nanoseconds
on the trace clock (`meta.json` says which clock and the resolution the input had: tracefs text
and `trace-cmd report` print microseconds). Column names follow Perfetto's (`ts`, `dur`, `cpu`,
`tid`). Provenance: **measured** — read off the trace; **estimated** — a statistic over measured
rows; **modelled** — a figure that assumes a model, named in its meaning. Every estimated or
modelled figure comes with its 95% interval: a half-width column and/or lower and upper bound
columns, each naming the figure in its meaning, or a meaning that says why there is none.

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
    rows += [f"| `{c.name}` | {c.dtype} | {c.unit} | {c.provenance} | {c.meaning} |"
             for c in table.columns + table.marks]
    return "\n".join(rows) + "\n"


def tables_markdown() -> str:
    """The whole of docs/tables.md."""
    body = "\n".join(table_markdown(t) for name, t in TABLES.items() if name != "events")
    return DOC_HEAD + "\n" + body + DOC_TAIL



# --------------------------------------------------------------------------- kptrace fleet (OUT/fleet/)
# Kept apart from TABLES, which lists exactly what `kptrace analyze` writes for one input.

#: Who each row of a fleet table comes from: read off the bundle's manifest and machine snapshot.
FLEET_KEYS = (
    Column("input", pl.String(), "", "the input's name: its output folder under OUT, unique within the run"),
    Column("host", pl.String(), "", "host name from the bundle's manifest; `unknown` for a plain trace file"),
    Column("kernel", pl.String(), "", "kernel release from the bundle's manifest; `unknown` for a plain trace file"),
    Column("cpu_model", pl.String(), "", "`model name` from the bundle's `machine/cpuinfo.txt`; `unknown` when absent"),
    Column("nic", pl.String(), "", "network devices that have a driver, `name (driver)` comma-separated, from the "
                                   "bundle's `machine/net-devices.txt`; `unknown` when absent"),
)

_OVERVIEW = f"`requests.parquet` of the input, as `summary.json` (`requests.by_disrupted`) holds it"


def _fleet_of(table: Table) -> Table:
    """A per-input table gathered across the fleet: the input's keys, then the table's own columns."""
    return Table(f"fleet/{table.name}", "kptrace/fleet/tables.py",
                 f"input and row of its `{table.name}.parquet`", (*FLEET_KEYS, *columns(table.name)))


FLEET_REQUESTS = Table("fleet/requests", "kptrace/fleet/tables.py",
                       "(input, clean or disrupted group of its requests)", (
    *FLEET_KEYS,
    Column("disrupted", pl.Boolean(), "", "a disruption's work ran inside these requests (`requests.disrupted`)"),
    Column("requests", pl.UInt32(), "requests", f"requests in the group, from {_OVERVIEW}"),
    Column("median_us", pl.Float64(), "µs", "median service time (`requests.dur`) of the group"),
    Column("p99_us", pl.Float64(), "µs", "99th percentile service time of the group"),
    Column("own_median_us", pl.Float64(), "µs", "median own time (`requests.own_ns`) of the group"),
))

FLEET_INPUTS = Table("fleet/inputs", "kptrace/fleet/tables.py", "input given to `kptrace fleet`", (
    *FLEET_KEYS,
    Column("path", pl.String(), "", "the input's path as the workers read it"),
    Column("status", pl.String(), "", "`ok`, or `failed` (then `error` says why and the figures are null)"),
    Column("error", pl.String(), "", "the one-line error of a failed input; null when ok"),
    Column("events", pl.Int64(), "events", "events read from the input"),
    Column("duration_s", pl.Float64(), "s", "length of the trace"),
    Column("worst_cpu", pl.Int16(), "", "the CPU whose interrupt sources took the largest summed `capacity_loss`"),
    Column("capacity_loss", pl.Float64(), "fraction",
           "sum of `attribution.capacity_loss` over the sources of `worst_cpu` (each a fraction of that CPU's busy "
           "time): the throughput interrupts cost the input while that CPU is its bottleneck", "modelled",
           ci="capacity_loss_ci"),
    _ci("capacity_loss_ci", "capacity_loss", "fraction", "modelled",
        " (the sum of the sources' half-widths: an upper bound, as if their errors all went one way)"),
    Column("top_source", pl.String(), "", "the source of `worst_cpu` with the largest `capacity_loss`"),
))

FLEET_TABLES: dict[str, Table] = {t.name: t for t in (_fleet_of(ATTRIBUTION), FLEET_REQUESTS, _fleet_of(WHATIF),
                                                       FLEET_INPUTS)}

FLEET_DOC_HEAD = """
# The tables `kptrace fleet` writes

`kptrace fleet INPUT... -o OUT` writes each input's own tables (above) into `OUT/<input>/` and
gathers them across inputs into `OUT/fleet/` (`docs/fleet.md`). Every fleet table starts with
the input's keys: {keys}.
"""


def fleet_table_markdown(table: Table) -> str:
    """One fleet table's section: a gathered table names its per-input table rather than repeat it."""
    own = table.columns[len(FLEET_KEYS):]
    source = table.name.removeprefix("fleet/")
    if source in TABLES and own == columns(source):
        return (f"## {table.name}.parquet (`{table.module}`)\nOne row per {table.row}: the keys, then every "
                f"column of `{source}.parquet` above, same types, units and provenance.\n")
    return table_markdown(Table(table.name, table.module, table.row, own))


def fleet_tables_markdown() -> str:
    """The fleet part of docs/tables.md."""
    keys = ", ".join(f"`{c.name}` ({c.meaning})" for c in FLEET_KEYS)
    return FLEET_DOC_HEAD.format(keys=keys) + "\n" + "\n".join(fleet_table_markdown(t) for t in FLEET_TABLES.values())


DOC_TAIL += fleet_tables_markdown()


if __name__ == "__main__":
    print(tables_markdown(), end="")
