"""Split trace text into event rows: the line prefix (task, CPU, flags, time) of each format.

The three text formats differ only in the prefix and in how a few payloads are printed; the
payloads themselves are typed in :mod:`kptrace.read.fields`, shared by all three. The format
regexes below are the reference parser; tracefs text, whose prefix the kernel prints at fixed
columns, is mostly read by a faster path of constant slices that hands every line it does not
take to the regexes (`split_lines`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

_TIME = r"(?P<sec>\d+)\.(?P<frac>\d{1,9}):\s+"
_FLAG_CHARS = r"[.dDbX][.a-zA-Z][.hHsSzZ][.0-9a-f][.0-9a-f]?"
_FLAGS = r"(?:(?P<flags>" + _FLAG_CHARS + r")\s+)?"

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


#: The largest whole second whose nanoseconds fit Int64: a later timestamp cannot be stored.
MAX_SECONDS = (2**63 - 1) // 1_000_000_000 - 1


@dataclass
class SplitLines:
    """Event rows with their raw payload, plus what could not be read.

    Every line is counted once: `lines` = event rows + marker rows + `unparsed_count` +
    `ignored_count` (headers, comments, blank lines), so nothing is lost without a count.
    """

    rows: pl.DataFrame
    unparsed_count: int
    unparsed_examples: list[str]
    lines: int = 0
    ignored_count: int = 0


def lines_frame(text: str, first_line: int = 1) -> pl.LazyFrame:
    """One row per line, numbered from `first_line`, split in Rust rather than in Python.

    Polars' CSV reader, told that a line is one unquoted field (the separator is NUL), hands
    lines back verbatim; it splits several times faster than `str.split`, with a third of the
    memory. Text holding a NUL or a carriage return is split by `str.split` instead: the CSV
    reader would take a NUL for a separator and drop a carriage return before a newline. A
    leading byte-order mark is not part of the first line (the CSV reader drops it; so do we).
    """
    text = text.removeprefix("\ufeff")
    if not text or "\x00" in text or "\r" in text:
        return _split_lines(text, first_line)
    lines = pl.read_csv(text.encode(), has_header=False, separator="\x00", quote_char=None,
                        schema={"line": pl.String}, empty_string_is_null=False)
    return lines.lazy().with_row_index("line_no", offset=first_line)


def _split_lines(text: str, first_line: int) -> pl.LazyFrame:
    """`lines_frame` by `str.split`, for any text (stripping the carriage return of CRLF lines);
    the newline that ends the last line starts no line, as in the CSV reader."""
    return (
        pl.LazyFrame({"line": pl.Series([text.removesuffix("\n")]).str.split("\n").explode()})
        .with_row_index("line_no", offset=first_line)
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


def _seconds_ns(seconds: pl.Expr) -> pl.Expr:
    """Whole seconds (text) as ns; null when the number does not fit Int64 ns (a damaged line)."""
    sec = seconds.cast(pl.Int64, strict=False)
    return pl.when(sec <= MAX_SECONDS).then(sec * 1_000_000_000)


def _time_ns(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(
        ts=_seconds_ns(pl.col("sec")) + pl.col("frac").str.pad_end(9, "0").cast(pl.Int64),
        ts_resolution_ns=pl.lit(10, pl.Int64).pow(9 - pl.col("frac").str.len_chars()),
    )


def _out_of_range(text: pl.Expr, typed: pl.Expr) -> pl.Expr:
    """A number was printed but does not fit its column: the line is damaged, not a null field."""
    return text.is_not_null() & typed.is_null()


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
    # `perf script -F ...,period,...` prints a period before tracepoints too (`1 sys:event:`):
    # only a value before a name that is not `system:event` is a counter reading.
    is_counter = pl.col("value").is_not_null() & pl.col("qualified").is_null()
    return frame.with_columns(
        value=pl.when(is_counter).then(pl.col("value")),
        event=pl.when(is_counter).then(pl.col("rest").str.extract(r"^(\S+?):(?:\s|$)"))
        .when(pl.col("enter").is_not_null()).then(pl.lit("sys_enter_") + pl.col("enter"))
        .when(pl.col("exit").is_not_null()).then(pl.lit("sys_exit_") + pl.col("exit"))
        .otherwise(pl.coalesce("qualified", "plain")),
        subsystem=pl.when(is_counter).then(pl.lit("counter")).otherwise(pl.col("subsystem")),
        payload=pl.when(is_counter).then(pl.lit(None, pl.String))
        .otherwise(pl.coalesce("args", "retval", "payload")),
    )


#: What the regex parser hands on: the prefix and event as text, typed by `_typed`.
_TEXT_COLUMNS = ("line_no", "comm", "tid", "tgid", "cpu", "flags", "sec", "frac", "value",
                 "subsystem", "event", "payload")


def _by_regex(lines: pl.DataFrame, fmt: str) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.DataFrame, int]:
    """The reference parser: the full line regex, then the marker regex on what it rejects.

    Returns event rows (as `_TEXT_COLUMNS`), marker rows, the lines that are neither, and how
    many of the rest are ignorable (headers, comments, blank lines).
    """
    parsed = lines.with_columns(prefix=pl.col("line").str.extract_groups(FORMAT_LINES[fmt])).with_columns(
        is_event=pl.col("prefix").struct.field("sec").is_not_null()
    )
    absent = {"tgid", "flags", "value"} - set(re.compile(FORMAT_LINES[fmt]).groupindex)
    events = (
        parsed.lazy()
        .filter("is_event")
        .select("line_no", pl.col("prefix").struct.unnest())
        .with_columns([pl.lit(None, pl.String).alias(name) for name in sorted(absent)])
    )
    events = _event_and_payload(events).select(_TEXT_COLUMNS)
    others = parsed.filter(~pl.col("is_event")).select(
        "line_no", "line", marker=pl.col("line").str.extract_groups(_MARKER)
    ).with_columns(
        is_marker=pl.col("marker").struct.field("lost_cpu").is_not_null()
        | pl.col("marker").struct.field("started_cpu").is_not_null(),
    )
    cpu, count = pl.coalesce("lost_cpu", "started_cpu"), pl.coalesce("lost", "dropped")
    markers = others.filter("is_marker").select("line", "line_no", pl.col("marker").struct.unnest()).select(
        "line", "line_no",
        cpu=cpu.cast(pl.Int16, strict=False),
        subsystem=pl.lit("kptrace"),
        event=pl.when(pl.col("started_cpu").is_not_null()).then(pl.lit("buffer_started"))
        .otherwise(pl.lit("lost_events")),
        value=count.cast(pl.Int64, strict=False),
        damaged=_out_of_range(cpu, cpu.cast(pl.Int16, strict=False))
        | _out_of_range(count, count.cast(pl.Int64, strict=False)),
    )
    ignorable = others.filter(~pl.col("is_marker")).select(
        "line_no", "line", ignorable=pl.col("line").str.contains(_IGNORABLE))
    unparsed = pl.concat([ignorable.filter(~pl.col("ignorable")).drop("ignorable"),
                          markers.filter("damaged").select("line_no", "line")]).sort("line_no")
    ignored = int(ignorable["ignorable"].sum())
    return events, markers.filter(~pl.col("damaged")).drop("line", "damaged").lazy(), unparsed, ignored


def _find(text: pl.Expr, pattern: str) -> pl.Expr:
    """Byte offset of the first literal match, signed so that offset arithmetic cannot wrap."""
    return text.str.find(pattern, literal=True).cast(pl.Int64)


def _span(text: pl.Expr, start: pl.Expr | int, length: pl.Expr) -> pl.Expr:
    """`text[start:start+length]`; a negative length (a row the checks will reject) gives ''."""
    return text.str.slice(start, length.clip(lower_bound=0))


def _full(text: pl.Expr, pattern: str) -> pl.Expr:
    """Whole-string match of a short regex (anchored, so it stops at the first wrong byte)."""
    return text.str.contains(f"^(?:{pattern})$")


def _padded(chars: str, width: int, align: str) -> str:
    """Regex for a `%-Nd` (align left) or `%Nd` (align right) field: no spaces inside."""
    fills = [(chars + "{%d}" % (width - k), " " * k) for k in range(width)]
    return "(?:" + "|".join(text + pad if align == "left" else pad + text for text, pad in fills) + ")"


@dataclass(frozen=True)
class TracefsLayout:
    """The fixed-width prefix the kernel prints (trace_output.c): `%16s-%-7d `, with
    `record-tgid` then `(%7d) `, `[%03d] `, with `irq-info` the flags, then `%5lu.%06lu: `.

    Everything up to the timestamp sits at known columns, so the fast path reads it with
    constant slices once one anchored regex has checked the columns.
    """

    tgid: bool
    flags: int  # width of the irq-info column: 0 (off), 4 (older kernels) or 5

    @property
    def stamp_start(self) -> int:
        return 25 + 10 * self.tgid + 6 + (self.flags + 1 if self.flags else 0)

    def regex(self) -> str:
        """The columns up to the `sec.usec: ` timestamp. The comm may hold neither `(` nor `[`,
        so that the reference regex cannot split comm and tid anywhere else."""
        comm = r"[\x20-\x27\x29-\x5a\x5c-\x7e]{16}"
        tgid = r"\(" + _padded(r"[\d-]", 7, "right") + r"\) " if self.tgid else ""
        flags = _FLAG_CHARS[: _FLAG_CHARS.rindex("[")] if self.flags == 4 else _FLAG_CHARS.removesuffix("?")
        return ("^" + comm + "-" + _padded(r"\d", 7, "left") + " " + tgid + r"\[\d{3}\] "
                + (flags + " " if self.flags else "") + r" *\d+\.\d{6}: ")


TRACEFS_LAYOUTS = tuple(TracefsLayout(tgid, flags) for tgid in (True, False) for flags in (5, 4, 0))


def tracefs_layout(sample: pl.Series) -> TracefsLayout | None:
    """The layout most sample lines follow, or None when none does (then only the regex reads)."""
    hits = {layout: int(sample.str.contains(layout.regex()).sum()) for layout in TRACEFS_LAYOUTS}
    best = max(hits, key=hits.get)
    return best if hits[best] else None


def _fast_prefix(frame: pl.LazyFrame, layout: TracefsLayout) -> pl.LazyFrame:
    """Typed prefix columns by constant slices, for the lines that follow `layout` exactly.

    A line qualifies when its columns match `layout.regex()` and its comm holds no `: `; it
    then gets exactly what the reference regex gives it. The others are dropped here and read
    by the regex.
    """
    line, c = pl.col("line"), pl.col
    start = layout.stamp_start
    cpu = 25 + 10 * layout.tgid
    # A comm holding `: ` would hide the timestamp's `: ` from `_find`.
    frame = frame.filter(line.str.contains(layout.regex()) & ~line.str.slice(0, 16).str.contains(": ", literal=True))
    frame = frame.with_columns(colon=_find(line, ": "))
    return frame.select(
        "line_no",
        comm=line.str.slice(0, 16).str.strip_chars(),
        tid=line.str.slice(17, 7).str.strip_chars_end().cast(pl.Int32),
        tgid=line.str.slice(26, 7).str.strip_chars_start().cast(pl.Int32, strict=False) if layout.tgid
        else pl.lit(None, pl.Int32),
        cpu=line.str.slice(cpu + 1, 3).cast(pl.Int16),
        flags=line.str.slice(cpu + 6, layout.flags) if layout.flags else pl.lit(None, pl.String),
        ts=_seconds_ns(_span(line, start, c("colon") - start - 7).str.strip_chars_start())
        + _span(line, c("colon") - 6, pl.lit(6)).cast(pl.Int64) * 1000,
        ts_resolution_ns=pl.lit(1000, pl.Int64),
        rest=line.str.slice(c("colon") + 2).str.strip_chars_start(),
    )


def _fast_event(frame: pl.LazyFrame) -> pl.LazyFrame:
    r"""`event: payload`, `sys:event: payload`, `sys_read(args)`, `sys_read -> ret`, by slices.

    Accepts only the unambiguous shapes: an ASCII `\w+` or `\w+:\w+` name ending at the first
    `: `, or ftrace's syscall forms with such a name. The syscall checks look only at rows
    without a name (null elsewhere), so they cost little.
    """
    c = pl.col
    word = "[0-9A-Za-z_]+"
    frame = frame.with_columns(colon=_find(c("rest"), ": ")).with_columns(name=c("rest").str.slice(0, c("colon")))
    frame = frame.with_columns(named=(c("colon").is_not_null() & _full(c("name"), f"{word}(?::{word})?")).fill_null(False))
    frame = frame.with_columns(
        qualifier=_find(c("name"), ":"),
        call=pl.when(~c("named") & c("rest").str.starts_with("sys_")).then(c("rest")),
    )
    call = c("call")
    frame = frame.with_columns(paren=_find(call, "("), space=_find(call, " "))
    frame = frame.with_columns(
        enter=_span(call, 4, c("paren") - 4), exit=_span(call, 4, c("space") - 4), retval=call.str.slice(c("space") + 4)
    ).with_columns(
        is_enter=(c("paren").is_not_null() & call.str.ends_with(")") & _full(c("enter"), word)).fill_null(False),
        is_exit=(
            c("space").is_not_null() & _full(c("exit"), word) & (call.str.slice(c("space"), 4) == " -> ")
            & _full(c("retval"), r"\S+")
        ).fill_null(False),
    )
    return frame.with_columns(
        ok=c("named") | c("is_enter") | c("is_exit"),
        subsystem=pl.when(c("named") & c("qualifier").is_not_null()).then(c("name").str.slice(0, c("qualifier"))),
        event=pl.when("named").then(c("name").str.slice(c("qualifier").fill_null(-1) + 1))
        .when("is_enter").then(pl.lit("sys_enter_") + c("enter"))
        .otherwise(pl.lit("sys_exit_") + c("exit")),
        payload=pl.when("named").then(c("rest").str.slice(c("colon") + 2).str.strip_chars_start())
        .when("is_enter").then(_span(call, c("paren") + 1, call.str.len_chars() - c("paren") - 2))
        .otherwise(c("retval")),
    )


#: Event rows as both parsers hand them on (flags still as text, decoded once for all).
_TYPED_COLUMNS = ("line_no", "ts", "ts_resolution_ns", "cpu", "tid", "tgid", "comm", "subsystem", "event",
                  "payload", "flags", "value")


def _fast_rows(lines: pl.DataFrame, layout: TracefsLayout | None) -> pl.DataFrame:
    """Event rows the fast path reads completely, as `_TYPED_COLUMNS` (no line when no layout)."""
    if layout is None:
        return pl.DataFrame({"line_no": []}, schema={"line_no": pl.UInt32})
    # A timestamp too large for Int64 ns (null ts) is left to the regex, which counts it unreadable.
    rows = _fast_event(_fast_prefix(lines.lazy(), layout)).filter(pl.col("ok") & pl.col("ts").is_not_null())
    return rows.with_columns(value=pl.lit(None, pl.Int64)).select(_TYPED_COLUMNS).collect()


_PREFIX_NUMBERS = {"tid": pl.Int32, "cpu": pl.Int16, "value": pl.Int64}


def _typed(events: pl.LazyFrame) -> pl.LazyFrame:
    """Type the regex parser's text columns; `damaged` marks a prefix number too large for its
    column (a tid past Int32, a time past Int64 ns), which makes the line unreadable."""
    typed = {name: pl.col(name).cast(dtype, strict=False) for name, dtype in _PREFIX_NUMBERS.items()}
    return _time_ns(events).with_columns(
        **typed,
        tgid=pl.col("tgid").cast(pl.Int32, strict=False),
        comm=pl.col("comm").str.strip_chars(),
        damaged=pl.any_horizontal([_out_of_range(pl.col(n), typed[n]) for n in typed])
        | pl.col("ts").is_null(),
    ).select(*_TYPED_COLUMNS, "damaged")


def split_lines(text: str, fmt: str, first_line: int = 1) -> SplitLines:
    """Parse every line's prefix; keep lost-event markers as rows, count what is unreadable.
    Lines are numbered from `first_line` (a later chunk of a file).

    In tracefs text, most lines take the fast path (`TracefsLayout`, `_fast_event`); the
    reference regex parser reads every line the fast path does not take, so what a line
    yields never depends on the fast path.
    """
    every = lines_frame(text, first_line).collect()
    # A NUL byte has no place in trace text: that line is damaged (the rest of the file is read).
    has_nul = every["line"].str.contains("\x00", literal=True)
    lines, nul_lines = (every.filter(~has_nul), every.filter(has_nul)) if has_nul.any() else (every, every.clear())
    layout = tracefs_layout(lines["line"].head(2000)) if fmt == "tracefs" else None
    fast = _fast_rows(lines, layout)
    rest = lines.join(fast.select("line_no"), on="line_no", how="anti", maintain_order="left") if fast.height else lines
    slow, markers, unparsed, ignored = _by_regex(rest, fmt)
    slow = _typed(slow).collect()
    # A prefix followed by no readable event name (a line cut after its timestamp) or holding a
    # number too large for its column is not an event.
    broken = slow.filter(pl.col("event").is_null() | pl.col("damaged"))
    slow = slow.drop("damaged")
    if broken.height or nul_lines.height:
        slow = slow.join(broken.select("line_no"), on="line_no", how="anti", maintain_order="left")
        unparsed = pl.concat([unparsed, nul_lines.select(unparsed.columns),
                              rest.join(broken.select("line_no"), on="line_no").select(unparsed.columns)]
                             ).sort("line_no")
    events = _flags(pl.concat([fast.lazy(), slow.lazy()]) if fast.height else slow.lazy()).select(
        "line_no", "ts", "ts_resolution_ns", "cpu", "tid", "tgid", "comm", "subsystem", "event",
        "payload", "value", "irqs_off", "bh_off", "need_resched", "in_hardirq", "in_softirq",
        "in_nmi", "preempt_depth",
    )
    markers = markers.collect()
    rows = pl.concat([events, markers.lazy()], how="diagonal_relaxed")
    if markers.height:
        rows = _date_markers(rows)
    elif fast.height and slow.height:
        rows = rows.sort("line_no")
    rows = rows.collect()
    return SplitLines(
        rows=rows,
        unparsed_count=unparsed.height,
        unparsed_examples=[f"line {n}: {line[:160]}" for n, line in unparsed.head(3).iter_rows()],
        lines=every.height,
        ignored_count=ignored,
    )


def _date_markers(rows: pl.LazyFrame) -> pl.LazyFrame:
    """A marker stands before the first event its CPU recorded after the gap: take that time.

    Events always have a time, so without markers this would only sort; callers skip it then.
    """
    return (
        rows.sort("line_no")
        .with_columns(ts=pl.col("ts").backward_fill().over("cpu"))
        .with_columns(ts=pl.col("ts").forward_fill().over("cpu"))
    )
