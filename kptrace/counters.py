"""What a counters-only bundle shows (docs/counters.md): interrupt and softirq rates per source and
CPU over time, each CPU's busy time per interval, and requests per second, all measured (deltas of
the kernel's own counters between samples, divided by the measured interval).

No per-interrupt cost can be read off counters alone; `kptrace estimate` fits one across windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kptrace.read.counters import (SERIES_KEYS, USER_HZ, CountersBundle, interval_deltas,
                                   read_counters_bundle)

BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")


@dataclass
class CountersAnalysis:
    bundle: CountersBundle
    counter_rates: pl.DataFrame     # t0_ns, t1_ns, kind, cpu, irq, source, count, rate_per_s
    cpu_busy: pl.DataFrame          # t0_ns, t1_ns, cpu, seconds, busy_s, idle_s, iowait_s, steal_s, busy_share, steal_share
    requests: pl.DataFrame | None   # t0_ns, t1_ns, requests, requests_per_s
    warnings: list[str]


def analyze_counters(path: Path) -> CountersAnalysis:
    """Read a counters-only bundle and turn its cumulative counts into per-interval rates."""
    bundle = read_counters_bundle(path)
    warnings = list(bundle.warnings)
    rates = pl.concat([irq_rates(bundle.interrupts, warnings), softirq_rates(bundle.softirqs, warnings)])
    return CountersAnalysis(bundle, rates, cpu_busy(bundle.stat, warnings),
                            request_rates(bundle.requests, warnings) if bundle.requests is not None else None,
                            warnings)


def _seconds() -> pl.Expr:
    return (pl.col("t1_ns") - pl.col("t0_ns")) / 1e9


def irq_rates(interrupts: pl.DataFrame, warnings: list[str]) -> pl.DataFrame:
    """Interrupts per second per interval, CPU and source; kind `device` (numbered lines: what a
    device raised) or `cpu` (LOC, RES, CAL...: the CPU's own interrupts)."""
    deltas = interval_deltas(interrupts, SERIES_KEYS["interrupts"], "interrupts.txt", warnings)
    kinds = interrupts.select("irq", "device").unique("irq")
    return (deltas.join(kinds, on="irq", how="left")
            .select("t0_ns", "t1_ns", kind=pl.when("device").then(pl.lit("device")).otherwise(pl.lit("cpu")),
                    cpu="cpu", irq="irq", source="source", count="delta",
                    rate_per_s=pl.col("delta") / _seconds()))


def softirq_rates(softirqs: pl.DataFrame, warnings: list[str]) -> pl.DataFrame:
    """Softirqs raised-and-run per second per interval, CPU and kind (NET_RX, BLOCK, TIMER...)."""
    deltas = interval_deltas(softirqs, SERIES_KEYS["softirqs"], "softirqs.txt", warnings)
    return deltas.select("t0_ns", "t1_ns", kind=pl.lit("softirq"), cpu="cpu", irq="source", source="source",
                         count="delta", rate_per_s=pl.col("delta") / _seconds())


def cpu_busy(stat: pl.DataFrame, warnings: list[str]) -> pl.DataFrame:
    """Each CPU's time per interval from /proc/stat ticks (10 ms each): busy = user + nice + system
    + irq + softirq, i.e. the interval minus idle, iowait and steal; steal (time the hypervisor
    gave to others) is kept apart, since the guest could not have used it."""
    deltas = interval_deltas(stat, SERIES_KEYS["stat"], "stat.txt", warnings)
    wide = deltas.pivot(on="field", index=["sample", "t0_ns", "t1_ns", "cpu"], values="delta")
    busy = pl.sum_horizontal(*BUSY_FIELDS)
    valid = pl.all_horizontal(pl.col(*BUSY_FIELDS, "idle", "iowait", "steal").is_not_null())
    return (wide.filter(valid).sort("cpu", "t0_ns")
            .select("t0_ns", "t1_ns", "cpu", seconds=_seconds(), busy_s=busy / USER_HZ,
                    idle_s=pl.col("idle") / USER_HZ, iowait_s=pl.col("iowait") / USER_HZ,
                    steal_s=pl.col("steal") / USER_HZ)
            .with_columns(busy_share=pl.col("busy_s") / pl.col("seconds"),
                          steal_share=pl.col("steal_s") / pl.col("seconds")))


def request_rates(requests: pl.DataFrame, warnings: list[str]) -> pl.DataFrame:
    """Requests served per interval (the command's cumulative count, differenced) and per second."""
    counted = requests.filter(pl.col("count").is_not_null())
    deltas = interval_deltas(counted.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("sample")),
                             (), "requests.txt", warnings)
    return deltas.filter(pl.col("delta").is_not_null()).select(
        "t0_ns", "t1_ns", requests="delta", requests_per_s=pl.col("delta") / _seconds())


def summarize(analysis: CountersAnalysis, top: int = 5) -> dict:
    """The figures `analyze` prints and writes to summary.json: per CPU its busy share and its
    busiest interrupt sources, and the request rate; all measured means over the bundle."""
    manifest, rates, busy = analysis.bundle.manifest, analysis.counter_rates, analysis.cpu_busy
    spans = rates.select(pl.col("t0_ns").min(), pl.col("t1_ns").max()).row(0)
    duration_s = (spans[1] - spans[0]) / 1e9 if spans[0] is not None else 0.0
    per_source = (rates.filter(pl.col("count").is_not_null())
                  .group_by("kind", "cpu", "source")
                  .agg(count=pl.col("count").sum(), seconds=_seconds().sum(),
                       peak_per_s=pl.col("rate_per_s").max())
                  .with_columns(rate_per_s=pl.col("count") / pl.col("seconds")))
    cpus = []
    for row in (busy.group_by("cpu").agg(busy_share=pl.col("busy_s").sum() / pl.col("seconds").sum(),
                                         busy_share_p95=pl.col("busy_share").quantile(0.95),
                                         steal_share=pl.col("steal_s").sum() / pl.col("seconds").sum())
                .sort("cpu").iter_rows(named=True)):
        mine = per_source.filter(pl.col("cpu") == row["cpu"])
        row["device_irqs_per_s"] = float(mine.filter(pl.col("kind") == "device")["rate_per_s"].sum())
        for kind in ("device", "cpu", "softirq"):
            row[f"top_{kind}"] = (mine.filter(pl.col("kind") == kind, pl.col("count") > 0)
                                  .sort("rate_per_s", descending=True).head(top)
                                  .select("source", "rate_per_s", "peak_per_s").to_dicts())
        cpus.append(row)
    requests = analysis.requests
    options = manifest.get("counters_only") or {}
    return {
        "input": {"bundle": str(analysis.bundle.path), "capture": "counters", "hostname": manifest.get("hostname"),
                  "kernel": manifest.get("kernel"), "duration_s": duration_s,
                  "interval_ms": options.get("interval_ms"), "samples": options.get("samples"),
                  "serving_cpus": options.get("serving_cpus"),
                  "counters": (options.get("counters") or {}).get("source")},
        "provenance": "measured: deltas of /proc/interrupts, /proc/softirqs and /proc/stat between samples, "
                      "divided by the measured interval (busy time at the 10 ms resolution of /proc/stat ticks)",
        "cpus": cpus,
        "requests": None if requests is None or not requests.height else {
            "total": int(requests["requests"].sum()),
            "per_s": float(requests["requests"].sum() / ((requests["t1_ns"] - requests["t0_ns"]).sum() / 1e9))},
        "warnings": analysis.warnings,
    }
