"""What each interrupt source costs: direct handler time and the indirect slowdown after it.

Direct cost (measured): the wall time a disruption takes from the CPU — its hard IRQ and the
softirqs that run straight after it (see kptrace.requests.disruptions).

Indirect cost (estimated): how much longer a request's own work takes when one disruption of
this source hit it than in clean requests of the same kind on the same CPU. With hardware
counters this is where lost IPC shows up as extra cycles; without them it is measured in time
(task-clock-only machines, such as most VMs). Requests that were also preempted, or hit by
more than one disruption, are left out of the comparison.

Every interval is a 95% normal-approximation interval (1.96 standard errors).
"""

from __future__ import annotations

import polars as pl

Z95 = 1.96

ATTRIBUTION_SCHEMA = {
    "cpu": pl.Int16, "source": pl.String, "count": pl.UInt32, "rate_per_s": pl.Float64,
    "direct_per_irq_ns": pl.Float64, "direct_ci_ns": pl.Float64,
    "indirect_per_irq_ns": pl.Float64, "indirect_ci_ns": pl.Float64,
    "n_hit_requests": pl.UInt32, "n_clean_requests": pl.UInt32,
    "cost_per_irq_ns": pl.Float64, "share_of_cpu": pl.Float64, "share_of_cpu_ci": pl.Float64,
    "busy_share": pl.Float64, "capacity_loss": pl.Float64, "capacity_loss_ci": pl.Float64,
    "direct_provenance": pl.String, "indirect_provenance": pl.String,
}

DIRECT_PROVENANCE = "measured: hard IRQ entry to the end of the softirqs it ran"
INDIRECT_PROVENANCE = ("estimated from time: own time of requests hit once by this source minus clean "
                       "requests of the same kind on the same CPU")


def direct_costs(chains: pl.LazyFrame, duration_s: float) -> pl.LazyFrame:
    """Per (cpu, source): count, rate and mean span of its disruptions, with a 95% interval."""
    return (
        chains.filter(pl.col("disruptive") & pl.col("complete"))
        .group_by("cpu", "source")
        .agg(
            count=pl.len(),
            direct_per_irq_ns=pl.col("span_ns").mean(),
            direct_ci_ns=Z95 * pl.col("span_ns").std() / pl.len().sqrt(),
        )
        .with_columns(rate_per_s=pl.col("count") / duration_s)
    )


def indirect_costs(requests: pl.LazyFrame) -> pl.LazyFrame:
    """Per (cpu, source): extra own time of requests hit once by it, against clean requests."""
    usable = requests.filter(pl.col("offcpu_ns") == 0)
    clean = (
        usable.filter(~pl.col("disrupted"))
        .group_by("cpu", "tid", "kind")
        .agg(clean_mean=pl.col("own_ns").mean(), clean_var=pl.col("own_ns").var(), n_clean=pl.len())
    )
    hit_once = (
        usable.filter(pl.col("sources").list.len() == 1)
        .with_columns(source=pl.col("sources").list.first())
        .group_by("cpu", "tid", "kind", "source")
        .agg(hit_mean=pl.col("own_ns").mean(), hit_var=pl.col("own_ns").var(), n_hit=pl.len())
    )
    per_kind = hit_once.join(clean, on=["cpu", "tid", "kind"], how="inner").filter(
        (pl.col("n_hit") >= 2) & (pl.col("n_clean") >= 2)
    ).with_columns(
        diff=pl.col("hit_mean") - pl.col("clean_mean"),
        diff_var=pl.col("hit_var") / pl.col("n_hit") + pl.col("clean_var") / pl.col("n_clean"),
    )
    weight = pl.col("n_hit") / pl.col("n_hit").sum()
    return per_kind.group_by("cpu", "source").agg(
        indirect_per_irq_ns=(weight * pl.col("diff")).sum(),
        indirect_ci_ns=Z95 * (weight.pow(2) * pl.col("diff_var")).sum().sqrt(),
        n_hit_requests=pl.col("n_hit").sum(),
        n_clean_requests=pl.col("n_clean").sum(),
    )


def attribute(chains: pl.LazyFrame, requests: pl.LazyFrame | None, load: pl.LazyFrame | None,
              duration_s: float) -> pl.DataFrame:
    """One row per (cpu, interrupt source), ATTRIBUTION_SCHEMA; costs in ns, shares as fractions.

    `load` (kptrace.intervals.serving_load) gives, for CPUs that served requests, the source's
    disruptions and the CPU's busy time while serving: `capacity_loss` is the part of that busy
    time the source took, directly and through the slowdown it caused, i.e. the throughput the
    server lost to it when its CPU was the bottleneck (modelled).
    """
    direct = direct_costs(chains, duration_s)
    if requests is not None and load is not None:
        direct = (direct.join(indirect_costs(requests), on=["cpu", "source"], how="left")
                  .join(load, on=["cpu", "source"], how="left"))
    else:
        direct = direct.with_columns(
            [pl.lit(None, dtype).alias(c) for c, dtype in
             {**{c: ATTRIBUTION_SCHEMA[c] for c in ("indirect_per_irq_ns", "indirect_ci_ns", "n_hit_requests",
                                                    "n_clean_requests")},
              "window_count": pl.UInt32, "window_span_ns": pl.Int64, "busy_ns": pl.Int64,
              "window_ns": pl.Int64}.items()]
        )
    cost = pl.col("direct_per_irq_ns") + pl.col("indirect_per_irq_ns").fill_null(0)
    cost_ci = (pl.col("direct_ci_ns").fill_null(0).pow(2) + pl.col("indirect_ci_ns").fill_null(0).pow(2)).sqrt()
    return (
        direct.with_columns(
            cost_per_irq_ns=cost,
            share_of_cpu=pl.col("rate_per_s") * cost / 1e9,
            share_of_cpu_ci=pl.col("rate_per_s") * cost_ci / 1e9,
            busy_share=pl.col("busy_ns") / pl.col("window_ns"),
            capacity_loss=(pl.col("window_span_ns") + pl.col("window_count") * pl.col("indirect_per_irq_ns").fill_null(0))
            / pl.col("busy_ns"),
            # The window's direct time is a measured sum; only the indirect part is uncertain.
            capacity_loss_ci=pl.col("window_count") * pl.col("indirect_ci_ns") / pl.col("busy_ns"),
            direct_provenance=pl.lit(DIRECT_PROVENANCE),
            indirect_provenance=pl.when(pl.col("indirect_per_irq_ns").is_not_null()).then(pl.lit(INDIRECT_PROVENANCE))
            .otherwise(pl.lit("not estimated: no request of a traced epoll server was hit once by this source, "
                              "or the trace has no requests")),
        )
        .select([pl.col(c).cast(t) for c, t in ATTRIBUTION_SCHEMA.items()])
        .sort("cpu", "share_of_cpu", descending=[False, True])
        .collect()
    )


HARDWARE_COUNTERS = ("cycles", "instructions")


def counter_iterations(per_request: pl.LazyFrame, requests: pl.LazyFrame) -> pl.LazyFrame:
    """Epoll loop iterations that served requests (kptrace.requests.request_counters): their
    cycles and instructions, how many requests they served, and whether any was disrupted."""
    return (
        per_request.filter(pl.col("counter").is_in(HARDWARE_COUNTERS))
        .join(requests.select("request_id", "disrupted"), on="request_id")
        .group_by("cpu", "iteration_ts")
        .agg(
            *[pl.col("iteration_delta").filter(pl.col("counter") == name).first().alias(name)
              for name in HARDWARE_COUNTERS],
            requests=pl.col("iteration_requests").first(),
            disrupted=pl.col("disrupted").any(),
        )
    )


def ipc_decomposition(iterations: pl.DataFrame) -> pl.DataFrame:
    """The paper's model, QPS = cores x clock x IPC / IPQ, per CPU for clean iterations,
    disrupted ones and all: IPC = instructions/cycles and IPQ = instructions/request (measured),
    and `gain_at_clean_ipc` — the throughput gained if every iteration ran at the clean IPC
    with the same IPQ (modelled)."""
    served = iterations.filter(pl.col("requests") > 0)
    groups = pl.concat([
        served.with_columns(group=pl.when("disrupted").then(pl.lit("disrupted")).otherwise(pl.lit("clean"))),
        served.with_columns(group=pl.lit("all")),
    ])
    table = (
        groups.group_by("cpu", "group")
        .agg(iterations=pl.len(), requests=pl.col("requests").sum(),
             instructions=pl.col("instructions").sum(), cycles=pl.col("cycles").sum())
        .with_columns(ipc=pl.col("instructions") / pl.col("cycles"), ipq=pl.col("instructions") / pl.col("requests"))
    )
    clean = table.filter(pl.col("group") == "clean").select("cpu", clean_ipc="ipc")
    return (
        table.join(clean, on="cpu", how="left")
        .with_columns(gain_at_clean_ipc=pl.when(pl.col("group") == "all").then(pl.col("clean_ipc") / pl.col("ipc") - 1))
        .drop("clean_ipc")
        .sort("cpu", "group")
    )
