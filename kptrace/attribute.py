"""What each interrupt source costs: direct handler time and the indirect slowdown after it.

Direct cost (measured): the wall time a disruption takes from the CPU — its hard IRQ and the
softirqs that run straight after it (see kptrace.requests.disruptions). Its interval is a 95%
normal-approximation interval (1.96 standard errors of the mean span).

Indirect cost (estimated): how much longer a request's own work takes when one disruption of a
source hit it. With hardware counters this is where lost IPC shows up as extra cycles; without
them it is measured in time (task-clock-only machines, such as most VMs). Only *comparable*
requests are used (`comparable_requests`): same CPU, thread and size class (COMPARABLE_BY),
never switched out while they ran, and hit by at most one disruption.

Why not simply "mean own time of hit requests minus that of clean ones":
- Length bias. An interrupt arriving at random hits a request with a probability proportional
  to the request's length, so hit requests are longer than clean ones even when the interrupt
  costs nothing. Exactly: with interrupts arriving at rate λ, a request of own time x stays
  clean with probability e^(-Λx) and is hit once by the source with probability λx·e^(-Λx), so
  before its interrupt a hit request's own time follows the clean distribution *weighted by
  own time*. The reference is therefore the length-weighted clean mean, E[x²]/E[x], not E[x].
- Tails. A request that the trace shows on-CPU for milliseconds (hypervisor steal, a missed
  sched_switch, or rare slow work) says nothing about interrupts, yet a handful of them
  dominate a mean — and, weighted by length, the reference even more. Requests beyond
  OUTLIER_FACTOR times the group's typical own time (the median of its clean requests; for hit
  requests shifted by their median excess over it) are set aside as outliers, counted
  in `n_outlier_requests` and listed with where their time went by `outlier_requests`. The
  fence sits far enough out that it removes only what no plausible interrupt explains.
The estimate per source is the mean over its hit requests of (own time − length-weighted
clean mean of the request's group). Its 95% interval is a percentile bootstrap
(BOOTSTRAP_REPLICATES resamples of the hit and the clean requests of each group, the random
generator seeded from the data so the same input gives the same numbers). An estimate whose
interval includes zero is not significant (`indirect_significant` false): it is reported with
its interval, but cost_per_irq_ns, share_of_cpu and capacity_loss count it as 0 — a loss the
data cannot tell from none is not charged — while their intervals keep its uncertainty.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from kptrace import tables
from kptrace.errors import compiled_part

Z95 = 1.96
#: Requests are compared only with requests of the same CPU, thread and size class.
COMPARABLE_BY = ("cpu", "tid", "size_class")
#: Own times beyond this multiple of the group's typical own time are outliers.
OUTLIER_FACTOR = 20
#: Fewer hit or clean requests in a group than these give no estimate for it.
MIN_HIT_REQUESTS = 5
MIN_CLEAN_REQUESTS = 30
BOOTSTRAP_REPLICATES = 1000

ATTRIBUTION_SCHEMA = tables.polars_schema("attribution")
#: The per-row provenance columns repeat the declarations (kptrace.tables) in words.
DIRECT_PROVENANCE = tables.in_words("attribution", "direct_per_irq_ns")
INDIRECT_PROVENANCE = tables.in_words("attribution", "indirect_per_irq_ns") + "; 95% percentile bootstrap interval"


def direct_costs(chains: pl.LazyFrame, duration_s: float) -> pl.LazyFrame:
    """Per (cpu, source): count, rate and mean span of its disruptions, with a 95% interval."""
    return (
        chains.filter(pl.col("disruptive") & pl.col("complete"))
        .group_by("cpu", "source")
        .agg(
            count=pl.len(),
            direct_per_irq_ns=pl.col("span_ns").mean(),
            # A two-pass sum rather than std(): Polars' grouped std() moves in its last bits with
            # the thread count, and the same input must give the same numbers.
            direct_ci_ns=Z95 * ((pl.col("span_ns") - pl.col("span_ns").mean()).pow(2).sum()
                                / (pl.len() - 1)).sqrt() / pl.len().sqrt(),
        )
        # Times a reciprocal, not divided by a scalar: Polars may divide one chunk of a column by
        # multiplying with the reciprocal and another by dividing, which differ in the last bit.
        .with_columns(rate_per_s=pl.col("count") * (1.0 / duration_s))
    )


def comparable_requests(requests: pl.LazyFrame) -> pl.LazyFrame:
    """The requests whose own times may be compared, within COMPARABLE_BY: never switched out
    while they ran (so neither preempted nor migrated) and hit by at most one disruption. Adds
    `hit_source` (null for a clean request), `outlier_fence_ns` and `outlier` (own time beyond
    the fence: see the module docstring)."""
    usable = requests.filter((pl.col("offcpu_ns") == 0) & (pl.col("sources").list.len() <= 1)).with_columns(
        hit_source=pl.col("sources").list.first()
    )
    by = list(COMPARABLE_BY)
    # A plain median (not length-weighted): a few very long requests hold much of the time but
    # few of the requests, so only a count-based middle stays put when they are there.
    typical = usable.filter(pl.col("hit_source").is_null()).group_by(by).agg(typical_ns=pl.col("own_ns").median())
    excess = (pl.col("own_ns").median().over(*by, "hit_source") - pl.col("typical_ns")).clip(0)
    fence = OUTLIER_FACTOR * pl.col("typical_ns") + pl.when(pl.col("hit_source").is_null()).then(0).otherwise(excess)
    return (
        usable.join(typical, on=by, how="left", nulls_equal=True)
        .with_columns(outlier_fence_ns=fence)
        .with_columns(outlier=(pl.col("own_ns") > pl.col("outlier_fence_ns")).fill_null(False))
        .drop("typical_ns")
    )


def outlier_requests(requests: pl.LazyFrame) -> pl.LazyFrame:
    """The comparable requests set aside as outliers, with where their own time went:
    `long_in` is "syscalls" when most of it was inside system calls (on a VM, often a vCPU the
    host descheduled; elsewhere a missed sched_switch or slow kernel work), else "user space"."""
    in_syscalls = (pl.col("syscall_ns") - pl.col("disruption_ns")).clip(0)
    return comparable_requests(requests).filter("outlier").select(
        "request_id", *COMPARABLE_BY, "hit_source", "own_ns", "outlier_fence_ns",
        long_in=pl.when(in_syscalls * 2 >= pl.col("own_ns")).then(pl.lit("syscalls")).otherwise(pl.lit("user space")),
    )


def _data_seed(*arrays: np.ndarray) -> int:
    """A seed that depends only on the data, so the bootstrap gives the same interval every run."""
    digest = hashlib.blake2b(digest_size=8)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return int.from_bytes(digest.digest(), "little")


def _resampled_sums(sample: np.ndarray, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """The sums of the sample's values and of their squares, over the sample itself and
    `replicates` resamples of it with replacement: (replicates + 1, 2), the sample's own row
    first. The picks are drawn and summed in compiled code (resample.c), from a stream seeded
    by `rng`: numpy would draw them either as multinomial counts (~120 ns a binomial) or as index
    arrays written to memory and read back, several times slower (docs/performance.md)."""
    ffi, lib = compiled_part("kptrace._resample", "bootstrap resampler")
    if len(sample) >= 1 << 32:
        raise ValueError(f"a bootstrap sample of {len(sample):,} values: the resampler draws 32-bit positions")
    sample = np.ascontiguousarray(sample, dtype=np.float64)
    sums = np.empty((replicates + 1, 2))
    sums[0] = sample.sum(), (sample * sample).sum()
    seed = int(rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True))
    lib.resampled_sums(len(sample), ffi.from_buffer("double[]", sample), replicates, seed,
                       ffi.from_buffer("double[]", sums[1:], require_writable=True))
    return sums


def _bootstrap_indirect(hit_ns: np.ndarray, hit_lengths: np.ndarray, hit_group: np.ndarray,
                        hit_source: np.ndarray, clean_ns: np.ndarray, clean_lengths: np.ndarray,
                        replicates: int = BOOTSTRAP_REPLICATES) -> np.ndarray:
    """(sources, 3): estimate, 2.5% and 97.5% bootstrap bounds, in ns.

    Hit own times come in segments of `hit_lengths` (one per source and comparable group), each
    naming the clean segment it is compared with (`hit_group`) and its source's index
    (`hit_source`, ascending); clean own times in one segment per group. A source's estimate is
    the mean over its hit requests of own time minus the length-weighted clean mean of their
    group; each resample redraws the hit and clean requests of every group."""
    rng = np.random.default_rng(_data_seed(hit_ns, hit_lengths, clean_ns, clean_lengths))
    # E[x²]/E[x]: the mean own time a randomly arriving interrupt finds (see the docstring).
    references = np.stack([sums[:, 1] / sums[:, 0] for sums in
                           (_resampled_sums(group, rng, replicates)
                            for group in np.split(clean_ns, np.cumsum(clean_lengths)[:-1]))])
    extra = np.stack([_resampled_sums(segment, rng, replicates)[:, 0] - n * references[group]
                      for segment, n, group in zip(np.split(hit_ns, np.cumsum(hit_lengths)[:-1]),
                                                   hit_lengths, hit_group, strict=True)])
    per_source = np.stack([extra[hit_source == s].sum(axis=0) / hit_lengths[hit_source == s].sum()
                           for s in range(hit_source[-1] + 1)])
    low, high = np.quantile(per_source[:, 1:], [0.025, 0.975], axis=1)
    return np.column_stack((per_source[:, 0], low, high))


def indirect_costs(requests: pl.LazyFrame) -> pl.LazyFrame:
    """Per (cpu, source): extra own time per hit, its 95% interval and significance, and the
    requests it rests on (see the module docstring)."""
    by = list(COMPARABLE_BY)
    comparable = comparable_requests(requests.select(*by, "own_ns", "offcpu_ns", "sources")).collect()
    outliers = (comparable.filter(pl.col("outlier") & pl.col("hit_source").is_not_null())
                .group_by("cpu", source="hit_source").agg(n_outlier_requests=pl.len()).sort("cpu", "source"))
    kept = comparable.filter(~pl.col("outlier"))
    clean = (kept.filter(pl.col("hit_source").is_null())
             .filter(pl.len().over(by) >= MIN_CLEAN_REQUESTS).sort(*by, "own_ns"))
    groups = clean.group_by(by, maintain_order=True).agg(n_clean=pl.len()).with_row_index("group")
    hits = (
        kept.filter(pl.col("hit_source").is_not_null()).rename({"hit_source": "source"})
        .join(groups, on=by, how="inner")
        .filter(pl.len().over(*by, "source") >= MIN_HIT_REQUESTS)
        .sort("cpu", "source", "tid", "size_class", "own_ns")
    )
    segments = hits.group_by("cpu", "source", "tid", "size_class", maintain_order=True).agg(
        n_hit=pl.len(), group=pl.col("group").first(), n_clean=pl.col("n_clean").first())
    sources = segments.group_by("cpu", "source", maintain_order=True).agg(
        n_hit_requests=pl.col("n_hit").sum(), n_clean_requests=pl.col("n_clean").sum())
    segments = segments.with_columns(source_index=pl.struct("cpu", "source").rle_id())
    empty = {"indirect_per_irq_ns": pl.Float64, "indirect_lo_ns": pl.Float64, "indirect_hi_ns": pl.Float64}
    if sources.height:
        bounds = _bootstrap_indirect(
            hits["own_ns"].to_numpy().astype(np.float64), segments["n_hit"].to_numpy().astype(np.int64),
            segments["group"].to_numpy().astype(np.int64), segments["source_index"].to_numpy().astype(np.int64),
            clean["own_ns"].to_numpy().astype(np.float64), groups["n_clean"].to_numpy().astype(np.int64))
        estimates = pl.DataFrame(bounds, schema=list(empty), orient="row")
    else:
        estimates = pl.DataFrame(schema=empty)
    return (
        pl.concat([sources, estimates], how="horizontal")
        .join(outliers, on=["cpu", "source"], how="left")
        .with_columns(
            n_outlier_requests=pl.col("n_outlier_requests").fill_null(0),
            indirect_ci_ns=(pl.col("indirect_hi_ns") - pl.col("indirect_lo_ns")) / 2,
            indirect_significant=(pl.col("indirect_lo_ns") > 0) | (pl.col("indirect_hi_ns") < 0),
        )
        .lazy()
    )


def hits_per_source(requests: pl.LazyFrame) -> pl.LazyFrame:
    """Per (cpu, source): `window_hits`, how many of its disruptions landed in a request's own
    execution (one per entry of a request's `sources`), the only ones the indirect cost applies
    to; a disruption while the CPU idled or ran the epoll loop slowed no request."""
    return (requests.select("cpu", source="sources").explode("source").drop_nulls("source")
            .group_by("cpu", "source").agg(window_hits=pl.len()))


def attribute(chains: pl.LazyFrame, requests: pl.LazyFrame | None, load: pl.LazyFrame | None,
              duration_s: float) -> pl.DataFrame:
    """One row per (cpu, interrupt source), ATTRIBUTION_SCHEMA; costs in ns, shares as fractions.

    `load` (kptrace.intervals.serving_load) gives, for CPUs that served requests, the source's
    disruptions and the CPU's busy time while serving: `capacity_loss` is the part of that busy
    time the source took, directly (its disruptions' measured spans) and through the slowdown
    it caused (the indirect cost per hit times the disruptions that hit a request,
    `hits_per_source`), i.e. the throughput the server lost to it when its CPU was the
    bottleneck (modelled). Only a significant indirect cost is counted in it (and in
    cost_per_irq_ns and share_of_cpu). Their ± still holds the whole indirect interval: it is
    the larger distance from the counted value to either end (`reach`), so a figure that
    counts 0 for a non-significant estimate keeps the estimate's upper end in its interval.
    """
    direct = direct_costs(chains, duration_s)
    if requests is not None and load is not None:
        direct = (direct.join(indirect_costs(requests), on=["cpu", "source"], how="left")
                  .join(load, on=["cpu", "source"], how="left")
                  .join(hits_per_source(requests), on=["cpu", "source"], how="left"))
    else:
        direct = direct.with_columns(
            [pl.lit(None, dtype).alias(c) for c, dtype in
             {**{c: ATTRIBUTION_SCHEMA[c] for c in ("indirect_per_irq_ns", "indirect_ci_ns", "indirect_lo_ns",
                                                    "indirect_hi_ns", "indirect_significant", "n_hit_requests",
                                                    "n_clean_requests", "n_outlier_requests")},
              "window_count": pl.UInt32, "window_span_ns": pl.Int64, "busy_ns": pl.Int64,
              "window_ns": pl.Int64, "window_hits": pl.UInt32}.items()]
        )
    counted = pl.when(pl.col("indirect_significant")).then(pl.col("indirect_per_irq_ns")).otherwise(0)
    reach = pl.max_horizontal(counted - pl.col("indirect_lo_ns"), pl.col("indirect_hi_ns") - counted)
    cost = pl.col("direct_per_irq_ns") + counted
    cost_ci = (pl.col("direct_ci_ns").fill_null(0).pow(2) + reach.fill_null(0).pow(2)).sqrt()
    slowed = pl.col("window_hits").fill_null(0)
    return (
        direct.with_columns(
            cost_per_irq_ns=cost,
            share_of_cpu=pl.col("rate_per_s") * cost * 1e-9,
            share_of_cpu_ci=pl.col("rate_per_s") * cost_ci * 1e-9,
            busy_share=pl.col("busy_ns") / pl.col("window_ns"),
            capacity_loss=(pl.col("window_span_ns") + slowed * counted) / pl.col("busy_ns"),
            # The window's direct time is a measured sum; only the indirect part is uncertain.
            capacity_loss_ci=slowed * reach / pl.col("busy_ns"),
            direct_provenance=pl.lit(DIRECT_PROVENANCE),
            indirect_provenance=pl.when(pl.col("indirect_per_irq_ns").is_not_null()).then(pl.lit(INDIRECT_PROVENANCE))
            .otherwise(pl.lit(f"not estimated: fewer than {MIN_HIT_REQUESTS} comparable requests of a traced epoll "
                              "server were hit once by this source, or the trace has no requests")),
        )
        .select([pl.col(c).cast(t) for c, t in ATTRIBUTION_SCHEMA.items()])
        .sort("cpu", "share_of_cpu", "source", descending=[False, True, False])
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
