"""The summary `kptrace analyze` prints: per CPU and interrupt source what it costs, and how
requests fare clean versus disrupted. Every figure carries its unit and provenance."""

from __future__ import annotations

import polars as pl

from kptrace.analysis import Analysis
from kptrace.attribute import HARDWARE_COUNTERS


def counter_source(analysis: Analysis) -> str:
    """Which counters the trace carries: hardware PMU, software only, or none."""
    names = set(analysis.events.filter(pl.col("subsystem") == "counter")["event"].cast(pl.String).unique())
    recorded = ((analysis.meta.get("bundle") or {}).get("counters") or {}).get("source")
    if names & set(HARDWARE_COUNTERS):
        return "hardware-pmu (cycles/instructions)"
    if names or recorded == "software-only":
        return "software-only (" + ", ".join(sorted(names)) + "): no IPC; indirect costs measured in time"
    return "none: indirect costs measured in time"


def counter_samples(events: pl.DataFrame) -> pl.DataFrame:
    """Counter values read by perf at tracepoints (ts, cpu, name, value), for counter tracks."""
    return events.filter(pl.col("subsystem") == "counter").select(
        "ts", "cpu", name=pl.col("event").cast(pl.String), value=pl.col("value").cast(pl.Float64)
    )


def request_overview(requests: pl.DataFrame | None) -> list[dict]:
    """Service time of clean and disrupted requests (µs, measured)."""
    if requests is None:
        return []
    return (
        requests.group_by("disrupted")
        .agg(
            requests=pl.len(),
            median_us=pl.col("dur").median() / 1e3,
            p99_us=pl.col("dur").quantile(0.99) / 1e3,
            own_median_us=pl.col("own_ns").median() / 1e3,
        )
        .sort("disrupted")
        .to_dicts()
    )


def build_summary(analysis: Analysis) -> dict:
    """A JSON-ready summary of one analysis."""
    meta = analysis.meta
    return {
        "input": {
            "format": meta["source_format"], "events": meta["event_count"], "duration_s": meta["duration_s"],
            "clock": meta["clock"], "ts_resolution_ns": meta["ts_resolution_ns"],
            "lost_events": sum(c["lost_events"] or 0 for c in meta["per_cpu"]),
            "counters": counter_source(analysis),
        },
        "notes": analysis.notes,
        "warnings": meta["warnings"],
        "attribution": {
            "units": {"rate_per_s": "interrupts/s", "*_ns": "ns per interrupt", "*_ci_ns": "95% interval half-width, ns",
                      "share_of_cpu": "fraction of that CPU's time",
                      "busy_share": "fraction of the window in which the CPU served requests that it was busy",
                      "capacity_loss": "fraction of that busy time the source took: throughput lost while the CPU "
                                       "was the bottleneck"},
            "provenance": {"count, rate_per_s": "measured", "direct_*": "measured", "indirect_*": "estimated",
                           "share_of_cpu": "estimated (rate x (direct + indirect))",
                           "busy_share": "measured",
                           "capacity_loss": "modelled ((direct + indirect) time in the serving window / busy time)"},
            "rows": analysis.attribution.drop("direct_provenance", "indirect_provenance").to_dicts(),
        },
        "requests": {"provenance": "measured from syscall events; service time in µs", "by_disrupted": request_overview(analysis.requests)},
        "ipc": None if analysis.ipc is None else {
            "provenance": {"ipc, ipq": "measured: hardware counters read at each epoll_wait return",
                           "gain_at_clean_ipc": "modelled: QPS = cores x clock x IPC / IPQ, IPC of clean iterations"},
            "units": {"ipc": "instructions/cycle", "ipq": "instructions/request", "gain_at_clean_ipc": "fraction"},
            "rows": analysis.ipc.to_dicts(),
        },
    }


def _pm(value, ci, scale=1e3, digits=1) -> str:
    if value is None:
        return "-"
    text = f"{value / scale:.{digits}f}"
    return text + (f"±{ci / scale:.{digits}f}" if ci is not None else "")


def render_summary(summary: dict, top: int = 6) -> str:
    """Fixed-width text for the terminal: the costliest sources of each CPU first."""
    info = summary["input"]
    lines = [
        f"input: {info['format']}, {info['events']} events over {info['duration_s']:.3f} s, clock {info['clock']}, "
        f"lost events {info['lost_events']}",
        f"counters: {info['counters']}",
        *[f"note: {note}" for note in summary["notes"]],
        "",
        "interrupt cost per CPU and source (rate measured; direct µs measured; indirect µs estimated; ±: 95% interval)",
        "(CPU %: share of the CPU's time, estimated; lost %: share of its busy time while serving "
        "requests, the throughput lost when that CPU is the bottleneck, modelled)",
        f"{'cpu':>3} {'source':<22} {'count':>7} {'rate/s':>9} {'direct µs':>13} {'indirect µs':>14} {'CPU %':>12} "
        f"{'lost %':>12}",
    ]
    rows = summary["attribution"]["rows"]
    for cpu in sorted({r["cpu"] for r in rows}):
        for row in [r for r in rows if r["cpu"] == cpu][:top]:
            share = _pm(row["share_of_cpu"], row["share_of_cpu_ci"], scale=0.01, digits=2)
            lines.append(
                f"{cpu:>3} {row['source'][:22]:<22} {row['count']:>7} {row['rate_per_s']:>9.1f} "
                f"{_pm(row['direct_per_irq_ns'], row['direct_ci_ns']):>13} "
                f"{_pm(row['indirect_per_irq_ns'], row['indirect_ci_ns']):>14} {share:>12} "
                f"{_pm(row['capacity_loss'], row['capacity_loss_ci'], scale=0.01, digits=2):>12}"
            )
    if summary.get("ipc"):
        lines += ["", "IPC and IPQ per epoll loop iteration (measured, hardware counters); gain modelled "
                      "(QPS = cores x clock x IPC / IPQ at the clean IPC)"]
        for row in summary["ipc"]["rows"]:
            gain = "" if row["gain_at_clean_ipc"] is None else f"  gain at clean IPC {100 * row['gain_at_clean_ipc']:+.1f}%"
            lines.append(f"cpu {row['cpu']} {row['group']:<9} iterations {row['iterations']:>7}  IPC {row['ipc']:.3f}  "
                         f"IPQ {row['ipq']:,.0f}{gain}")
    overview = summary["requests"]["by_disrupted"]
    if overview:
        lines += ["", "requests (measured): service time in µs",
                  f"{'':<11} {'requests':>9} {'median':>8} {'p99':>8} {'own median':>11}"]
        for row in overview:
            label = "disrupted" if row["disrupted"] else "clean"
            lines.append(f"{label:<11} {row['requests']:>9} {row['median_us']:>8.1f} {row['p99_us']:>8.1f} "
                         f"{row['own_median_us']:>11.1f}")
    return "\n".join(lines)
