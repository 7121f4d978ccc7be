"""fleet.html and the terminal view of a fleet run: hosts and interrupt sources ranked by the
capacity they lose, and policies by the capacity they are predicted to win. One offline page built
like report.html (its CSS, inlined Vega bundle and embed script); charts are drawn from fleet.json's
rankings, so the page says exactly what the JSON says."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import altair as alt

from kptrace.export.charts import chart_title
from kptrace.export.report import CSS, EMBED_SCRIPT, _esc, _provenance, _table, spec_scripts, vega_script
from kptrace.summary import plus_minus
from kptrace.tables import FLEET_TABLES


def _meaning(table: str, column: str) -> str:
    declared = next(c for c in FLEET_TABLES[f"fleet/{table}"].columns if c.name == column)
    return f"<b>{declared.provenance}</b>: {_esc(declared.meaning.replace('`', ''))}"


def _pct_rows(rows: list[dict], label: str) -> list[dict]:
    """Rows of a capacity-loss ranking in % with their 95% whiskers."""
    drawn = []
    for row in rows:
        pct, ci = 100 * (row["capacity_loss"] or 0.0), 100 * (row["capacity_loss_ci"] or 0.0)
        drawn.append({"label": label.format(**row), "pct": round(pct, 4), "lo": round(max(pct - ci, 0.0), 4),
                      "hi": round(pct + ci, 4)})
    return drawn


def loss_chart(rows: list[dict], title: str, subtitle: str) -> alt.LayerChart:
    """Bars of capacity lost (% of the CPU's busy time), whiskers at the 95% interval."""
    base = alt.Chart(alt.Data(values=rows))
    y = alt.Y("label:N", title=None, sort=[r["label"] for r in rows], axis=alt.Axis(labelLimit=360))
    bars = base.mark_bar(color="#4c78a8", height=alt.RelativeBandSize(0.6)).encode(
        x=alt.X("pct:Q", title="capacity lost, % of the CPU's busy time (modelled; whiskers: 95% interval)"), y=y,
        tooltip=["label:N", alt.Tooltip("pct:Q", title="% lost", format=".2f"),
                 alt.Tooltip("lo:Q", title="95% low", format=".2f"), alt.Tooltip("hi:Q", title="95% high", format=".2f")])
    whiskers = base.mark_rule(color="#222").encode(x="lo:Q", x2="hi:Q", y=y)
    return alt.layer(bars, whiskers).properties(width=560, height=alt.Step(24), title=chart_title(title, subtitle))


def gain_chart(rows: list[dict]) -> alt.LayerChart:
    """Predicted capacity × vanilla per (input, server, policy), with its 95% interval."""
    drawn = [{"label": f"{r['input']} · {r['server']} · {r['policy']}", "ratio": r["capacity_ratio"],
              "lo": r["capacity_ratio_lo"], "hi": r["capacity_ratio_hi"], "policy": r["policy"]} for r in rows]
    base = alt.Chart(alt.Data(values=drawn))
    y = alt.Y("label:N", title=None, sort=[r["label"] for r in drawn], axis=alt.Axis(labelLimit=360))
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("ratio:Q", title="predicted capacity × vanilla (modelled; error bars: 95% interval)",
                scale=alt.Scale(zero=False)), y=y, color=alt.Color("policy:N", legend=alt.Legend(orient="top")),
        tooltip=["label:N", alt.Tooltip("ratio:Q", format=".3f"), alt.Tooltip("lo:Q", title="95% low", format=".3f"),
                 alt.Tooltip("hi:Q", title="95% high", format=".3f")])
    errors = base.mark_errorbar(ticks=True, color="#222").encode(x=alt.X("lo:Q", title=None), x2="hi:Q", y=y)
    return alt.layer(points, errors).properties(width=560, height=alt.Step(24), title=chart_title(
        "Predicted capacity gain per policy", "modelled: each input's what-if replay with the policy's default "
                                              "parameters; 1 = no change"))


def build_charts(summary: dict) -> dict[str, alt.TopLevelMixin]:
    """The charts the page holds, by element id; a ranking without rows has no chart."""
    charts = {}
    hosts = summary["hosts_by_capacity_lost"]["rows"]
    if hosts:
        charts["hosts"] = loss_chart(_pct_rows(hosts, "{input} · {host} · CPU {worst_cpu}"),
                                     "Inputs by capacity lost to interrupts",
                                     "on each input's most taxed CPU: its sources' losses summed")
    sources = summary["sources_by_capacity_lost"]["rows"]
    if sources:
        charts["sources"] = loss_chart(_pct_rows(sources, "{input} · CPU {cpu} · {source}"),
                                       "Interrupt sources by capacity lost", "every (input, CPU, source) of the fleet")
    if summary["policies_by_predicted_gain"]["rows"]:
        charts["policies"] = gain_chart(summary["policies_by_predicted_gain"]["rows"])
    return charts


def _figure(charts: dict, chart_id: str, provenance: str, missing: str) -> str:
    if chart_id not in charts:
        return f'<p class="missing">{_esc(missing)}</p>'
    return f'<div class="chart" id="{chart_id}"></div>{provenance}'


def _loss(row: dict) -> str:
    return plus_minus(row["capacity_loss"], row["capacity_loss_ci"], 0.01, 2)


def inputs_section(summary: dict) -> str:
    rows = [[_esc(r["input"]), _esc(r["host"]), _esc(r["kernel"]), _esc(r["cpu_model"]), _esc(r["nic"]),
             _esc(r["status"]), _esc(r["error"] or ""), _esc("–" if r["worst_cpu"] is None else r["worst_cpu"]),
             _loss(r), _esc(r["top_source"] or "–")] for r in summary["inputs"]]
    header = [("input", "", False), ("host", "", False), ("kernel", "", False), ("CPU model", "", False),
              ("NIC", "", False), ("status", "", False), ("error", "", False), ("worst CPU", "", True),
              ("capacity lost", "% ± 95%", True), ("top source", "", False)]
    return _table(header, rows) + _provenance("modelled", _meaning("inputs", "capacity_loss") + "; ± "
                                              + _meaning("inputs", "capacity_loss_ci"))


def render_fleet_report(summary: dict) -> str:
    """The whole page as one HTML string."""
    charts = build_charts(summary)
    counts = summary["counts"]
    sources_text = _provenance("modelled", _esc("capacity lost is attribution.capacity_loss of each input's own "
                                                "analysis (docs/tables.md); unit: % of that CPU's busy time."))
    sections = [
        ("Hosts by capacity lost", _figure(charts, "hosts", _provenance("modelled", _meaning("inputs", "capacity_loss")),
                                           "No input was analysed.")),
        ("Interrupt sources by capacity lost", _figure(charts, "sources", sources_text,
                                                       "No source with a capacity loss: no input had requests.")),
        ("Predicted gain per policy", _figure(charts, "policies", _provenance(
            "modelled", "capacity_ratio of each input's whatif.parquet (docs/whatif.md), 95% bounds from its "
                        "bootstrap; the fleet table is fleet/whatif.parquet."),
            "No what-if predictions: no input had an epoll server to replay.")),
        ("Inputs", inputs_section(summary)),
    ]
    body = "\n".join(f"<section><h2>{_esc(title)}</h2>{content}</section>" for title, content in sections)
    specs = {chart_id: chart.to_dict() for chart_id, chart in charts.items()}
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="kptrace-charts" content="{len(charts)}">
<title>kptrace fleet — {counts['inputs']} inputs</title>
<style>{CSS}</style>
{vega_script(specs)}
</head>
<body>
<header>
<h1>kptrace fleet — {counts['inputs']} inputs</h1>
<p>{counts['ok']} analysed · {counts['failed']} failed · each input's own report: OUT/&lt;input&gt;/report.html
· generated {generated}</p>
</header>
<main>
{body}
</main>
{spec_scripts(specs)}
<script>{EMBED_SCRIPT % json.dumps(list(charts))}</script>
</body>
</html>
"""


def write_fleet_report(path: Path, summary: dict) -> Path:
    """Write fleet.html (one file, works offline) and return its path."""
    path.write_text(render_fleet_report(summary), encoding="utf-8")
    return path


def render_fleet_text(summary: dict, top: int = 10) -> str:
    """The terminal view: the rankings, then where the files are."""
    lines = [f"fleet: {summary['counts']['ok']} of {summary['counts']['inputs']} inputs analysed "
             f"({summary['counts']['failed']} failed)", "",
             "inputs by capacity lost on their most taxed CPU (modelled; % of that CPU's busy time; ±: 95%)"]
    lines += [f"  {_loss(r):>14}  {r['input']} ({r['host']}) CPU {r['worst_cpu']}, top source {r['top_source']}"
              for r in summary["hosts_by_capacity_lost"]["rows"][:top]]
    lines += ["", "sources by capacity lost (modelled; % of that CPU's busy time; ±: 95%)"]
    lines += [f"  {_loss(r):>14}  {r['source']} on CPU {r['cpu']} of {r['input']} ({r['host']})"
              for r in summary["sources_by_capacity_lost"]["rows"][:top]]
    if policies := summary["policies_by_predicted_gain"]["rows"]:
        lines += ["", "policies by predicted capacity gain (modelled; × vanilla [95% interval])"]
        lines += [f"  {r['capacity_ratio']:.3f} [{r['capacity_ratio_lo']:.3f}, {r['capacity_ratio_hi']:.3f}]  "
                  f"{r['policy']} for {r['server']} of {r['input']}" for r in policies[:top]]
    lines += ["", f"tables: {Path(summary['report']).parent}/fleet/*.parquet, fleet.json, report: {summary['report']}"]
    return "\n".join(lines)
