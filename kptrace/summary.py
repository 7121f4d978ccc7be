"""The terminal summary of `kptrace analyze`: which interrupt sources hit which CPU, and how hard."""

from __future__ import annotations

import polars as pl

from kptrace.intervals import irq_intervals


def interrupt_sources(events: pl.LazyFrame, duration_s: float) -> pl.DataFrame:
    """Per CPU and source: count, rate (per s) and handler time (ns), all measured from the trace."""
    return (
        irq_intervals(events)
        .group_by("cpu", "kind", "name")
        .agg(
            count=pl.len(),
            incomplete=(~pl.col("complete")).sum(),
            total_ns=pl.col("dur").sum(),
            mean_ns=pl.col("dur").mean(),
            p99_ns=pl.col("dur").quantile(0.99),
        )
        .with_columns(rate_per_s=pl.col("count") / duration_s,
                      cpu_share=pl.col("total_ns") / (duration_s * 1e9))
        .sort("cpu", "total_ns", descending=[False, True])
        .collect()
    )


def interrupt_summary(events: pl.LazyFrame, meta: dict) -> dict:
    """A JSON-ready summary; every figure names its unit and provenance."""
    sources = interrupt_sources(events, meta["duration_s"])
    return {
        "input": {"format": meta["source_format"], "events": meta["event_count"],
                  "duration_s": meta["duration_s"], "clock": meta["clock"],
                  "lost_events": sum(c["lost_events"] or 0 for c in meta["per_cpu"]),
                  "counters": (meta.get("bundle") or {}).get("counters")},
        "interrupt_sources": {
            "provenance": "measured: entry/exit tracepoint pairs; time resolution "
                          f"{meta['ts_resolution_ns']} ns",
            "units": {"rate_per_s": "1/s", "total_ns": "ns", "mean_ns": "ns", "p99_ns": "ns",
                      "cpu_share": "fraction of the CPU's wall time"},
            "rows": sources.to_dicts(),
        },
        "warnings": meta["warnings"],
    }


def render_summary(summary: dict) -> str:
    """Fixed-width table for the terminal."""
    info = summary["input"]
    lines = [
        f"input: {info['format']}, {info['events']} events over {info['duration_s']:.3f} s "
        f"(clock {info['clock']}), lost events: {info['lost_events']}",
        f"interrupt sources per CPU ({summary['interrupt_sources']['provenance']}):",
        f"{'cpu':>3} {'kind':<8} {'source':<24} {'count':>8} {'rate/s':>10} {'mean us':>9} "
        f"{'p99 us':>9} {'CPU %':>7}",
    ]
    for row in summary["interrupt_sources"]["rows"]:
        mean = "-" if row["mean_ns"] is None else f"{row['mean_ns'] / 1e3:.2f}"
        p99 = "-" if row["p99_ns"] is None else f"{row['p99_ns'] / 1e3:.2f}"
        lines.append(
            f"{row['cpu']:>3} {row['kind']:<8} {str(row['name'])[:24]:<24} {row['count']:>8} "
            f"{row['rate_per_s']:>10.1f} {mean:>9} {p99:>9} {100 * (row['cpu_share'] or 0):>7.3f}"
        )
    return "\n".join(lines)
