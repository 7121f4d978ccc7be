"""The what-if results as the terminal table (kptrace whatif, kptrace analyze) and as the
declared `whatif` table (whatif.parquet)."""

from __future__ import annotations

import json

import polars as pl

from kptrace import tables


def _with_interval(value: float, interval: list[float], fmt: str) -> str:
    return f"{value:{fmt}} [{interval[0]:{fmt}}, {interval[1]:{fmt}}]"


def render_whatif(result: dict) -> str:
    """One server's predictions: a line per policy, figures with their 95% intervals."""
    server = result["server"]
    calibration = result["calibration"]
    status = "within 5%" if calibration["within_tolerance"] else "NOT within 5%: treat the predictions with care"
    lines = [
        f"what-if for {server['comm']} (tids {', '.join(map(str, server['tids']))}; CPUs "
        f"{', '.join(map(str, server['cpus']))}): modelled, [95% interval]",
        f"calibration (vanilla replay vs measured): capacity {100 * calibration['capacity_error']:+.1f}%, "
        f"p50 {100 * calibration['p50_error']:+.1f}%, p99 {100 * calibration['p99_error']:+.1f}% ({status})",
        f"{'policy':<15} {'capacity req/s':>27} {'x vanilla':>21} {'saturated req/s':>10} {'p99 µs':>22} "
        f"{'CPU %':>6} {'IRQ/s':>8}",
    ]
    for entry in result["policies"]:
        p = entry["predicted"]
        lines.append(
            f"{entry['policy']:<15} {_with_interval(p['capacity_rps'], p['capacity_rps_ci'], ',.0f'):>27} "
            f"{_with_interval(entry['capacity_ratio'], entry['capacity_ratio_ci'], '.3f'):>21} "
            f"{p['throughput_rps']:>15,.0f} {_with_interval(p['p99_us'], p['p99_us_ci'], '.1f'):>22} "
            f"{100 * p['cpu_util']:>6.1f} {p['irq_per_s']:>8,.0f}")
    notes = {f"{e['policy']}: {note}" for e in result["policies"] for note in e["notes"] if e["policy"] != "vanilla"}
    notes |= {f"{s['policy']}: not predicted: {s['reason']}" for s in result.get("skipped", [])}
    return "\n".join(lines + [f"note: {note}" for note in sorted(notes)] + [_tracing_line(result.get("tracing"))])


def _tracing_line(tracing: dict | None) -> str:
    """Whether the trace's own overhead was taken out of the predictions (kptrace.whatif.overhead)."""
    if not tracing:
        return "tracing overhead: not assessed"
    if tracing["events_per_request"] is None:
        return f"tracing overhead: {tracing['note']}"
    held = (f"{tracing['events_per_request']:.1f} events and {tracing['samples_per_request']:.2f} counter samples "
            "per request on the serving cores")
    if not tracing["corrected"]:
        return f"tracing overhead: not corrected ({held}; --event-cost-ns and --sample-cost-ns correct it)"
    return (f"tracing overhead: corrected, {tracing['removed_us_per_request']:.2f} µs per request taken out "
            f"({held}; {tracing['event_ns']:g} ns per event, {tracing['sample_ns']:g} ns per sample, "
            f"{tracing['source']})")


def whatif_frame(results: list[dict]) -> pl.DataFrame:
    """One row per (server, policy), with exactly the declared columns of `whatif`
    (kptrace.tables): each figure with the bounds of its `<figure>_ci` pair, params as JSON."""
    figures = {c.name: c.bounds for c in tables.columns("whatif") if c.bounds}
    rows = []
    for result in results:
        for entry in result["policies"]:
            values = {**entry["predicted"], **entry}
            row = {"server": result["server"]["comm"], "tids": result["server"]["tids"], "policy": entry["policy"],
                   "params": json.dumps(entry["params"], sort_keys=True)}
            for name, (lo, hi) in figures.items():
                row[name] = values[name]
                row[lo], row[hi] = values[f"{name}_ci"]
            rows.append(row)
    return pl.DataFrame(rows, schema=tables.polars_schema("whatif"))
