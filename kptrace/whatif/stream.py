"""The serving cores' request streams (what each column means: kptrace.whatif.inputs), built a
slice of a core's requests at a time.

At 64 M events one core served 3.0 M requests, and the joins that place idle periods,
interrupts and other tasks' runs in each request's gap held about 530 B per request at once.
A request's figures depend only on its gap (from the latest end of the requests before it on
its core: carried across slices) and on the intervals of its own time, so a slice reads only
the intervals of its time, and the stream is the same whatever the slice size
(tests/test_whatif_stream.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from kptrace.analysis import Analysis, Table
from kptrace.intervals import inside

#: What the stream reads of each request.
REQUEST_COLUMNS = ("request_id", "cpu", "tid", "ts", "dur", "own_ns")
#: APIC vectors that wake an idle CPU for a task another CPU made runnable.
WAKEUP_VECTORS = ("reschedule", "call_function_single", "call_function")
WAKEUP = pl.col("name").is_in(WAKEUP_VECTORS) & (pl.col("tid") == 0)
#: A core's requests are streamed this many at a time (about: a slice never splits requests
#: that start at the same instant).
SLICE_REQUESTS = 200_000
#: The stream's columns.
STREAM_SCHEMA = {"cpu": pl.Int16, "request_id": pl.UInt32, "tid": pl.Int32,
                 **dict.fromkeys(("ts", "dur", "ready_ts", "pre_ns", "wake_ns", "post_ns", "demand_ns"), pl.Int64)}
#: The roles of the intervals the stream reads (serving_spans).
ROLES = ("idle", "irq", "wake", "other")


def serving_spans(intervals: Table, cpu: int, serving_tids: list[int]) -> dict[str, pl.DataFrame]:
    """A core's complete intervals the stream reads, by role, each (cpu, ts, end) in start order:
    `idle` the idle task's runs, `irq` hard and soft IRQs taken busy (one taken idle lies in an
    idle run already), `wake` wake-up IPIs taken idle, `other` runs of tasks that serve no request
    (they preempted one). One pass over the table for all four."""
    kind, tid = pl.col("kind"), pl.col("tid")
    role = (pl.when((kind == "running") & (tid == 0)).then(0)
            .when(kind.is_in(["hardirq", "softirq"]) & (tid != 0)).then(1)
            .when((kind == "hardirq") & WAKEUP).then(2)
            .when((kind == "running") & (tid != 0) & ~tid.is_in(serving_tids)).then(3))
    rows = (intervals.lazy().filter((pl.col("cpu") == cpu) & pl.col("complete"))
            .select("cpu", "ts", end=pl.col("ts") + pl.col("dur"), role=role.cast(pl.Int8))
            .filter(pl.col("role").is_not_null()).collect(engine="streaming"))
    return {name: rows.filter(pl.col("role") == code).drop("role").sort("ts", maintain_order=True)
            for code, name in enumerate(ROLES)}


def _gaps(requests: pl.DataFrame) -> pl.DataFrame:
    """Per request, the gap on its core since every earlier request there ended (g_lo, g_hi):
    empty when it started inside another thread's request (that one was switched out)."""
    return (
        requests.select("request_id", "cpu", g_hi="ts", end=pl.col("ts") + pl.col("dur"))
        .sort("cpu", "g_hi", "request_id")
        .with_columns(g_lo=pl.col("end").cum_max().shift(1).over("cpu"))
        .with_columns(g_lo=pl.min_horizontal(pl.col("g_lo").fill_null(pl.col("g_hi")), "g_hi"))
        .drop("end")
    )


def _in_gaps(items: pl.DataFrame, gaps: pl.DataFrame) -> pl.DataFrame:
    """Items (cpu, ts, end) clipped to the gap their start falls in, with that gap's request_id."""
    return (
        inside(items.lazy(), gaps.lazy(), "cpu", start="g_lo", end="g_hi").collect()
        .with_columns(end=pl.min_horizontal("end", "g_hi"))
    )


def _covered(spans: pl.DataFrame, at: pl.DataFrame, column: str) -> pl.DataFrame:
    """At each (cpu, t) of `at`, how much time `spans` (cpu, ts, end; disjoint within a CPU)
    covered on that CPU before t, as `column`: a cumulative sum read at t, so a span that
    straddles a gap's edge counts only for its part inside."""
    spans = spans.sort("cpu", "ts").with_columns(
        before=(pl.col("end") - pl.col("ts")).cum_sum().over("cpu") - (pl.col("end") - pl.col("ts")))
    return (
        at.sort("t").join_asof(spans.select("cpu", "before", s_ts="ts", s_end="end").sort("s_ts"), left_on="t",
                               right_on="s_ts", by="cpu", strategy="backward", check_sortedness=False)
        .with_columns((pl.col("before") + pl.min_horizontal(pl.col("t"), "s_end") - pl.col("s_ts"))
                      .fill_null(0).alias(column))
        .drop("before", "s_ts", "s_end")
    )


def _in_gap_time(spans: pl.DataFrame, gaps: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per gap (request_id), the time `spans` covered inside it."""
    edges = pl.concat([gaps.select("request_id", "cpu", t="g_lo", edge=pl.lit(-1)),
                       gaps.select("request_id", "cpu", t="g_hi", edge=pl.lit(1))])
    return _covered(spans, edges, column).group_by("request_id").agg((pl.col("edge") * pl.col(column)).sum().alias(column))


def _starting(spans: pl.DataFrame, lo: float, hi: float) -> pl.DataFrame:
    """The spans (in start order) that start in [lo, hi)."""
    ts = spans["ts"].to_numpy()
    first, past = np.searchsorted(ts, [lo, hi], "left")
    return spans.slice(first, past - first)


def _reaching(spans: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
    """The spans (in start order) that _covered needs to read every t in [lo, hi] as over all of
    them: from the last to start at or before lo (with every span starting with it) to the last
    to start at or before hi. Time covered between two edges is the same over these alone."""
    ts = spans["ts"].to_numpy()
    last = np.searchsorted(ts, lo, "right") - 1
    first = np.searchsorted(ts, ts[last], "left") if last >= 0 else 0
    past = np.searchsorted(ts, hi, "right")
    return spans.slice(first, past - first)


def _slice_stream(requests: pl.DataFrame, gaps: pl.DataFrame, spans: dict[str, pl.DataFrame], next_lo: float,
                  next_ts: float) -> pl.DataFrame:
    """The stream of one slice of a core's requests (their gaps in start order; the next slice's
    first gap start and request start, inf for the last): its items are those whose start falls
    before the next slice's gaps and requests, which hold the rest (see core_stream)."""
    lo, last = gaps["g_lo"][0], gaps["g_hi"][-1]
    idle = _in_gap_time(_reaching(spans["idle"], lo, last), gaps, "idle_ns").join(
        _in_gaps(_starting(spans["idle"], lo, next_lo), gaps).group_by("request_id").agg(
            idle_lo=pl.col("ts").min(), ready_ts=pl.col("end").max()),
        on="request_id", how="left")
    # Interrupts taken while idle lie inside the idle task's run interval already.
    busy_irq = _in_gap_time(_reaching(spans["irq"], lo, last), gaps, "irq_ns")
    wake = _in_gaps(_starting(spans["wake"], lo, next_lo), gaps).group_by("request_id").agg(
        wake_ns=(pl.col("end") - pl.col("ts")).sum())
    # Other tasks (not serving threads, not idle) that ran inside a request: it was preempted.
    windows = requests.select("request_id", "cpu", g_lo="ts", g_hi=pl.col("ts") + pl.col("dur"))
    preempted = _in_gaps(_starting(spans["other"], requests["ts"].min(), next_ts), windows).group_by(
        "request_id").agg(preempted_ns=(pl.col("end") - pl.col("ts")).sum())
    stream = (
        requests.select(REQUEST_COLUMNS)
        .join(gaps.select("request_id", "g_lo"), on="request_id")
        .join(idle, on="request_id", how="left")
        .join(busy_irq, on="request_id", how="left")
        .join(wake, on="request_id", how="left")
        .join(preempted, on="request_id", how="left")
        .with_columns(pl.col("idle_ns", "irq_ns", "wake_ns", "preempted_ns").fill_null(0))
        .with_columns(work=(pl.col("ts") - pl.col("g_lo") - pl.col("idle_ns") - pl.col("irq_ns")).clip(0))
    )
    # Split the loop work around the idle period in proportion to the time on either side.
    before = (pl.col("idle_lo") - pl.col("g_lo")).clip(0)
    after = (pl.col("ts") - pl.col("ready_ts")).clip(0)
    share_before = pl.when(pl.col("ready_ts").is_null()).then(1.0).otherwise(
        before / (before + after).clip(1))
    return stream.with_columns(
        pre_ns=(pl.col("work") * share_before).round().cast(pl.Int64),
    ).select(
        "cpu", "request_id", "tid", "ts", "dur", "ready_ts", "pre_ns",
        wake_ns=pl.when(pl.col("ready_ts").is_not_null()).then(pl.col("wake_ns")).otherwise(0),
        post_ns=pl.col("work") - pl.col("pre_ns"),
        demand_ns=pl.col("own_ns") + pl.col("preempted_ns"),
    ).sort("cpu", "ts", "request_id")


def _slice_ends(starts: np.ndarray, size: int) -> list[int]:
    """Where the slices of requests (sorted by start) end: about every `size` requests, never
    between two that start at the same instant."""
    ends, k = [], 0
    while k < len(starts):
        past = k + size
        if past < len(starts):
            cut = int(np.searchsorted(starts, starts[past], "left"))
            past = cut if cut > k else int(np.searchsorted(starts, starts[past], "right"))
        ends.append(min(past, len(starts)))
        k = ends[-1]
    return ends


def core_stream(requests: pl.DataFrame, spans: dict[str, pl.DataFrame],
                size: int = SLICE_REQUESTS) -> Iterator[pl.DataFrame]:
    """One core's stream, a slice of its requests (REQUEST_COLUMNS, one core's, any order) at a
    time, in (ts, request_id) order. An item belongs to the latest gap (request) that starts at
    or before it, so a slice reads the items that start from its first gap (request) up to the
    next slice's: slices never split requests that start together, so that latest one is the
    same as over the whole core."""
    requests = requests.with_row_index("row")
    gaps = _gaps(requests).join(requests.select("request_id", "row"), on="request_id", maintain_order="left")
    starts, gap_starts = gaps["g_hi"].to_numpy(), gaps["g_lo"].to_numpy()
    first = 0
    for past in _slice_ends(starts, size):
        part = gaps.slice(first, past - first)
        # the slice's requests in their given order (that of the whole, for requests tied in time)
        rows = np.sort(part["row"].to_numpy())
        mine = requests[rows].drop("row")
        next_lo, next_ts = (gap_starts[past], starts[past]) if past < len(starts) else (np.inf, np.inf)
        yield _slice_stream(mine, part.drop("row"), spans, next_lo, next_ts)
        first = past


def request_stream(analysis: Analysis) -> pl.DataFrame:
    """The serving cores' request streams (of every request in `analysis.requests`), sorted by
    cpu and start."""
    requests = analysis.requests.lazy().select(REQUEST_COLUMNS).collect()
    serving = requests["tid"].unique().sort().to_list()
    parts = [part for cpu in sorted(requests["cpu"].unique().to_list())
             for part in core_stream(requests.filter(pl.col("cpu") == cpu),
                                     serving_spans(analysis.intervals, cpu, serving))]
    return pl.concat(parts) if parts else pl.DataFrame(schema=STREAM_SCHEMA)
