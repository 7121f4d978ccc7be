"""What a replay rests on, read off one analysis: per serving core, the request stream and the
interrupt arrivals.

Request stream (one row per request, in the core's order): `ready_ts` — when the core woke from
idle before it (null when it followed the previous request without idling: back to back) —,
`pre_ns` and `post_ns` — the serving thread's own work between the previous request and this
one, before and after that idle period (loop overhead: epoll_wait, accept, ...) —, and
`demand_ns` — the request's own time as measured, slowdowns of the interrupts that hit it
included, plus the time other tasks ran on its core while it was switched out (preempted:
replayed as is). Time it was switched out for another serving thread is that thread's own
request or loop work. The slowdown stays where it was measured: on a VM a timer tick often
lands right after the host stole the vCPU, so a hit request is long before the tick arrives,
and only the request it hit in the trace shows that. `hit_indirect` gives, per request and
source, the estimated slowdown of its measured hits, which a policy that takes the source
away takes out of the demand. All measured, except the indirect part (estimated).

Wake-ups: an IPI that reaches an idle core to wake the server (a reschedule or function-call
vector taken while the idle task ran) exists because the core was idle. It is not an arrival at
a fixed time but part of the wake-up before the request (`wake_ns`, measured): the replay charges
it only when the core is idle there, and never at saturation.

Arrivals (one row per interrupt chain on a serving core, wake-up IPIs excepted): `ts`, `source`, `handler_ns` and
`softirq_ns` (measured direct cost) and `indirect_ns` — the source's estimated indirect cost
per hit on that core, for a chain that arrived while the core idled (at saturation the replay
lands it in a request); every other chain's slowdown is in the measured times already (in
the request it hit, or in the loop work it landed in). 0 where attribution found none or its
interval includes zero.
"""

from __future__ import annotations

import polars as pl

from kptrace.analysis import Analysis
from kptrace.intervals import inside


def indirect_per_hit(attribution: pl.DataFrame) -> pl.DataFrame:
    """cpu, source, indirect_ns, indirect_ci_ns: the slowdown a replayed hit adds. An estimate
    attribution found not significant (its interval includes zero) counts as zero."""
    significant = pl.col("indirect_significant").fill_null(False)
    return attribution.select(
        "cpu", "source",
        indirect_ns=pl.when(significant).then(pl.col("indirect_per_irq_ns")).otherwise(0.0).fill_null(0.0),
        indirect_ci_ns=pl.when(significant).then(pl.col("indirect_ci_ns")).otherwise(0.0).fill_null(0.0),
    )


#: APIC vectors that wake an idle CPU for a task another CPU made runnable.
WAKEUP_VECTORS = ("reschedule", "call_function_single", "call_function")
_WAKEUP = pl.col("name").is_in(WAKEUP_VECTORS) & (pl.col("tid") == 0)


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


def request_stream(analysis: Analysis) -> pl.DataFrame:
    """The serving cores' request streams (module docstring), sorted by cpu and start."""
    requests = analysis.requests
    gaps = _gaps(requests)
    complete = analysis.intervals.filter(pl.col("complete")).select(
        "cpu", "tid", "kind", "name", "ts", end=pl.col("ts") + pl.col("dur"))
    idle_spans = complete.filter((pl.col("kind") == "running") & (pl.col("tid") == 0))
    idle = _in_gap_time(idle_spans, gaps, "idle_ns").join(
        _in_gaps(idle_spans, gaps).group_by("request_id").agg(idle_lo=pl.col("ts").min(), ready_ts=pl.col("end").max()),
        on="request_id", how="left")
    # Interrupts taken while idle lie inside the idle task's run interval already.
    busy_irq = _in_gap_time(complete.filter(pl.col("kind").is_in(["hardirq", "softirq"]) & (pl.col("tid") != 0)),
                            gaps, "irq_ns")
    wake = _in_gaps(complete.filter((pl.col("kind") == "hardirq") & _WAKEUP), gaps).group_by("request_id").agg(
        wake_ns=(pl.col("end") - pl.col("ts")).sum())
    # Other tasks (not serving threads, not idle) that ran inside a request: it was preempted.
    windows = requests.select("request_id", "cpu", g_lo="ts", g_hi=pl.col("ts") + pl.col("dur"))
    others = complete.filter((pl.col("kind") == "running") & (pl.col("tid") != 0)
                             & ~pl.col("tid").is_in(requests["tid"].unique().implode()))
    preempted = _in_gaps(others, windows).group_by("request_id").agg(
        preempted_ns=(pl.col("end") - pl.col("ts")).sum())
    stream = (
        requests.select("request_id", "cpu", "tid", "ts", "dur", "own_ns")
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


def hit_indirect(analysis: Analysis) -> pl.DataFrame:
    """request_id, source, indirect_ns: the estimated slowdown the request's measured hits by
    that source left in its own time (at most half of it: an estimate never takes a request
    below half its measured own time)."""
    requests = analysis.requests.select("request_id", "cpu", "own_ns")
    return (
        analysis.hits.join(requests, on="request_id")
        .join(indirect_per_hit(analysis.attribution), on=["cpu", "source"], how="left")
        .group_by("request_id", "source").agg(pl.col("indirect_ns").fill_null(0.0).sum(), pl.col("own_ns").first())
        .with_columns(indirect_ns=pl.min_horizontal("indirect_ns", pl.col("own_ns") / 2).round().cast(pl.Int64))
        .filter(pl.col("indirect_ns") > 0)
        .select("request_id", "source", "indirect_ns")
        .sort("request_id", "source")
    )


def arrivals(analysis: Analysis, cpus: list[int]) -> pl.DataFrame:
    """Interrupt chains on the given cores, wake-up IPIs excepted: cpu, ts, source, handler_ns,
    softirq_ns, indirect_ns — the estimated slowdown for a chain the trace shows arriving while
    the core was idle, should the replay land it in a request (at saturation); 0 for one that
    arrived while the core worked, whose slowdown is in the measured times already."""
    interrupted = analysis.intervals.select(interval_id="id", interrupted_tid="tid")
    wakeups = analysis.intervals.filter((pl.col("kind") == "hardirq") & _WAKEUP).select(
        "cpu", "ts", source="name", wakeup=pl.lit(True))
    return (
        analysis.disruptions.filter(pl.col("disruptive") & pl.col("complete") & pl.col("cpu").is_in(cpus))
        .join(wakeups, on=["cpu", "ts", "source"], how="left")
        .filter(pl.col("wakeup").is_null())
        .join(indirect_per_hit(analysis.attribution), on=["cpu", "source"], how="left")
        .join(interrupted, on="interval_id", how="left")
        .select("cpu", "ts", "source", handler_ns=pl.col("span_ns") - pl.col("softirq_ns"),
                softirq_ns="softirq_ns",
                indirect_ns=pl.when(pl.col("interrupted_tid") == 0).then(pl.col("indirect_ns")).otherwise(0.0)
                .fill_null(0.0).round().cast(pl.Int64))
        .sort("cpu", "ts", "source")
    )
