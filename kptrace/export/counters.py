"""`kptrace analyze` of a counters-only bundle: terminal lines, Parquet tables (counter_rates,
cpu_busy), summary.json and a small offline report.html with two Altair charts.

Every figure is measured (counter deltas over measured intervals); the estimate figures, where the
bundle names its serving CPUs and has a request count, come from `kptrace estimate` on its windows.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import altair as alt
import polars as pl

from kptrace.counters import CountersAnalysis, analyze_counters, summarize
from kptrace.errors import TraceError
from kptrace.export.report import CSS, EMBED_SCRIPT, _esc, spec_scripts, vega_script
from kptrace.export.text import terminal_safe

WIDTH = 860
#: Sources drawn by name in the rate chart per CPU; the rest are summed as "other".
TOP_SOURCES = 6
MAX_POINTS = 400


def analyze_command(bundle: Path, out: Path, as_json: bool) -> int:
    """The whole `analyze` of a counters bundle; returns the exit code (1: unusable input)."""
    try:
        analysis = analyze_counters(bundle)
        summary = summarize(analysis) | {"estimate": window_estimate(bundle)}
    except TraceError as error:
        print(terminal_safe(f"kptrace: error: {error}"), file=sys.stderr)
        return 1
    written = write_counters(out, analysis, summary)
    summary["outputs"] = {name: str(path) for name, path in written.items()}
    if as_json:
        print(terminal_safe(json.dumps(summary, indent=2, default=str)))
        return 0
    for warning in summary["warnings"]:
        print(terminal_safe(f"kptrace: warning: {warning}"), file=sys.stderr)
    print(terminal_safe(render_counters(summary)))
    print(terminal_safe(f"\ntables: {out}/counter_rates.parquet, {out}/cpu_busy.parquet; summary: "
                        f"{written['summary']}; report: {written['report']}"))
    return 0


def window_estimate(bundle: Path) -> dict:
    """`kptrace estimate` of this bundle's windows, or why there is none (a one-line reason)."""
    from kptrace.estimate import estimate

    try:
        return estimate([bundle])
    except TraceError as error:
        return {"groups": [], "warnings": [error.problem]}


def render_counters(summary: dict) -> str:
    """Terminal lines: per CPU its busy share and busiest sources; requests per second."""
    info = summary["input"]
    lines = [f"counters-only bundle {info['bundle']}: {info['samples']} samples every {info['interval_ms']} ms over "
             f"{info['duration_s']:.1f} s on {info['hostname']} ({info['kernel']}); all figures measured "
             "(counter deltas / interval)"]
    for cpu in summary["cpus"]:
        lines.append(f"CPU {cpu['cpu']}: busy {cpu['busy_share']:.1%} of its time (p95 of intervals "
                     f"{cpu['busy_share_p95']:.0%}), steal {cpu['steal_share']:.1%}; device IRQs "
                     f"{cpu['device_irqs_per_s']:,.0f}/s")
        for kind, label in (("device", "device IRQs"), ("cpu", "CPU IRQs"), ("softirq", "softirqs")):
            shown = ", ".join(f"{s['source']} {s['rate_per_s']:,.0f}/s (peak {s['peak_per_s']:,.0f})"
                              for s in cpu[f"top_{kind}"][:3])
            if shown:
                lines.append(f"  {label:<12} {shown}")
    requests = summary["requests"]
    lines.append("requests: none counted (no --requests-cmd)" if requests is None else
                 f"requests: {requests['total']:,} served, {requests['per_s']:,.0f}/s (measured)")
    estimate = summary.get("estimate") or {}
    for group in estimate.get("groups", []):
        unit = "cycles" if group["unit"] == "cycles" else "ns busy"
        if group["cost_per_irq"] is None:
            lines.append(f"estimate ({group['runs']} windows): none - " + "; ".join(group["messages"]))
            continue
        lo, hi = group["cost_per_irq_ci"]
        glo, ghi = group["capacity_gain_without_irqs_ci"]
        lines.append(f"estimate ({group['runs']} windows): {group['cost_per_irq']:,.0f} {unit} per IRQ "
                     f"95% [{lo:,.0f}, {hi:,.0f}], capacity gain without IRQs "
                     + ("n/a" if group["capacity_gain_without_irqs"] is None else
                        f"{group['capacity_gain_without_irqs']:+.1%} 95% [{glo:+.1%}, {ghi:+.1%}]")
                     + " (estimated)" + "".join(f"\n  ! {m}" for m in group["messages"]))
    lines += [f"estimate: {'none - ' if not estimate.get('groups') else 'note: '}{w}" for w in estimate.get("warnings", [])]
    return "\n".join(lines)


def write_counters(out: Path, analysis: CountersAnalysis, summary: dict) -> dict[str, Path]:
    """counter_rates.parquet, cpu_busy.parquet, summary.json and report.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"counter_rates": out / "counter_rates.parquet", "cpu_busy": out / "cpu_busy.parquet",
               "summary": out / "summary.json", "report": out / "report.html"}
    analysis.counter_rates.write_parquet(written["counter_rates"], compression="zstd")
    analysis.cpu_busy.write_parquet(written["cpu_busy"], compression="zstd")
    written["summary"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    written["report"].write_text(render_report(analysis, summary), encoding="utf-8")
    return written


# --------------------------------------------------------------------------- report.html


def _time_s(start_ns: int) -> pl.Expr:
    return ((pl.col("t1_ns") - start_ns) / 1e9).round(3).alias("time_s")


def rate_frame(rates: pl.DataFrame, start_ns: int) -> pl.DataFrame:
    """Device and CPU interrupt rates per CPU over time; per CPU the TOP_SOURCES busiest sources by
    name, the rest summed as `other`; thinned to at most MAX_POINTS intervals."""
    irqs = rates.filter(pl.col("kind") != "softirq", pl.col("rate_per_s").is_not_null())
    ranked = (irqs.group_by("cpu", "source").agg(pl.col("count").sum())
              .with_columns(rank=pl.col("count").rank("ordinal", descending=True).over("cpu"))
              .filter(pl.col("rank") <= TOP_SOURCES, pl.col("count") > 0).select("cpu", "source", keep=pl.lit(True)))
    named = (irqs.join(ranked, on=["cpu", "source"], how="left")
             .with_columns(source=pl.when(pl.col("keep")).then("source").otherwise(pl.lit("other"))))
    frame = (named.group_by("t1_ns", "cpu", "source").agg(pl.col("rate_per_s").sum())
             .select(_time_s(start_ns), pl.format("CPU {}", "cpu").alias("cpu"), "source", "rate_per_s"))
    return _thin(frame.sort("time_s"))


def busy_frame(busy: pl.DataFrame, start_ns: int) -> pl.DataFrame:
    return _thin(busy.select(_time_s(start_ns), pl.format("CPU {}", "cpu").alias("cpu"),
                             (pl.col("busy_share") * 100).alias("busy_pct"),
                             (pl.col("steal_share") * 100).alias("steal_pct")).sort("time_s"))


def _thin(frame: pl.DataFrame) -> pl.DataFrame:
    """At most MAX_POINTS distinct times (every k-th interval) so a long bundle keeps the page small."""
    times = frame["time_s"].unique().sort()
    if times.len() <= MAX_POINTS:
        return frame
    step = -(-times.len() // MAX_POINTS)
    return frame.filter(pl.col("time_s").is_in(times.gather_every(step).implode()))


def rate_chart(frame: pl.DataFrame) -> alt.FacetChart:
    return (alt.Chart(alt.Data(values=frame.to_dicts()))
            .mark_line(interpolate="step-after", strokeWidth=1.2)
            .encode(x=alt.X("time_s:Q", title="time since the first sample, s", scale=alt.Scale(nice=False)),
                    y=alt.Y("rate_per_s:Q", title="interrupts per second"),
                    color=alt.Color("source:N", title="source"),
                    tooltip=["cpu:N", "source:N", "time_s:Q", alt.Tooltip("rate_per_s:Q", format=",.0f")])
            .properties(width=WIDTH, height=160)
            .facet(row=alt.Row("cpu:N", title=None))
            .resolve_scale(color="independent")
            .properties(title=alt.TitleParams("Interrupts per second, per CPU and source (measured)",
                                              subtitle="/proc/interrupts deltas over each sampling interval")))


def busy_chart(frame: pl.DataFrame) -> alt.Chart:
    return (alt.Chart(alt.Data(values=frame.to_dicts()))
            .mark_line(interpolate="step-after", strokeWidth=1.2)
            .encode(x=alt.X("time_s:Q", title="time since the first sample, s", scale=alt.Scale(nice=False)),
                    y=alt.Y("busy_pct:Q", title="busy share of the interval, %"),
                    color=alt.Color("cpu:N", title="CPU"),
                    tooltip=["cpu:N", "time_s:Q", alt.Tooltip("busy_pct:Q", format=".0f"),
                             alt.Tooltip("steal_pct:Q", format=".0f")])
            .properties(width=WIDTH, height=220,
                        title=alt.TitleParams("Busy share of each CPU over time (measured)",
                                              subtitle="/proc/stat: user+nice+system+irq+softirq ticks (10 ms) "
                                                       "over the interval; steal apart")))


def estimate_html(estimate: dict) -> str:
    """The estimate over the bundle's 1 s windows (estimated, 95% intervals), or why there is none."""
    items = []
    for group in estimate.get("groups", []):
        unit = "cycles" if group["unit"] == "cycles" else "ns of busy time"
        if group["cost_per_irq"] is None:
            items.append(f"<li>{group['runs']} windows: no estimate</li>")
        else:
            lo, hi = group["cost_per_irq_ci"]
            gain, (glo, ghi) = group["capacity_gain_without_irqs"], group["capacity_gain_without_irqs_ci"]
            items.append(f"<li>{group['runs']} windows of 1 s: <b>{group['cost_per_irq']:,.0f} {unit} per IRQ</b> "
                         f"(95% [{lo:,.0f}, {hi:,.0f}]); capacity gain without IRQs "
                         + ("n/a" if gain is None else f"<b>{gain:+.1%}</b> (95% [{glo:+.1%}, {ghi:+.1%}])") + "</li>")
        items += [f"<li class=missing>{_esc(m)}</li>" for m in group["messages"]]
    items += [f"<li>{_esc(w)}</li>" for w in estimate.get("warnings", [])]
    return ("<section><h2>Interrupt cost (estimated, <code>kptrace estimate</code> over the bundle's windows)</h2>"
            f"<ul>{''.join(items)}</ul><p class=provenance><b>estimated</b>: cost per request against IRQs per request across "
            "windows (docs/estimate.md); the figures need windows whose IRQ rate varies at a fixed load.</p></section>")


def render_report(analysis: CountersAnalysis, summary: dict) -> str:
    """The whole page as one HTML string (works offline: the Vega bundle is inlined)."""
    start = analysis.counter_rates["t0_ns"].min() or 0
    charts = {}
    if analysis.counter_rates.height:
        charts["irq-rate"] = rate_chart(rate_frame(analysis.counter_rates, start))
    if analysis.cpu_busy.height:
        charts["cpu-busy"] = busy_chart(busy_frame(analysis.cpu_busy, start))
    info = summary["input"]
    rows = "".join(f"<tr><td>CPU {c['cpu']}</td><td class=num>{c['busy_share']:.1%}</td>"
                   f"<td class=num>{c['steal_share']:.1%}</td><td class=num>{c['device_irqs_per_s']:,.0f}</td>"
                   f"<td>{_esc(', '.join(s['source'] for s in c['top_device'][:3]) or '–')}</td></tr>"
                   for c in summary["cpus"])
    requests = summary["requests"]
    served = "none counted" if requests is None else f"{requests['per_s']:,.0f} per s (measured)"
    notes = "".join(f"<li>{_esc(w)}</li>" for w in summary["warnings"]) or "<li>none</li>"
    body = (estimate_html(summary.get("estimate") or {}) + f"<section><h2>Per CPU (measured, means over the bundle)</h2><table><tr><th>CPU</th>"
            "<th class=num>busy<span class=unit>% of time</span></th><th class=num>steal<span class=unit>% of time"
            "</span></th><th class=num>device IRQs<span class=unit>per s</span></th><th>busiest devices</th></tr>"
            f"{rows}</table><p>Requests: {served}"
            "</p></section>"
            + "".join(f'<section><div class="chart" id="{cid}"></div></section>' for cid in charts)
            + f"<section><h2>Warnings</h2><ul>{notes}</ul></section>")
    specs = {cid: chart.to_dict() for cid, chart in charts.items()}
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = Path(info["bundle"]).name
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="kptrace-charts" content="{len(charts)}">
<title>kptrace counters — {_esc(name)}</title>
<style>{CSS}</style>
{vega_script(specs)}
</head>
<body>
<header>
<h1>kptrace counters — {_esc(name)}</h1>
<p>{info['samples']} samples every {info['interval_ms']} ms over {info['duration_s']:.1f} s · {_esc(info['hostname'])}
· generated {generated}. Every figure is measured: counter deltas over the measured interval.</p>
</header>
<main>
{body}
</main>
{spec_scripts(specs)}
<script>{EMBED_SCRIPT % json.dumps(list(charts))}</script>
</body>
</html>
"""
