"""Per-request timelines for event-driven (epoll) servers, and the interrupts that hit them.

A request is the work one thread does for one ready connection inside one epoll loop
iteration: it starts when a read/recv on fd F returns data, and ends when the last send/write
on F that answers it returns (before the next read that returns data on F, or the next
epoll_wait). Everything else the thread does is left out.

A *disruption* is one hard IRQ together with the softirqs that run straight after it on the
same CPU (irq_exit runs pending softirqs): a disk interrupt and its BLOCK softirq, a timer tick
and its TIMER/RCU/SCHED work. Softirqs that run without a hard IRQ in front of them — such as
the loopback NET_RX work a send performs inside its own syscall — are the request's own work
("inline softirq"), not a disruption.
"""

from __future__ import annotations

import polars as pl

EPOLL = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
RECEIVES = ("read", "recvfrom", "recvmsg")
SENDS = ("sendmsg", "sendto", "write", "writev")

#: Two intervals closer than this (ns) are back to back: tracefs text has µs resolution.
CHAIN_GAP_NS = 2_000

REQUEST_SCHEMA = {
    "request_id": pl.UInt32, "tid": pl.Int32, "cpu": pl.Int16, "ts": pl.Int64, "dur": pl.Int64,
    "fd": pl.Int64, "bytes_in": pl.Int64, "bytes_out": pl.Int64, "kind": pl.String,
    "syscall_ns": pl.Int64, "hardirq_ns": pl.Int64, "softirq_ns": pl.Int64, "n_irq": pl.UInt32,
    "disruption_ns": pl.Int64, "own_ns": pl.Int64, "offcpu_ns": pl.Int64, "n_offcpu": pl.UInt32,
    "migrated": pl.Boolean,
    "sources": pl.List(pl.String), "disrupted": pl.Boolean, "irq_interval_ids": pl.List(pl.UInt32),
}


def disruptions(intervals: pl.LazyFrame) -> pl.LazyFrame:
    """Chains of hard IRQ + following softirqs per CPU: disruption_id, cpu, ts, end, span_ns,
    source (the hard IRQ's name, or `inline:<softirq>` for chains without one), hardirq_ns,
    softirq_ns, complete."""
    irq = (
        intervals.filter(pl.col("kind").is_in(["hardirq", "softirq"]))
        .with_columns(end=pl.col("ts") + pl.col("dur").fill_null(0))
        .sort("cpu", "ts", "depth", descending=[False, False, True])
        .with_columns(reach=pl.col("end").cum_max().shift(1).over("cpu"))
        .with_columns(
            head=(pl.col("kind") == "hardirq")
            | pl.col("reach").is_null()
            | (pl.col("ts") - pl.col("reach") > CHAIN_GAP_NS)
        )
        .with_columns(chain=pl.col("head").cast(pl.UInt32).cum_sum())
    )
    return (
        irq.group_by("chain")
        .agg(
            cpu=pl.col("cpu").first(),
            ts=pl.col("ts").first(),
            end=pl.col("end").max(),
            head_kind=pl.col("kind").first(),
            head_name=pl.col("name").first(),
            hardirq_ns=pl.col("dur").filter(pl.col("kind") == "hardirq").sum(),
            softirq_ns=pl.col("dur").filter(pl.col("kind") == "softirq").sum(),
            complete=pl.col("complete").all(),
        )
        .with_columns(
            span_ns=pl.col("end") - pl.col("ts"),
            source=pl.when(pl.col("head_kind") == "hardirq").then(pl.col("head_name"))
            .otherwise(pl.lit("inline:") + pl.col("head_name")),
            disruptive=pl.col("head_kind") == "hardirq",
        )
        .drop("head_kind", "head_name")
        .sort("ts")
        .with_row_index("disruption_id")
    )


def _request_spans(intervals: pl.LazyFrame) -> pl.LazyFrame:
    """Receive-with-data ... last answering send, per (tid, fd, epoll iteration)."""
    calls = (
        intervals.filter((pl.col("kind") == "syscall") & pl.col("complete"))
        # One task's syscalls do not overlap; at µs resolution a zero-length one ties with the
        # next, so its end breaks the tie.
        .sort("tid", "ts", pl.col("ts") + pl.col("dur"), maintain_order=True)
        .with_row_index("order")
        .with_columns(epoch=pl.col("name").is_in(EPOLL).cast(pl.UInt32).cum_sum().over("tid"))
        .filter((pl.col("name").is_in(RECEIVES) & (pl.col("ret") > 0)) | (pl.col("name").is_in(SENDS) & (pl.col("ret") >= 0)))
        .with_columns(is_send=pl.col("name").is_in(SENDS))
        .sort("tid", "fd", "epoch", "order")
        .with_columns(prev_send=pl.col("is_send").shift(1).over("tid", "fd", "epoch").fill_null(True))
        .with_columns(starts=~pl.col("is_send") & pl.col("prev_send"))
        .with_columns(segment=pl.col("starts").cast(pl.UInt32).cum_sum().over("tid", "fd", "epoch"))
        .filter(pl.col("segment") > 0)
    )
    return (
        calls.group_by("tid", "fd", "epoch", "segment")
        .agg(
            cpu=pl.col("cpu").first(),
            ts=pl.col("ts").first(),
            end=(pl.col("ts") + pl.col("dur")).filter(pl.col("is_send")).max(),
            bytes_in=pl.col("ret").filter(~pl.col("is_send")).sum(),
            bytes_out=pl.col("ret").filter(pl.col("is_send")).sum(),
        )
        .filter(pl.col("end").is_not_null())
        .with_columns(dur=pl.col("end") - pl.col("ts"))
        .sort("ts")
        .with_row_index("request_id")
        .with_columns(kind=_size_class("bytes_in") + pl.lit("/") + _size_class("bytes_out"))
    )


def _size_class(column: str) -> pl.Expr:
    """Requests of one kind have similar sizes in and out: power-of-two byte classes."""
    return pl.lit("2^") + pl.col(column).clip(1).log(2).floor().cast(pl.Int32).cast(pl.String)


def _inside(items: pl.LazyFrame, window: pl.LazyFrame, by: str) -> pl.LazyFrame:
    """Items whose `ts` falls inside a request on the same `by` (cpu or tid), with its id.

    Requests on one CPU (or one thread) do not overlap, so the latest request that started at
    or before an item is the only one that can contain it: an as-of join, not a cross join.
    """
    return (
        items.sort("ts")
        .join_asof(window.select(by, "request_id", w_ts="ts", w_end="end").sort("w_ts"),
                   left_on="ts", right_on="w_ts", by=by, strategy="backward", check_sortedness=False)
        .filter(pl.col("ts") < pl.col("w_end"))
    )


def build_requests(intervals: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(requests, hits): the per-request table (REQUEST_SCHEMA) and one row per disruption
    that started inside a request (request_id, disruption_id, source, span_ns)."""
    spans = _request_spans(intervals)
    window = spans.select("request_id", "cpu", "tid", "ts", "end")
    complete = pl.col("complete")

    hits = _inside(disruptions(intervals).filter("disruptive"), window, "cpu").select(
        "request_id", "disruption_id", "source", span_ns=pl.min_horizontal("end", "w_end") - pl.col("ts"),
    )
    irq_time = _inside(intervals.filter(pl.col("kind").is_in(["hardirq", "softirq"]) & complete), window, "cpu")
    irq_time = irq_time.group_by("request_id").agg(
        irq_interval_ids=pl.col("id").filter(pl.col("kind") == "hardirq"),
        hardirq_ns=pl.col("dur").filter(pl.col("kind") == "hardirq").sum(),
        softirq_ns=pl.col("dur").filter(pl.col("kind") == "softirq").sum(),
        n_irq=(pl.col("kind") == "hardirq").sum(),
    )
    syscall_time = _inside(intervals.filter((pl.col("kind") == "syscall") & complete), window, "tid")
    syscall_time = syscall_time.group_by("request_id").agg(syscall_ns=pl.col("dur").sum())
    # Off-CPU gaps of a thread: from the end of one of its run intervals to the start of the next.
    gaps = (
        intervals.filter((pl.col("kind") == "running") & complete)
        .sort("tid", "ts")
        .select("tid", ts=pl.col("ts") + pl.col("dur"), next_ts=pl.col("ts").shift(-1).over("tid"),
                next_cpu=pl.col("cpu").shift(-1).over("tid"))
        .filter(pl.col("next_ts").is_not_null())
    )
    off_cpu = (
        _inside(gaps, window, "tid").join(window.select("request_id", w_cpu="cpu"), on="request_id")
    ).group_by("request_id").agg(
        offcpu_ns=(pl.min_horizontal("next_ts", "w_end") - pl.col("ts")).sum(),
        n_offcpu=pl.len(),
        migrated=(pl.col("next_cpu") != pl.col("w_cpu")).any(),
    )
    per_hit = hits.group_by("request_id").agg(disruption_ns=pl.col("span_ns").sum(), sources=pl.col("source").sort())
    requests = (
        spans.join(irq_time, on="request_id", how="left")
        .join(syscall_time, on="request_id", how="left")
        .join(off_cpu, on="request_id", how="left")
        .join(per_hit, on="request_id", how="left")
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
        .select([pl.col(c).cast(t) for c, t in REQUEST_SCHEMA.items()])
    )
    return requests, hits


def request_counters(events: pl.LazyFrame, requests: pl.LazyFrame) -> pl.LazyFrame:
    """Counter deltas for each request, where perf read counters at epoll_wait returns: the
    delta of the loop iteration the request ended in (request_id, cpu, iteration_ts — the read
    that closed the iteration —, counter, iteration_delta, iteration_requests). Iterations that
    served several requests share one delta among them."""
    reads = (
        events.filter(pl.col("subsystem") == "counter")
        .select("cpu", "ts", counter=pl.col("event").cast(pl.String), iteration_delta="value")
    )
    closes = reads.select("cpu", "ts").unique().sort("ts")
    ended = (
        requests.select("request_id", "cpu", end=pl.col("ts") + pl.col("dur")).sort("end")
        .join_asof(closes, left_on="end", right_on="ts", by="cpu", strategy="forward", check_sortedness=False)
        .drop_nulls("ts")
        .with_columns(iteration_requests=pl.len().over("cpu", "ts"))
    )
    return ended.join(reads, on=["cpu", "ts"]).select(
        "request_id", "cpu", iteration_ts="ts", counter="counter", iteration_delta="iteration_delta",
        iteration_requests=pl.col("iteration_requests").cast(pl.UInt32),
    ).sort("request_id", "counter")
