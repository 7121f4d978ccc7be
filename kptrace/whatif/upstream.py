"""Real NIC results: a synthetic serving core shaped like the `base` runs of the upstream IRQ
suspension experiments at saturation (../shared/data/irqsuspend-v8-runs.csv, README beside it),
replayed under each configuration's knobs, against what those runs measured.

Read from the CSV (medians of the `base` runs at load 0, per serving core): requests/s, packets
per request (rx_packets / requests), NIC IRQs/s (irqs / seconds / cores), packets per IRQ,
softirq share (soft_pct) and IPC (instructions / cycles). The per-IRQ fixed and per-packet cost
of NET_RX come from a least-squares fit of softirq time/s on IRQs/s and packets/s over base's
six load levels, scaled to the measured softirq share at saturation. Declared, as the CSV holds
no figure for them: the clean IPC (the `fullbusy` runs', where no packet is processed in
interrupt context), so the slowdown of interrupt-context work is (1 - IPC_base/IPC_clean) of the
busy time spread over its packets; the hard IRQ handler's part of the fixed cost (sar's %irq
reads 0.0: none); events per epoll_wait (EVENTS_PER_EPOLL); the request time's spread; the
hrtimer interrupt's cost (inputs.TIMER_HANDLER_NS). Requests arrive open-loop at LOAD of base's
saturation rate, each with its packets, so that every policy serves the same requests and
packets; capacity (requests per busy second) is what the runs' saturation throughput measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from kptrace.whatif.inputs import TIMER_HANDLER_NS
from kptrace.whatif.nic import NicCosts
from kptrace.whatif.policies import nic_policy
from kptrace.whatif.replay import CoreInput

EVENTS_PER_EPOLL = 16
LOAD = 1.3
DEMAND_SIGMA = 0.5
LOOP_SHARE = 0.15  # of the clean per-request time: the epoll loop around the request


def _per_core(runs: pl.DataFrame) -> pl.DataFrame:
    per_s = pl.col("seconds") * pl.col("cores")
    return runs.with_columns(
        rps=pl.col("requests") / per_s, irq_ps=pl.col("irqs") / per_s, pkt_ps=pl.col("rx_packets") / per_s,
        soft=pl.col("soft_pct") / 100, ipc=pl.col("instructions") / pl.col("cycles"))


def base_shape(runs: pl.DataFrame) -> dict:
    """The figures the synthetic core is shaped by (module docstring), per serving core."""
    base = _per_core(runs.filter(pl.col("group") == "base"))
    levels = base.group_by("load").agg(pl.col("irq_ps", "pkt_ps", "soft").median())
    (fixed, per_packet), *_ = np.linalg.lstsq(levels.select("irq_ps", "pkt_ps").to_numpy(), levels["soft"].to_numpy(),
                                              rcond=None)
    sat = base.filter(pl.col("load") == 0).select(pl.col("rps", "irq_ps", "pkt_ps", "soft", "ipc").median()).row(0, named=True)
    scale = sat["soft"] / (fixed * sat["irq_ps"] + per_packet * sat["pkt_ps"])
    clean_ipc = _per_core(runs.filter((pl.col("group") == "fullbusy") & (pl.col("load") == 0)))["ipc"].median()
    return {**sat, "poll_fixed_ns": fixed * scale * 1e9, "per_packet_ns": per_packet * scale * 1e9,
            "slowdown_share": 1 - sat["ipc"] / clean_ipc, "clean_ipc": clean_ipc}


def synthetic_core(shape: dict, seconds: float = 0.2, seed: int = 0) -> CoreInput:
    """One serving core shaped like `shape` (base_shape), its NIC queue armed (nic_policy set by
    the caller). The NIC's moderation delay makes the IRQ cycle what base measured."""
    rng = np.random.default_rng(seed)
    n = int(shape["rps"] * LOAD * seconds)
    arrivals = np.cumsum(rng.exponential(1e9 / (shape["rps"] * LOAD), n)).astype(np.int64)
    per_request_ns = 1e9 / shape["rps"]
    packets_per_request = shape["pkt_ps"] / shape["rps"]
    clean_ns = per_request_ns * (1 - shape["soft"] - shape["slowdown_share"])
    demand = rng.lognormal(np.log(clean_ns * (1 - LOOP_SHARE)) - DEMAND_SIGMA**2 / 2, DEMAND_SIGMA, n)
    loop = rng.gamma(4.0, clean_ns * LOOP_SHARE / 4.0, n)
    packets_per_irq = shape["pkt_ps"] / shape["irq_ps"]
    poll_ns = shape["poll_fixed_ns"] + packets_per_irq * shape["per_packet_ns"]
    costs = NicCosts(handler_ns=0.0, poll_fixed_ns=shape["poll_fixed_ns"], per_packet_ns=shape["per_packet_ns"],
                     indirect_per_packet_ns=shape["slowdown_share"] * 1e9 / shape["pkt_ps"],
                     timer_handler_ns=float(TIMER_HANDLER_NS), moderation_ns=int(1e9 / shape["irq_ps"] - poll_ns))
    whole = int(packets_per_request)
    extra = rng.random(n) < packets_per_request - whole
    packets = np.repeat(arrivals, whole + extra.astype(int))
    return CoreInput(cpu=0, start_ns=0, period_ns=int(arrivals[-1]), ready_ts=arrivals, pre_ns=np.zeros(n, np.int64),
                     wake_ns=np.zeros(n, np.int64), post_ns=loop.astype(np.int64), demand_ns=demand.astype(np.int64),
                     arrivals=(), hit_indirect={}, nic_packets=packets, nic_costs=costs,
                     epoll=np.arange(n) % EVENTS_PER_EPOLL == 0)


def policy_of(row: dict) -> tuple[str, dict]:
    """A configuration's knobs as a policy: busy_poll_usecs set: busy-poll; irq_suspend_timeout set:
    irq-suspend; defer/gro only: coalesce; none: vanilla."""
    knobs = {"defer": row["defer_hard_irqs"], "gro_flush_timeout": row["gro_flush_timeout_ns"]}
    if row["busy_poll_usecs"]:
        return "busy-poll", knobs | {"usecs": row["busy_poll_usecs"], "prefer": bool(row["prefer_busy_poll"])}
    if row["irq_suspend_timeout_ns"]:
        return "irq-suspend", knobs | {"timeout": row["irq_suspend_timeout_ns"]}
    if row["defer_hard_irqs"] or row["gro_flush_timeout_ns"]:
        return "coalesce", knobs
    return "vanilla", {}


def compare(csv: str | Path, seconds: float = 0.2) -> pl.DataFrame:
    """Per configuration: measured throughput at saturation against base (medians of its runs),
    the predicted capacity ratio from the base-shaped core, and the error of the prediction."""
    from dataclasses import replace

    from kptrace.whatif.predict import replay

    runs = pl.read_csv(csv)
    shape = base_shape(runs)
    core = synthetic_core(shape, seconds)
    saturated = runs.filter(pl.col("load") == 0)
    groups = saturated.group_by("group").agg(qps=pl.col("qps").median(), knobs=pl.struct(pl.all()).first())
    base_qps = groups.filter(pl.col("group") == "base")["qps"][0]
    rows, reference = [], None
    for group, qps, knobs in groups.sort("group").iter_rows():
        name, params = policy_of(knobs)
        figures = replay([replace(core, nic_policy=nic_policy(name, params))])
        rows.append({"group": group, "policy": name, "params": params, "measured_ratio": qps / base_qps,
                     "irq_per_s": figures["irq_per_s"], "cpu_util": figures["cpu_util"],
                     "capacity_rps": figures["capacity_rps"]})
        reference = figures["capacity_rps"] if group == "base" else reference
    return pl.DataFrame(rows).with_columns(predicted_ratio=pl.col("capacity_rps") / reference).with_columns(
        error=pl.col("predicted_ratio") / pl.col("measured_ratio") - 1).sort("measured_ratio")
