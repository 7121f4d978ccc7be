"""Split trace text into event rows: the line prefix (task, CPU, flags, time) of each format.

The three text formats differ only in the prefix and in how a few payloads are printed; the
payloads themselves are typed in :mod:`kptrace.read.fields`, shared by all three.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

_TIME = r"(?P<sec>\d+)\.(?P<frac>\d{1,9}):\s+"
_FLAGS = r"(?:(?P<flags>[.dDbX][.a-zA-Z][.hHsSzZ][.0-9a-f][.0-9a-f]?)\s+)?"

#: tracefs `trace`/`trace_pipe`: `comm-tid (tgid) [cpu] flags ts: rest`; tgid and flags optional.
TRACEFS_LINE = (
    r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    + _FLAGS + _TIME + r"(?P<rest>.*)$"
)
#: trace-cmd report: an optional `instance: ` prefix, no TGID column, flags only with -l.
TRACE_CMD_LINE = (
    r"^(?:(?P<instance>[\w.-]+): )?\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+"
    + _FLAGS + _TIME + r"(?P<rest>.*)$"
)
#: perf script: `comm tid [cpu] ts: [value] sys:event: payload`; value only on counter samples.
PERF_LINE = (
    r"^\s*(?P<comm>.+?)\s+(?P<tid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+" + _TIME
    + r"(?:(?P<value>\d+)\s+)?(?P<rest>.*)$"
)

FORMAT_LINES = {"tracefs": TRACEFS_LINE, "trace-cmd": TRACE_CMD_LINE, "perf": PERF_LINE}

#: `event: payload` (tracefs, trace-cmd), `sys:event: payload` (perf), and ftrace's own
#: syscall forms `sys_read(fd: 3, ...)` and `sys_read -> 0x46`.
_REST = (
    r"^(?:(?P<subsystem>\w+):(?P<qualified>\w+):\s*|(?P<plain>\w+):\s*"
    r"|sys_(?P<enter>\w+)\((?P<args>.*)\)$|sys_(?P<exit>\w+) -> (?P<retval>\S+)$)(?P<payload>.*)$"
)

#: Markers for data the tracer lost, and for per-CPU buffers that wrapped.
_MARKER = (
    r"^(?:[\w.-]+: )?(?:CPU:(?P<lost_cpu>\d+) \[(?:LOST (?P<lost>\d+) EVENTS"
    r"|(?:(?P<dropped>\d+) )?EVENTS DROPPED)\]|##### CPU (?P<started_cpu>\d+) buffer started ####)\s*$"
)

#: Lines that carry no event and are not an error: headers and trace-cmd's notes.
_IGNORABLE = r"^\s*(?:#.*|cpus=\d+|version = \S+|CPU \d+ is empty|)\s*$"


@dataclass
class SplitLines:
    """Event rows with their raw payload, plus what could not be read."""

    rows: pl.DataFrame
    unparsed_count: int
    unparsed_examples: list[str]


def lines_frame(text: str) -> pl.LazyFrame:
    """One row per line, numbered from 1, split in Rust rather than in Python."""
    return (
        pl.LazyFrame({"line": [text]})
        .select(pl.col("line").str.split("\n"))
        .explode("line")
        .with_row_index("line_no", offset=1)
        .with_columns(pl.col("line").str.strip_suffix("\r"))
    )


def detect_format(text: str, sample_lines: int = 2000) -> str | None:
    """Name the format whose line prefix matches most of the first lines; None when none does."""
    head = text[: 1 << 20].split("\n", sample_lines)[:sample_lines]
    sample = pl.Series("line", head, dtype=pl.String)
    hits = {name: int(sample.str.contains(regex).sum()) for name, regex in FORMAT_LINES.items()}
    best = max(hits.values())
    if best == 0:
        return None
    tied = [name for name, count in hits.items() if count == best]
    # Without flags and TGID columns, tracefs and trace-cmd lines look alike: trace-cmd's
    # `cpus=N` header and its drop markers tell them apart.
    if "trace-cmd" in tied and sample.str.contains(r"^cpus=\d+\s*$|EVENTS DROPPED\]").any():
        return "trace-cmd"
    return tied[0]


def _time_ns(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(
        ts=pl.col("sec").cast(pl.Int64) * 1_000_000_000
        + pl.col("frac").str.pad_end(9, "0").cast(pl.Int64),
        ts_resolution_ns=pl.lit(10, pl.Int64).pow(9 - pl.col("frac").str.len_chars()),
    )


def _flags(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Decode the irq-info column (`d..2.`); null where the line had none."""
    f = pl.col("flags")

    def char(i: int) -> pl.Expr:
        return f.str.slice(i, 1)

    return frame.with_columns(
        irqs_off=char(0).is_in(["d", "D"]),
        bh_off=char(0).is_in(["b", "D"]),
        need_resched=char(1) != ".",
        in_hardirq=char(2).is_in(["h", "H", "Z"]),
        in_softirq=char(2).is_in(["s", "H"]),
        in_nmi=char(2).is_in(["z", "Z"]),
        preempt_depth=char(3).str.replace(".", "0", literal=True).str.to_integer(base=16, strict=False),
    )


def _event_and_payload(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Name every row's event as tracefs names it, whichever format printed it."""
    parts = pl.col("rest").str.extract_groups(_REST)
    frame = frame.with_columns(parts=parts).unnest("parts")
    is_counter = pl.col("value").is_not_null()
    return frame.with_columns(
        event=pl.when(is_counter).then(pl.col("rest").str.extract(r"^(\S+?):(?:\s|$)"))
        .when(pl.col("enter").is_not_null()).then(pl.lit("sys_enter_") + pl.col("enter"))
        .when(pl.col("exit").is_not_null()).then(pl.lit("sys_exit_") + pl.col("exit"))
        .otherwise(pl.coalesce("qualified", "plain")),
        subsystem=pl.when(is_counter).then(pl.lit("counter")).otherwise(pl.col("subsystem")),
        payload=pl.when(is_counter).then(pl.lit(None, pl.String))
        .otherwise(pl.coalesce("args", "retval", "payload")),
        value=pl.col("value").cast(pl.Int64),
    )


def split_lines(text: str, fmt: str) -> SplitLines:
    """Parse every line's prefix; keep lost-event markers as rows, count what is unreadable."""
    lines = lines_frame(text)
    prefix = pl.col("line").str.extract_groups(FORMAT_LINES[fmt])
    marker = pl.col("line").str.extract_groups(_MARKER)
    parsed = (
        lines.with_columns(prefix=prefix, marker=marker)
        .with_columns(
            is_event=pl.col("prefix").struct.field("sec").is_not_null(),
            is_marker=pl.col("marker").struct.field("lost_cpu").is_not_null()
            | pl.col("marker").struct.field("started_cpu").is_not_null(),
        )
        .collect()
    )
    ignorable = parsed["line"].str.contains(_IGNORABLE)
    unparsed = parsed.filter(~pl.col("is_event") & ~pl.col("is_marker") & ~ignorable)

    absent = {"tgid", "flags", "value"} - set(re.compile(FORMAT_LINES[fmt]).groupindex)
    events = (
        parsed.lazy()
        .filter("is_event")
        .select("line_no", pl.col("prefix").struct.unnest())
        .with_columns([pl.lit(None, pl.String).alias(name) for name in sorted(absent)])
    )
    events = _flags(_time_ns(events))
    events = _event_and_payload(events).with_columns(
        tid=pl.col("tid").cast(pl.Int32),
        cpu=pl.col("cpu").cast(pl.Int16),
        tgid=pl.col("tgid").cast(pl.Int32, strict=False),
        comm=pl.col("comm").str.strip_chars(),
    )
    events = events.select(
        "line_no", "ts", "ts_resolution_ns", "cpu", "tid", "tgid", "comm", "subsystem", "event",
        "payload", "value", "irqs_off", "bh_off", "need_resched", "in_hardirq", "in_softirq",
        "in_nmi", "preempt_depth",
    )
    markers = parsed.lazy().filter("is_marker").select(
        "line_no", pl.col("marker").struct.unnest()
    ).select(
        "line_no",
        cpu=pl.coalesce("lost_cpu", "started_cpu").cast(pl.Int16),
        subsystem=pl.lit("kptrace"),
        event=pl.when(pl.col("started_cpu").is_not_null()).then(pl.lit("buffer_started"))
        .otherwise(pl.lit("lost_events")),
        value=pl.coalesce("lost", "dropped").cast(pl.Int64),
    )
    rows = _date_markers(pl.concat([events, markers], how="diagonal_relaxed")).collect()
    return SplitLines(
        rows=rows,
        unparsed_count=unparsed.height,
        unparsed_examples=[f"line {n}: {line[:160]}" for n, line in unparsed.head(3).select("line_no", "line").iter_rows()],
    )


def _date_markers(rows: pl.LazyFrame) -> pl.LazyFrame:
    """A marker stands before the first event its CPU recorded after the gap: take that time."""
    return (
        rows.sort("line_no")
        .with_columns(ts=pl.col("ts").backward_fill().over("cpu"))
        .with_columns(ts=pl.col("ts").forward_fill().over("cpu"))
    )
