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

from dataclasses import replace

import numpy as np
import polars as pl

from kptrace.analysis import Analysis
from kptrace.intervals import inside
from kptrace.whatif.nic import NicCosts
from kptrace.whatif.stream import WAKEUP


def indirect_per_hit(attribution: pl.DataFrame) -> pl.DataFrame:
    """cpu, source, indirect_ns, indirect_ci_ns: the slowdown a replayed hit adds. An estimate
    attribution found not significant (its interval includes zero) counts as zero."""
    significant = pl.col("indirect_significant").fill_null(False)
    return attribution.select(
        "cpu", "source",
        indirect_ns=pl.when(significant).then(pl.col("indirect_per_irq_ns")).otherwise(0.0).fill_null(0.0),
        indirect_ci_ns=pl.when(significant).then(pl.col("indirect_ci_ns")).otherwise(0.0).fill_null(0.0),
    )


def hit_indirect(analysis: Analysis) -> pl.DataFrame:
    """request_id, source, indirect_ns: the estimated slowdown the request's measured hits by
    that source left in its own time (at most half of it: an estimate never takes a request
    below half its measured own time)."""
    hits = analysis.hits.lazy().select("request_id", "source").collect()
    requests = analysis.requests.lazy().select("request_id", "cpu", "own_ns").filter(
        pl.col("request_id").is_in(hits["request_id"].unique().implode())).collect()
    return (
        hits.join(requests, on="request_id")
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
    arrived while the core worked, whose slowdown is in the measured times already. Only the
    columns read, and of the intervals only the wake-up IPIs and the idle runs a chain began in
    (the tables may be scans of a 64 M-event capture)."""
    on_cores = pl.col("cpu").is_in(cpus)
    chains = analysis.disruptions.lazy().filter(pl.col("disruptive") & pl.col("complete") & on_cores).select(
        "cpu", "ts", "source", "span_ns", "softirq_ns", "interval_id").collect()
    idle = (analysis.intervals.lazy().filter(on_cores & (pl.col("tid") == 0)
                                             & pl.col("id").is_in(chains["interval_id"].implode()))
            .select(interval_id="id", interrupted_tid="tid").collect())
    wakeups = analysis.intervals.lazy().filter(on_cores & (pl.col("kind") == "hardirq") & WAKEUP).select(
        "cpu", "ts", source="name", wakeup=pl.lit(True)).collect()
    return (
        chains.join(wakeups, on=["cpu", "ts", "source"], how="left")
        .filter(pl.col("wakeup").is_null())
        .join(indirect_per_hit(analysis.attribution), on=["cpu", "source"], how="left")
        .join(idle, on="interval_id", how="left")
        .select("cpu", "ts", "source", handler_ns=pl.col("span_ns") - pl.col("softirq_ns"),
                softirq_ns="softirq_ns",
                indirect_ns=pl.when(pl.col("interrupted_tid") == 0).then(pl.col("indirect_ns")).otherwise(0.0)
                .fill_null(0.0).round().cast(pl.Int64))
        .sort("cpu", "ts", "source")
    )


# NIC inputs (network policies): per serving core, the packets its NAPI polls found and what
# polling cost, for kptrace.whatif.nic's queue.

#: Declared hrtimer interrupt cost (ns) for the timers a policy adds, where the trace has no
#: local_timer interrupt on the core to measure it from.
TIMER_HANDLER_NS = 1_000
#: The NIC's own IRQ delay is read as this quantile of (IRQ - end of the previous NIC chain):
#: an IRQ never comes sooner after the queue was re-armed, often later when no packet waited.
MODERATION_QUANTILE = 5


def device_polls(analysis: Analysis, nic_sources: set[str]) -> pl.DataFrame:
    """NAPI polls of a device inside the NIC sources' chains: cpu, chain_ts, chain_end, handler_ns,
    ts, dur, work (packets), budget."""
    polls = (analysis.intervals.lazy().filter((pl.col("kind") == "napi") & (pl.col("name") != "(no_device)")
                                              & pl.col("complete")).select("cpu", "ts", "dur", "end_seq").collect())
    # Only the rows of the polls' events are read: the event table may be a 50 M-row scan.
    events = (analysis.events.lazy().with_row_index("seq").filter(pl.col("seq").is_in(polls["end_seq"].implode()))
              .select("seq", "napi_work", "napi_budget").collect())
    polls = polls.join(events, left_on="end_seq", right_on="seq").select("cpu", "ts", "dur", work="napi_work",
                                                                         budget="napi_budget")
    chains = analysis.disruptions.lazy().filter(pl.col("complete") & pl.col("source").is_in(list(nic_sources))).select(
        "cpu", w_ts="ts", w_end="end", handler_ns="hardirq_ns").collect()
    return (inside(polls.lazy(), chains.lazy(), "cpu").collect()
            .rename({"w_ts": "chain_ts", "w_end": "chain_end"}).sort("cpu", "ts"))


def _poll_costs(polls: pl.DataFrame) -> tuple[float, float]:
    """Per-poll fixed and per-packet cost (ns): least squares of poll time on packets."""
    work = polls["work"].to_numpy().astype(float)
    if np.ptp(work) == 0:
        return 0.0, float(polls["dur"].mean() / max(work.mean(), 1))
    (fixed, per_packet), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(work), work]),
                                              polls["dur"].to_numpy().astype(float), rcond=None)
    return max(float(fixed), 0.0), max(float(per_packet), 0.0)


def _packets(chains: pl.DataFrame, moderation_ns: int, start_ns: int) -> np.ndarray:
    """Packet arrival times rebuilt from the chains (ts, end, poll_ts: first poll's start, work):
    a chain's packets arrived after the previous chain's poll began and by its own poll; the
    first one `moderation_ns` before the IRQ when the queue was armed by then, the others
    evenly up to the poll."""
    times = []
    previous_poll, previous_end = start_ns, start_ns
    for ts, end, poll_ts, work in chains.select("ts", "end", "poll_ts", "work").iter_rows():
        if work:
            first = ts - moderation_ns
            if not previous_end < first <= poll_ts:
                first = previous_poll + (poll_ts - previous_poll) / work
            times.append(np.linspace(first, poll_ts, work) if work > 1 else np.array([first]))
        previous_poll, previous_end = poll_ts, end
    return np.concatenate(times).astype(np.int64) if times else np.empty(0, np.int64)


def _epoll_marks(analysis: Analysis, tids: list[int], cpu: int) -> np.ndarray:
    """Per request on `cpu` (the replay's order), whether an epoll_wait returned since the
    requests before it ended: the request is the first its loop iteration serves."""
    requests = (analysis.requests.lazy().filter(pl.col("tid").is_in(tids) & (pl.col("cpu") == cpu))
                .select("ts", "dur", "request_id").sort("ts", "request_id").collect())
    epoll = (analysis.intervals.lazy().filter((pl.col("kind") == "syscall") & pl.col("name").str.starts_with("epoll")
                                              & (pl.col("cpu") == cpu) & pl.col("complete"))
             .select(end=pl.col("ts") + pl.col("dur")).collect()["end"].sort().to_numpy())
    starts = requests["ts"].to_numpy()
    ends = np.maximum.accumulate((requests["ts"] + requests["dur"]).to_numpy())
    before = np.concatenate([[np.iinfo(np.int64).min], ends[:-1]])
    return np.searchsorted(epoll, starts, "right") > np.searchsorted(epoll, before, "right")


def nic_inputs(analysis: Analysis, tids: list[int], cores: list, nic_sources: set[str]) -> list:
    """The cores (kptrace.whatif.replay.CoreInput) with their NIC queue's inputs where a NIC
    source polled a device on them: packets, costs (kptrace.whatif.nic.NicCosts) and the
    requests that start a loop iteration (where epoll_wait busy-polls). All measured, except the
    slowdown per packet (attribution's indirect estimate per IRQ over the packets per IRQ) and,
    without a local_timer on the core, the added timers' cost (TIMER_HANDLER_NS, declared)."""
    if not nic_sources or analysis.events is None or "napi_work" not in analysis.events.lazy().collect_schema():
        return cores
    polls = device_polls(analysis, nic_sources)
    indirect = indirect_per_hit(analysis.attribution).filter(pl.col("source").is_in(list(nic_sources)))
    out = []
    for core in cores:
        mine = polls.filter(pl.col("cpu") == core.cpu)
        if mine.height == 0:
            out.append(core)
            continue
        chains = (mine.group_by("chain_ts").agg(end=pl.col("chain_end").first(), handler_ns=pl.col("handler_ns").first(),
                                                poll_ts=pl.col("ts").min(), work=pl.col("work").sum())
                  .rename({"chain_ts": "ts"}).sort("ts"))
        gaps = (chains["ts"] - chains["end"].shift(1)).drop_nulls().to_numpy()
        moderation = int(np.percentile(gaps, MODERATION_QUANTILE)) if gaps.size else 0
        fixed, per_packet = _poll_costs(mine)
        per_hit = indirect.filter(pl.col("cpu") == core.cpu)["indirect_ns"].mean() or 0.0
        timers = core.arrivals.handler_ns[core.arrivals.of_sources({"local_timer"})]
        costs = NicCosts(
            handler_ns=float(chains["handler_ns"].mean()), poll_fixed_ns=fixed, per_packet_ns=per_packet,
            indirect_per_packet_ns=per_hit / max(float(chains["work"].mean()), 1.0),
            timer_handler_ns=float(np.mean(timers)) if len(timers) else float(TIMER_HANDLER_NS),
            moderation_ns=max(moderation, 0), budget=int(mine["budget"].max() or 64))
        epoll = _epoll_marks(analysis, tids, core.cpu)
        out.append(replace(core, nic_packets=_packets(chains, costs.moderation_ns, core.start_ns), nic_costs=costs,
                           epoll=epoll))
    return out
