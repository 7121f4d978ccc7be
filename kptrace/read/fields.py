"""Type the payloads of the events kptrace analyses, whichever tool printed them.

tracefs, trace-cmd (plain, plugin-rewritten, `-R` raw) and perf print the same tracepoint in
slightly different words; each extractor here accepts every variant and yields the same typed
columns, so the three readers agree row for row. Every extractor runs only on its own events.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from kptrace.schema import SOFTIRQ_NAMES

_NUM = r"(0x[0-9a-fA-F]+|-?\d+)"

#: x86 APIC vectors that have irq_vectors:<name>_entry/_exit tracepoints.
VECTOR_HANDLERS = (
    "local_timer", "spurious_apic", "error_apic", "x86_platform_ipi", "irq_work", "reschedule",
    "call_function", "call_function_single", "threshold_apic", "deferred_error_apic",
    "thermal_apic",
)

_SUBSYSTEM_OF = {
    **{f"{v}_{edge}": "irq_vectors" for v in VECTOR_HANDLERS for edge in ("entry", "exit")},
    **{e: "irq" for e in ("irq_handler_entry", "irq_handler_exit", "softirq_raise", "softirq_entry", "softirq_exit")},
    "napi_poll": "napi",
    **{e: "net" for e in ("netif_receive_skb", "netif_rx", "net_dev_xmit", "net_dev_queue", "napi_gro_receive_entry")},
    **{e: "sched" for e in ("sched_switch", "sched_wakeup", "sched_waking", "sched_wakeup_new", "sched_migrate_task")},
    **{e: "ipi" for e in ("ipi_raise", "ipi_entry", "ipi_exit", "ipi_send_cpu", "ipi_send_cpumask")},
}

#: Task state bits as the kernel reports them in sched_switch's prev_state (TASK_REPORT).
_STATE_BITS = ("S", "D", "T", "t", "X", "Z", "P", "I")
_PREEMPTED_STATE = 1 << len(_STATE_BITS)
#: trace-cmd's sched_switch plugin names the same bits with an older table ("SDTtZXxW"), and
#: prints a preempted task as plain `R` (tracefs: `R+`): translate its letters bit by bit.
_PLUGIN_STATE_LETTERS = dict(zip("SDTtZXxW", _STATE_BITS))


def subsystem_expr() -> pl.Expr:
    """Subsystem for formats that do not print it (tracefs, trace-cmd): known events by name."""
    return (
        pl.when(pl.col("subsystem").is_not_null()).then(pl.col("subsystem"))
        .when(pl.col("event").str.starts_with("sys_e")).then(pl.lit("syscalls"))
        .otherwise(pl.col("event").replace_strict(_SUBSYSTEM_OF, default="unknown"))
    )


def _integer(text: pl.Expr) -> pl.Expr:
    """`0x1f` (as unsigned 64-bit, then two's complement, as the kernel printed a long) or `31`."""
    hexadecimal = (
        text.str.strip_prefix("0x").str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        .reinterpret(signed=True)
    )
    return pl.when(text.str.starts_with("0x")).then(hexadecimal).otherwise(text.str.to_integer(strict=False))


def _field(pattern: str) -> pl.Expr:
    return pl.col("payload").str.extract(pattern)


#: Set by an extractor on a row whose payload prints a number too large for its typed column.
OUT_OF_RANGE = "out_of_range"


def _numbers(f: pl.LazyFrame, parse: Callable[[pl.Expr], pl.Expr] | None = None, **texts: tuple[pl.Expr, type]
             ) -> pl.LazyFrame:
    """Type number texts (`name=(text, dtype)`); a number that does not fit (a damaged or forged
    line, `vec=10^22`) leaves its column null and sets `OUT_OF_RANGE`, never raises."""
    typed = {name: (parse(text) if parse else text).cast(dtype, strict=False) for name, (text, dtype) in texts.items()}
    bad = pl.any_horizontal([text.is_not_null() & typed[name].is_null() for name, (text, _) in texts.items()])
    return f.with_columns(**typed, **{OUT_OF_RANGE: bad})


def _irq_entry(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f.with_columns(irq_name=_field(r"name=(.*)$")), irq=(_field(r"irq=(\d+)"), pl.Int32))


def _irq_exit(f: pl.LazyFrame) -> pl.LazyFrame:
    ret = _field(r"ret=(\w+)")
    return _numbers(f, irq=(_field(r"irq=(\d+)"), pl.Int32)).with_columns(
        ret=pl.when(ret == "handled").then(1).when(ret == "unhandled").then(0)
        .otherwise(ret.str.to_integer(strict=False)),
    )


def _vector(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f, vector=(_field(r"vector=(\d+)"), pl.Int32))


def _softirq(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f, softirq_vec=(_field(r"vec=(\d+)"), pl.Int8)).with_columns(
        softirq=pl.col("softirq_vec").cast(pl.Int64).replace_strict(
            dict(enumerate(SOFTIRQ_NAMES)), default=None, return_dtype=pl.String),
    )


def _napi(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f.with_columns(dev=_field(r"(?:for device |dev_name=)(\S+)")),
                    napi_work=(_field(r"work[ =](\d+)"), pl.Int32),
                    napi_budget=(_field(r"budget[ =](\d+)"), pl.Int32))


def _net(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f.with_columns(dev=_field(r"(?:^|\s)(?:dev|name)=(\S+)")), len=(_field(r"\blen=(\d+)"), pl.Int32))


def state_letters(number: pl.Expr) -> pl.Expr:
    """Numeric prev_state (a binary record, trace-cmd -R) as the letters tracefs prints."""
    letters = pl.concat_str(
        [pl.when((number & (1 << i)) != 0).then(pl.lit(letter)) for i, letter in enumerate(_STATE_BITS)],
        separator="|", ignore_nulls=True,
    )
    return pl.when(number == 0).then(pl.lit("R")).when(number == _PREEMPTED_STATE).then(pl.lit("R+")).otherwise(letters)


def _state_letters(state: pl.Expr) -> pl.Expr:
    """prev_state text: numbers become letters (`state_letters`); letters pass through."""
    number = state.str.to_integer(strict=False)
    return pl.when(number.is_null()).then(state).otherwise(state_letters(number))


def _sched_switch(f: pl.LazyFrame) -> pl.LazyFrame:
    named = pl.col("payload").str.extract_groups(
        r"^prev_comm=(?P<prev_comm>.*) prev_pid=(?P<prev_pid>\d+) prev_prio=(?P<prev_prio>\d+) "
        r"prev_state=(?P<prev_state>\S+) (?:==> )?next_comm=(?P<next_comm>.*) next_pid=(?P<next_pid>\d+) "
        r"next_prio=(?P<next_prio>\d+)$"
    )
    plugin = pl.col("payload").str.extract_groups(
        r"^(?P<prev_comm>.*):(?P<prev_pid>\d+) \[(?P<prev_prio>\d+)\] (?P<prev_state>\S+) ==> "
        r"(?P<next_comm>.*):(?P<next_pid>\d+) \[(?P<next_prio>\d+)\]$"
    )
    names = ("prev_comm", "prev_pid", "prev_prio", "prev_state", "next_comm", "next_pid", "next_prio")
    plugin_state = pl.col("plugin").struct.field("prev_state").str.replace_many(_PLUGIN_STATE_LETTERS)
    f = f.with_columns(named=named, plugin=plugin).with_columns(
        [pl.coalesce(pl.col("named").struct.field(n), pl.col("plugin").struct.field(n)).alias(n) for n in names]
    ).with_columns(prev_state=pl.coalesce(pl.col("named").struct.field("prev_state"), plugin_state))
    f = f.drop("named", "plugin").with_columns(prev_state=_state_letters(pl.col("prev_state")))
    return _numbers(f, **{n: (pl.col(n), pl.Int32 if n.endswith("pid") else pl.Int16)
                          for n in ("prev_pid", "next_pid", "prev_prio", "next_prio")})


def _sched_task(f: pl.LazyFrame) -> pl.LazyFrame:
    """sched_wakeup, sched_waking and sched_migrate_task all name one task and a CPU."""
    named = pl.col("payload").str.extract_groups(
        r"^comm=(?P<task_comm>.*) pid=(?P<task_pid>\d+) prio=(?P<task_prio>\d+)(?: success=\d+)?"
        r"(?: target_cpu=(?P<target_cpu>\d+)| orig_cpu=(?P<orig_cpu>\d+) dest_cpu=(?P<dest_cpu>\d+))"
    )
    plugin = pl.col("payload").str.extract_groups(
        r"^(?P<task_comm>.*):(?P<task_pid>\d+) \[(?P<task_prio>\d+)\](?: success=\d+)? CPU:(?P<target_cpu>\d+)"
    )
    f = f.with_columns(named=named, plugin=plugin).with_columns(
        [pl.coalesce(pl.col("named").struct.field(n), pl.col("plugin").struct.field(n)).alias(n)
         for n in ("task_comm", "task_pid", "task_prio", "target_cpu")],
        orig_cpu=pl.col("named").struct.field("orig_cpu"),
        dest_cpu=pl.col("named").struct.field("dest_cpu"),
    )
    return _numbers(f.drop("named", "plugin"), task_pid=(pl.col("task_pid"), pl.Int32),
                    task_prio=(pl.col("task_prio"), pl.Int16),
                    target_cpu=(pl.coalesce("target_cpu", "dest_cpu"), pl.Int16),
                    orig_cpu=(pl.col("orig_cpu"), pl.Int16)).drop("dest_cpu")


def _sys_enter(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f, _integer, fd=(_field(r"(?:^|[\s,])(?:fd|epfd)(?::\s*|=)" + _NUM), pl.Int64),
                    count=(_field(r"\b(?:count|len|size|maxevents|vlen)(?::\s*|=)" + _NUM), pl.Int64))


def _sys_exit(f: pl.LazyFrame) -> pl.LazyFrame:
    return _numbers(f, _integer, ret=(_field(r"(?:^|ret=)" + _NUM + r"\s*$"), pl.Int64))


def _untyped(f: pl.LazyFrame) -> pl.LazyFrame:
    return f.with_columns(fields=pl.col("payload"))


def _no_fields(f: pl.LazyFrame) -> pl.LazyFrame:
    return f


_EXTRACTORS: dict[str, Callable[[pl.LazyFrame], pl.LazyFrame]] = {
    "irq_entry": _irq_entry, "irq_exit": _irq_exit, "vector": _vector, "softirq": _softirq,
    "napi": _napi, "net": _net, "sched_switch": _sched_switch, "sched_task": _sched_task,
    "sys_enter": _sys_enter, "sys_exit": _sys_exit, "marker": _no_fields, "counter": _no_fields,
    "other": _untyped,
}


def _family() -> pl.Expr:
    event = pl.col("event")
    return (
        pl.when(pl.col("subsystem") == "kptrace").then(pl.lit("marker"))
        .when(pl.col("subsystem") == "counter").then(pl.lit("counter"))
        .when(event == "irq_handler_entry").then(pl.lit("irq_entry"))
        .when(event == "irq_handler_exit").then(pl.lit("irq_exit"))
        .when(pl.col("subsystem") == "irq_vectors").then(pl.lit("vector"))
        .when(event.is_in(["softirq_raise", "softirq_entry", "softirq_exit"])).then(pl.lit("softirq"))
        .when(event == "napi_poll").then(pl.lit("napi"))
        .when(event.is_in(["netif_receive_skb", "netif_rx", "net_dev_xmit"])).then(pl.lit("net"))
        .when(event == "sched_switch").then(pl.lit("sched_switch"))
        .when(event.is_in(["sched_wakeup", "sched_waking", "sched_migrate_task"])).then(pl.lit("sched_task"))
        .when(event.str.starts_with("sys_enter_")).then(pl.lit("sys_enter"))
        .when(event.str.starts_with("sys_exit_")).then(pl.lit("sys_exit"))
        .otherwise(pl.lit("other"))
    )


def type_fields(rows: pl.DataFrame) -> pl.DataFrame:
    """Add typed columns to raw event rows, one extractor per family of events; `OUT_OF_RANGE`
    marks rows whose payload holds a number too large for its column (unreadable lines).

    The extractors see only each row's position and payload: splitting and re-joining just
    those (rather than whole rows) is most of what makes this cheap.
    """
    rows = rows.with_columns(subsystem=subsystem_expr()).with_columns(family=_family())
    keyed = rows.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"), "family", "payload")
    parts = [
        _EXTRACTORS[family](part.lazy())
        for (family,), part in keyed.partition_by("family", as_dict=True).items()
    ]
    parts.append(pl.LazyFrame(schema={"row": pl.UInt32, OUT_OF_RANGE: pl.Boolean}))  # the column, always
    typed = pl.concat(parts, how="diagonal_relaxed").sort("row").drop("row", "family", "payload", strict=False)
    typed = typed.with_columns(pl.col(OUT_OF_RANGE).fill_null(False)).collect()
    return rows.drop("family").hstack(typed.get_columns())
