"""Per-request timelines for event-driven (epoll) servers, and the interrupts that hit them.

A request is the work one thread does for one ready connection inside one epoll loop
iteration: it starts when a read/recv on fd F returns data, and ends when the last send/write
on F that answers it returns (before the next read that returns data on F, or the next
epoll_wait). Everything else the thread does is left out.

Each piece of interrupt work is charged to what caused it (`charged_work`):
- every hard IRQ is its own disruption, whose source is its handler or APIC vector;
- a softirq run goes to the context that raised it (kptrace.intervals: the first
  softirq_raise of its vector on its CPU since that vector last began to run, which set the
  pending bit the run consumes): raised inside a hard IRQ, it joins that IRQ's disruption;
  inside another softirq run, it goes where that run went; in task context, it is the task's
  own work — an `inline:<SOFTIRQ>` chain, not a disruption, counted in a request's own time
  when it ran inside the request, whether inside a syscall or at an interrupt's exit;
- a run with no traced raise (the trace start, lost events, or a trace without
  softirq_raise: `softirq_charging`) falls back to adjacency: it joins the hard IRQ or inline
  chain it ran straight after on its CPU (within CHAIN_GAP_NS), else starts an inline chain.
A disruption's time is its members' own time (a softirq less the hard IRQs nested in it) plus,
for each softirq that followed other interrupt work within CHAIN_GAP_NS, the untraced gap
before it (irq_exit's bookkeeping, which today's tracepoints do not cover).

Work falls inside a request when it ran on the request's thread (an interrupt's `tid` is the
task it interrupted) during [ts, end) — wherever the thread ran, so migration is followed.

Same input, same tables: disruptions are numbered by the id of their first interval,
requests by start time then the id of the read that opens them; hits, counters and lists are
sorted by their ids (kptrace.intervals states the interval order).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kptrace import tables
from kptrace.intervals import CPU_ORDER, inside, sorted_rows

EPOLL = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
RECEIVES = ("read", "recvfrom", "recvmsg")
SENDS = ("sendmsg", "sendto", "write", "writev")

#: Two intervals closer than this (ns) are back to back: tracefs text has µs resolution.
CHAIN_GAP_NS = 2_000

REQUEST_SCHEMA = tables.polars_schema("requests")
DISRUPTION_SCHEMA = tables.polars_schema("disruptions")


def softirq_charging(events: pl.LazyFrame | pl.DataFrame) -> str:
    """`raise` when the trace recorded softirq_raise (softirqs go to who raised them), else
    `adjacency` (each softirq goes to the interrupt it ran straight after, which may charge a
    task's own network work to an interrupt)."""
    raised = events.lazy().filter(pl.col("event").cast(pl.String) == "softirq_raise").select(pl.len()).collect().item()
    return "raise" if raised else "adjacency"


def _roots(parent: np.ndarray) -> np.ndarray:
    """Follow parent pointers to the root (a root is its own parent) by pointer doubling."""
    while not np.array_equal(parent[parent], parent):
        parent = parent[parent]
    return parent


def charged_work(intervals: pl.LazyFrame) -> pl.LazyFrame:
    """One row per hard IRQ and softirq interval: id, cpu, tid, ts, end, kind, complete,
    own_ns (less nested hard IRQs), glue_ns (the untraced gap before a softirq), charged_ns
    (their sum), root (id of the interval its disruption starts with), source, disruptive."""
    irq = (
        intervals.filter(pl.col("kind").is_in(["hardirq", "softirq"]))
        .select("id", "cpu", "tid", "ts", "dur", "kind", "name", "complete", "seq", "end_seq", "raise_ts", "raised_in")
        .with_columns(end=pl.col("ts") + pl.col("dur").fill_null(0))
        .sort(CPU_ORDER)
        .with_columns(gap=pl.col("ts") - pl.col("end").cum_max().shift(1).over("cpu"))
        .with_columns(adjacent=(pl.col("gap") <= CHAIN_GAP_NS).fill_null(False))
    )
    soft = pl.col("kind") == "softirq"
    nested = inside(
        irq.filter(pl.col("kind") == "hardirq").select("cpu", "seq", nested_ns=pl.col("dur").fill_null(0)),
        irq.filter(soft).select("cpu", soft_id="id", w_ts="seq", w_end="end_seq"), "cpu", at="seq",
    ).group_by("soft_id").agg(pl.col("nested_ns").sum())
    adjacency_head = pl.when((pl.col("kind") == "hardirq") | ~pl.col("adjacent")).then(pl.col("id"))
    irq = (
        irq.join(nested, left_on="id", right_on="soft_id", how="left", maintain_order="left")
        .with_columns(
            own_ns=(pl.col("dur").fill_null(0) - pl.col("nested_ns").fill_null(0)).clip(0),
            glue_ns=pl.when(soft & pl.col("adjacent")).then(pl.col("gap").clip(0)).otherwise(0),
            parent=pl.when(~soft).then(pl.col("id"))
            .when(pl.col("raise_ts").is_not_null()).then(pl.coalesce("raised_in", "id"))
            .otherwise(adjacency_head.forward_fill().over("cpu")),
        )
        .with_columns(charged_ns=pl.col("own_ns") + pl.col("glue_ns"))
        .sort("id")
        .collect()
    )
    ids = irq["id"].to_numpy()
    parent = np.arange(int(irq["id"].max() or 0) + 1, dtype=np.int64)
    parent[ids] = irq["parent"].to_numpy()
    root = _roots(parent)[ids]
    # Each root's own row, found by binary search over the ascending ids (not joined); a root
    # the table does not hold (a cut table's raiser) has no kind or name, as a join leaves it.
    head = np.minimum(np.searchsorted(ids, root), len(ids) - 1)
    head = pl.Series(head, dtype=pl.UInt32).set(pl.Series(ids[head] != root, dtype=pl.Boolean), None)
    root_kind, root_name = irq["kind"].gather(head), irq["name"].gather(head)
    root = pl.Series(root, dtype=pl.UInt32)
    return (
        irq.with_columns(root=root)
        .select(
            "id", "cpu", "tid", "ts", "end", "kind", "complete", "own_ns", "glue_ns", "charged_ns", "root",
            source=pl.when(root_kind == "hardirq").then(root_name).otherwise(pl.lit("inline:") + root_name),
            disruptive=root_kind == "hardirq",
        )
        .lazy()
    )


def _chains(work: pl.LazyFrame, first_id: int = 0) -> pl.LazyFrame:
    """Disruptions of the charged work, numbered by root from `first_id` (a caller that groups
    the roots in consecutive ranges numbers each range from the count of roots before it)."""
    return (
        # Grouped as sorted runs (a stable sort keeps each chain's members in order): cheaper
        # than hashing nearly as many chains as rows.
        work.sort("root", maintain_order=True).with_columns(pl.col("root").set_sorted())
        .group_by("root", maintain_order=True)
        .agg(
            cpu=pl.col("cpu").first(),
            ts=pl.col("ts").min(),
            end=pl.col("end").max(),
            span_ns=pl.col("charged_ns").sum(),
            source=pl.col("source").first(),
            # when/then, not a filter in each of the many one-member groups
            hardirq_ns=pl.when(pl.col("kind") == "hardirq").then("own_ns").sum(),
            softirq_ns=pl.when(pl.col("kind") == "softirq").then("own_ns").sum(),
            n_softirq=(pl.col("kind") == "softirq").sum(),
            complete=pl.col("complete").all(),
            disruptive=pl.col("disruptive").first(),
        )
        .sort("root")
        .with_row_index("disruption_id", offset=first_id)
        .rename({"root": "interval_id"})
        .select([pl.col(c).cast(t) for c, t in DISRUPTION_SCHEMA.items()])
    )


def disruptions(intervals: pl.LazyFrame, work: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """One row per hard IRQ with the softirqs charged to it, and per inline chain
    (DISRUPTION_SCHEMA): interval_id (its first interval), span_ns (time charged to it, see the
    module docstring), hardirq_ns and softirq_ns (its members' own time), n_softirq, complete
    (every member has both ends), disruptive (false for inline chains); end is its last
    member's end, so with members apart end - ts may exceed span_ns. `work`: the intervals'
    charged_work, when the caller holds it already (build_requests reads it too)."""
    return _chains(charged_work(intervals) if work is None else work)


#: What each syscall is to a request: 0 the epoll wait that ends a loop iteration, 1 a
#: receive, 2 a send, 3 none of them.
_ROLE = (pl.when(pl.col("name").is_in(EPOLL)).then(0).when(pl.col("name").is_in(RECEIVES)).then(1)
         .when(pl.col("name").is_in(SENDS)).then(2).otherwise(3).cast(pl.Int8))


def _request_spans(calls: pl.LazyFrame) -> pl.LazyFrame:
    """Receive-with-data ... last answering send, per (tid, fd, epoch iteration), from the
    complete syscalls."""
    frame = calls.select("id", "tid", "cpu", "ts", "dur", "fd", "ret", role=_ROLE).collect()
    # One task's syscalls do not overlap; at µs resolution a zero-length one ties with the
    # next, so its end breaks the tie, then the order the calls were recorded (id).
    frame = sorted_rows(frame, [frame["tid"], frame["ts"], frame["ts"] + frame["dur"], frame["id"]])
    # Each task's loop iterations (`epoch`) in a run of rows, numbered across tasks.
    frame = frame.with_columns(
        epoch=((pl.col("role") == 0) | pl.col("tid").ne_missing(pl.col("tid").shift(1))).cum_sum()
    ).filter(((pl.col("role") == 1) & (pl.col("ret") > 0)) | ((pl.col("role") == 2) & (pl.col("ret") >= 0)))
    # Each (epoch, fd) stream in a run of rows, in time order, so that the stream's previous
    # call is the row before when that row is of the same stream.
    frame = sorted_rows(frame, [frame["epoch"], frame["fd"]])
    stream_start = pl.col("epoch").ne_missing(pl.col("epoch").shift(1)) | pl.col("fd").ne_missing(pl.col("fd").shift(1))
    spans = (
        frame.lazy()
        .with_columns(is_send=pl.col("role") == 2, stream_start=stream_start)
        .with_columns(starts=~pl.col("is_send") & (pl.col("stream_start") | pl.col("is_send").shift(1)))
        # A span runs from a receive that starts one to the next start; the sends before a
        # stream's first start belong to none (their span number is the stream's last before).
        .with_columns(segment=pl.col("starts").cum_sum())
        .with_columns(before=pl.when("stream_start").then(pl.col("segment") - pl.col("starts").cast(pl.UInt32)))
        .filter(pl.col("segment") > pl.col("before").forward_fill())
    )
    return (
        # The spans' rows are in runs, numbered in order: grouped as sorted runs, not hashed.
        spans.with_columns(pl.col("segment").set_sorted()).group_by("segment", maintain_order=True)
        .agg(
            first_id=pl.col("id").first(),
            tid=pl.col("tid").first(),
            fd=pl.col("fd").first(),
            cpu=pl.col("cpu").first(),
            ts=pl.col("ts").first(),
            end=(pl.col("ts") + pl.col("dur")).filter(pl.col("is_send")).max(),
            bytes_in=pl.col("ret").filter(~pl.col("is_send")).sum(),
            bytes_out=pl.col("ret").filter(pl.col("is_send")).sum(),
        )
        .filter(pl.col("end").is_not_null())
        .with_columns(dur=pl.col("end") - pl.col("ts"))
        .sort("ts", "first_id")
        .with_row_index("request_id")
        .with_columns(size_class=_size_class("bytes_in") + pl.lit("/") + _size_class("bytes_out"))
    )


def _size_class(column: str) -> pl.Expr:
    """Power-of-two byte classes: requests of one class (`size_class`, in/out) do similar work,
    so they are compared with each other."""
    return pl.lit("2^") + pl.col(column).clip(1).log(2).floor().cast(pl.Int32).cast(pl.String)


def build_requests(intervals: pl.LazyFrame, work: pl.LazyFrame | None = None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(requests, hits): the per-request table (REQUEST_SCHEMA) and one row per (request,
    disruption) whose charged work ran inside the request: request_id, disruption_id, source,
    span_ns (that work's charged time inside the request). `work`: as for disruptions."""
    work = (charged_work(intervals) if work is None else work).collect().lazy()
    # _chains numbers the disruptions in root order: only that numbering is needed here.
    numbered = work.select(pl.col("root").unique().sort()).with_row_index("disruption_id")
    return requests_of(intervals.filter((pl.col("kind") == "syscall") & pl.col("complete")), work, numbered,
                       off_cpu_gaps(intervals.filter((pl.col("kind") == "running") & pl.col("complete"))))


def off_cpu_gaps(runs: pl.LazyFrame) -> pl.LazyFrame:
    """Off-CPU gaps of each thread, from its complete runs: from the end of one (`ts`) to the
    start of its next (`next_ts`, on `next_cpu`)."""
    return (
        runs.sort("tid", "ts", "id")
        .select("tid", ts=pl.col("ts") + pl.col("dur"), next_ts=pl.col("ts").shift(-1).over("tid"),
                next_cpu=pl.col("cpu").shift(-1).over("tid"))
        .filter(pl.col("next_ts").is_not_null())
    )


def requests_of(calls: pl.LazyFrame, work: pl.LazyFrame, numbered: pl.LazyFrame, gaps: pl.LazyFrame,
                keep_first_id: bool = False) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """build_requests from its inputs: the complete syscalls, the charged work (charged_work),
    each root's disruption_id (root, disruption_id), and the off-CPU gaps (off_cpu_gaps). With
    `keep_first_id` requests keep `first_id` (the opening read's id: request_id's tie-break),
    for a caller that numbers requests built in parts (kptrace.windowed.requests)."""
    # Collected once: the windows and the requests' own rows read it, and a lazy plan would
    # find the spans again for each.
    spans = _request_spans(calls).collect()
    window = spans.lazy().select("request_id", "tid", w_cpu="cpu", w_ts="ts", w_end="end")
    complete = pl.col("complete")
    work_inside = (
        inside(work.filter(complete), window, "tid")
        .join(numbered, on="root")
        .with_columns(charged_in=pl.min_horizontal("own_ns", pl.col("w_end") - pl.col("ts")) + pl.col("glue_ns"))
        .collect().lazy()  # read three times below
    )
    hits = (
        work_inside.filter("disruptive")
        .group_by("request_id", "disruption_id")
        .agg(source=pl.col("source").first(), span_ns=pl.col("charged_in").sum())
        .sort("request_id", "disruption_id")
    )
    hard = pl.col("kind") == "hardirq"
    # Nearly every request holds some softirq work, few a hard IRQ: the id lists are made of
    # the hard IRQs' rows alone (a request without any gets its empty list below).
    irq_time = work_inside.group_by("request_id").agg(
        hardirq_ns=pl.when(hard).then("own_ns").sum(),
        softirq_ns=pl.when(~hard).then("own_ns").sum(),
        n_irq=hard.sum(),
    ).join(work_inside.filter(hard).group_by("request_id").agg(irq_interval_ids=pl.col("id").sort()),
           on="request_id", how="left")
    syscall_time = inside(calls, window, "tid")
    syscall_time = syscall_time.group_by("request_id").agg(syscall_ns=pl.col("dur").sum())
    off_cpu = inside(gaps, window, "tid").group_by("request_id").agg(
        offcpu_ns=(pl.min_horizontal("next_ts", "w_end") - pl.col("ts")).sum(),
        n_offcpu=pl.len(),
        migrated=(pl.col("next_cpu") != pl.col("w_cpu")).any(),
    )
    hits, *parts = pl.collect_all([hits, irq_time, syscall_time, off_cpu])
    parts.append(hits.group_by("request_id").agg(disruption_ns=pl.col("span_ns").sum(), sources=pl.col("source").sort()))
    requests = (
        spans.with_columns(column for part in parts for column in _by_request(spans.height, part)).lazy()
        .with_columns(
            pl.col("hardirq_ns", "softirq_ns", "syscall_ns", "disruption_ns", "offcpu_ns").fill_null(0),
            n_irq=pl.col("n_irq").fill_null(0),
            n_offcpu=pl.col("n_offcpu").fill_null(0),
            migrated=pl.col("migrated").fill_null(False),
            sources=pl.col("sources").fill_null(pl.lit([], pl.List(pl.String))),
            irq_interval_ids=pl.col("irq_interval_ids").fill_null(pl.lit([], pl.List(pl.UInt32))),
        )
        .with_columns(
            own_ns=pl.col("dur") - pl.col("disruption_ns") - pl.col("offcpu_ns"),
            disrupted=pl.col("sources").list.len() > 0,
        )
        .select([pl.col(c).cast(t) for c, t in REQUEST_SCHEMA.items()] + (["first_id"] if keep_first_id else []))
    )
    return requests, hits.lazy()


def _by_request(requests: int, part: pl.DataFrame) -> list[pl.Series]:
    """The columns of `part` (one row per request_id, for some of the requests) laid out one row
    per request, null where it has none: request_id is the spans' row number, so a gather does
    what a left join would (and keeps the spans' order)."""
    row = pl.Series([], dtype=pl.UInt32).extend_constant(None, requests).scatter(
        part["request_id"], pl.Series(np.arange(part.height, dtype=np.uint32)))
    return [part[c].gather(row) for c in part.columns if c != "request_id"]


def request_counters(events: pl.LazyFrame, requests: pl.LazyFrame) -> pl.LazyFrame:
    """Counter deltas for each request, where perf read counters at epoll_wait returns: the
    delta of the loop iteration the request ended in (request_id, cpu, iteration_ts — the read
    that closed the iteration —, counter, iteration_delta, iteration_requests). Iterations that
    served several requests share one delta among them; an iteration runs from the previous
    read on its CPU (exclusive) to its own read (inclusive)."""
    reads = (
        events.filter(pl.col("subsystem") == "counter")
        .select("cpu", "ts", counter=pl.col("event").cast(pl.String), iteration_delta="value")
    )
    closes = (
        reads.select("cpu", "ts").unique().sort("cpu", "ts")
        .select("cpu", w_end="ts", w_ts=pl.col("ts").shift(1).over("cpu").fill_null(np.iinfo(np.int64).min))
    )
    ended = (
        inside(requests.select("request_id", "cpu", end=pl.col("ts") + pl.col("dur")), closes, "cpu",
               at="end", closed="right")
        .select("request_id", "cpu", ts="w_end")
        .with_columns(iteration_requests=pl.len().over("cpu", "ts"))
    )
    return ended.join(reads, on=["cpu", "ts"]).select(
        "request_id", "cpu", iteration_ts="ts", counter="counter", iteration_delta="iteration_delta",
        iteration_requests=pl.col("iteration_requests").cast(pl.UInt32),
    ).sort("request_id", "counter", "iteration_delta")
