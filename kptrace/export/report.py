"""report.html: one self-contained page with the charts and tables of one analysis.

The page works offline (a server room cannot reach a CDN): the Vega, Vega-Lite and vega-embed
JavaScript comes from the `vl-convert-python` package (`vl_convert.javascript_bundle`) and is
inlined once; each chart is a Vega-Lite spec in a `<script type="application/json">` block
that a small inline script hands to vegaEmbed (SVG renderer, no action links). Chart data is
aggregated in Polars first, so the page stays small whatever the trace size: this module
computes each chart's data (its "chart inputs"), and kptrace.export.charts lays them out with
altair, in this process or in a ChartProcess of its own (`draw`).

Every chart and table says where its figures come from: measured (read off the trace),
estimated (a statistic over measured figures, with a 95% interval) or modelled.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from kptrace import tables
from kptrace.schema import PROVENANCES
from kptrace.analysis import Analysis
from kptrace.attribute import COMPARABLE_BY, INDIRECT_PROVENANCE, Z95, comparable_requests
from kptrace.export.chart_process import in_process
from kptrace.export.perfetto import bin_count, irq_rate_bins
from kptrace.summary import NOT_SIGNIFICANT, SIGNIFICANCE, counter_source, counters_text, figure_text

#: Chart (a) draws at most this many time bins, and bins are never shorter than 10 ms.
MAX_BINS = 200
MIN_BIN_NS = 10_000_000
#: Sources drawn by name in the rate chart; the rest are summed as "other".
TOP_SOURCES = 8
#: CPUs drawn in the rate chart (the busiest by interrupt count).
TOP_CPUS = 8
#: Points per CDF curve.
CDF_POINTS = 200
#: Rows of the cost chart (by CPU share); the table below it has them all.
MAX_COST_ROWS = 20
#: Comparison groups (attribute.COMPARABLE_BY) in the slowdown chart (those with most requests).
TOP_GROUPS = 6

#: Cost components drawn, labelled with the provenance their columns declare.
COMPONENTS = {f"{label} ({tables.column('attribution', column).provenance})": column
              for label, column in (("direct", "direct_per_irq_ns"), ("indirect", "indirect_per_irq_ns"))}
#: An indirect estimate whose interval includes 0 is drawn apart, in grey: not a loss.
INDIRECT_NS = f"indirect, {NOT_SIGNIFICANT} (95% interval includes 0)"
COMPONENT_COLOURS = dict(zip((*COMPONENTS, INDIRECT_NS), ("#4c78a8", "#f58518", "#b0b0b0")))


# --------------------------------------------------------------------------- chart data


def input_name(meta: dict) -> str:
    """What the reader calls the input: the bundle directory, or the trace file."""
    files = [Path(f) for f in meta.get("files") or []]
    if not files:
        return "trace"
    if meta.get("bundle") is not None or len({f.parent for f in files}) == 1 and len(files) > 1:
        return files[0].parent.name or str(files[0].parent)
    return files[0].name


def _bin_ns(duration_ns: int) -> int:
    """Bin width: at least 10 ms, at most MAX_BINS bins, rounded up to 1, 2 or 5 x 10^k ns."""
    raw = max(MIN_BIN_NS, duration_ns / MAX_BINS)
    decade = 10 ** math.floor(math.log10(raw))
    return next(int(m * decade) for m in (1, 2, 5, 10) if m * decade >= raw)


def _hard_irqs(analysis: Analysis) -> pl.LazyFrame:
    return analysis.intervals.lazy().filter(pl.col("kind") == "hardirq").select("cpu", "name", "ts")


def _counted(irqs: pl.LazyFrame, by: str) -> pl.DataFrame:
    """Hard IRQs per `by` value (`len`), counted by the streaming engine over a scan."""
    return irqs.group_by(by).len().collect(engine="streaming")


def irq_rate_frame(analysis: Analysis) -> tuple[pl.DataFrame, int, int, list[int]]:
    """Hard IRQs per second per (cpu, source, time bin); zero bins are left out (the chart
    imputes them). Returns (frame, bin_ns, n_bins, cpus drawn)."""
    start, end = analysis.meta["start_ns"], analysis.meta["end_ns"]
    bin_ns = _bin_ns(max(end - start, 1))
    n_bins = bin_count(start, end, bin_ns)
    irqs = _hard_irqs(analysis)
    top = _counted(irqs, "name").sort("len", "name", descending=[True, False]).head(TOP_SOURCES)["name"]
    cpus = _counted(irqs, "cpu").sort("len", "cpu", descending=[True, False]).head(TOP_CPUS)["cpu"].sort()
    shown = irqs.filter(pl.col("cpu").is_in(cpus.implode())).with_columns(
        source=pl.when(pl.col("name").is_in(top.implode())).then(pl.col("name")).otherwise(pl.lit("other")))
    frame = (
        irq_rate_bins(shown, start, end, bin_ns, ["cpu", "source"])
        .select(cpu=pl.format("CPU {}", "cpu"), source="source", t_ms=pl.col("bin") * (bin_ns // 1_000_000),
                rate=pl.col("rate").round(1))
        .collect(engine="streaming")
        .sort("cpu", "source", "t_ms")
    )
    return frame, bin_ns, n_bins, cpus.to_list()


def service_cdf_frame(requests: pl.DataFrame) -> pl.DataFrame:
    """Empirical CDF of service time (µs) for clean and disrupted requests, thinned to about
    CDF_POINTS quantiles per group."""
    parts = []
    for disrupted in (False, True):
        durations = requests.filter((pl.col("disrupted") == disrupted) & (pl.col("dur") > 0))["dur"].sort()
        n = durations.len()
        if n == 0:
            continue
        index = sorted({round(k * (n - 1) / CDF_POINTS) for k in range(CDF_POINTS + 1)})
        label = f"{'disrupted' if disrupted else 'clean'} (n = {n:,})"
        parts.append(pl.DataFrame({
            "group": [label] * len(index),
            "service_us": (durations.gather(index) / 1e3).to_list(),
            "fraction": [(i + 1) / n for i in index],
        }))
    return pl.concat(parts) if parts else pl.DataFrame(schema={"group": pl.String, "service_us": pl.Float64,
                                                               "fraction": pl.Float64})


def cost_frame(attribution: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-interrupt costs in µs, long by component, with 95% bounds; CPU share in %), the
    MAX_COST_ROWS rows with the largest share of CPU, labelled `CPU n · source`."""
    top = (
        attribution.sort("share_of_cpu", descending=True, nulls_last=True).head(MAX_COST_ROWS)
        .with_columns(label=pl.format("CPU {} · {}", "cpu", "source"), order=pl.int_range(pl.len()))
    )
    parts = []
    for component, value in COMPONENTS.items():
        declared = tables.column("attribution", value)
        # Bounds where the declaration gives them (a bootstrap interval need not be symmetric), else ±ci.
        lo, hi = ((pl.col(b) for b in declared.bounds) if declared.bounds else
                  (pl.col(value) - pl.col(declared.ci).fill_null(0), pl.col(value) + pl.col(declared.ci).fill_null(0)))
        flag = SIGNIFICANCE.get(value)
        shown = pl.lit(component) if flag is None else (
            pl.when(pl.col(flag).fill_null(True)).then(pl.lit(component)).otherwise(pl.lit(INDIRECT_NS)))
        parts.append(top.filter(pl.col(value).is_not_null()).select(
            "label", "order", "count",
            part=pl.lit(component),
            component=shown,
            us=(pl.col(value) / 1e3).round(3),
            lo=(lo / 1e3).round(3),
            hi=(hi / 1e3).round(3),
        ))
    share = top.select(
        "label", "order", "rate_per_s",
        pct=(pl.col("share_of_cpu") * 100).round(4),
        lo=((pl.col("share_of_cpu") - pl.col("share_of_cpu_ci").fill_null(0)) * 100).round(4),
        hi=((pl.col("share_of_cpu") + pl.col("share_of_cpu_ci").fill_null(0)) * 100).round(4),
    )
    # A source seen once has no interval (NaN): no whisker, and no NaN, which JSON cannot hold.
    return pl.concat(parts).fill_nan(None), share.fill_nan(None)


def slowdown_frame(requests: pl.DataFrame) -> pl.DataFrame:
    """Own time (µs) of the requests the indirect estimate compares (attribute.comparable_requests,
    outliers dropped), per comparison group (COMPARABLE_BY; the TOP_GROUPS largest): clean, hit
    once by each source (mean, 95% interval, n), and the clean requests' length-weighted mean,
    the reference a hit request is measured against. Its gap to a source's mean, weighted over
    the groups, is the source's `indirect_per_irq_ns`."""
    by = list(COMPARABLE_BY)
    compared = requests.lazy().select(*by, "own_ns", "offcpu_ns", "sources")  # what it reads, no more
    kept = comparable_requests(compared).filter(~pl.col("outlier")).select(*by, "own_ns", "hit_source").collect()
    groups = (kept.group_by(by).len().sort(["len", *by], descending=[True] + [False] * len(by)).head(TOP_GROUPS)
              .with_row_index("group_order").drop("len"))
    kept = kept.join(groups, on=by).with_columns(own_us=pl.col("own_ns").cast(pl.Float64) / 1e3)
    hit = pl.col("hit_source").is_not_null()
    stats = (
        kept.with_columns(group=pl.when(hit).then(pl.lit("hit once by ") + pl.col("hit_source")).otherwise(pl.lit("clean")),
                          row_order=pl.when(hit).then(2).otherwise(0))
        .group_by("group_order", *by, "group", "row_order")
        .agg(n=pl.len(), mean=pl.col("own_us").mean(), ci=Z95 * pl.col("own_us").std() / pl.len().sqrt())
        .filter(pl.col("n") >= 2)
        .select("group_order", *by, "group", "row_order", "n", "mean",
                lo=pl.col("mean") - pl.col("ci"), hi=pl.col("mean") + pl.col("ci"))
    )
    reference = (
        kept.filter(~hit).group_by("group_order", *by)
        .agg(n=pl.len(), mean=pl.col("own_us").pow(2).sum() / pl.col("own_us").sum())
        .select("group_order", *by, group=pl.lit("clean, length-weighted (reference)"), row_order=pl.lit(1),
                n="n", mean="mean", lo=pl.lit(None, pl.Float64), hi=pl.lit(None, pl.Float64))
    )
    return (
        pl.concat([stats, reference.cast(stats.schema)])
        .with_columns(pl.col("mean", "lo", "hi").round(3),
                      panel=pl.format("CPU {} · tid {} · size class {}", *by))
        .sort("group_order", "row_order", "n", "group", descending=[False, False, True, False])
        .drop("group_order", "row_order")
    )


#: The what-if chart's panels: title -> predicted figure (kptrace.whatif.predict).
WHATIF_PANELS = {"capacity (requests per busy second)": "capacity_rps", "p99 request time (µs)": "p99_us"}


def whatif_frame(results: list[dict]) -> pl.DataFrame:
    """Per server, policy and panel: the predicted figure and its 95% bounds (modelled)."""
    several = len(results) > 1
    rows = [{"label": f"{r['server']['comm']} · {e['policy']}" if several else e["policy"],
             "kind": "vanilla (calibration)" if e["policy"] == "vanilla" else "policy",
             "panel": panel, "value": e["predicted"][key], "lo": e["predicted"][f"{key}_ci"][0],
             "hi": e["predicted"][f"{key}_ci"][1], "ratio": e["capacity_ratio"]}
            for r in results for e in r["policies"] for panel, key in WHATIF_PANELS.items()]
    return pl.DataFrame(rows, schema={"label": pl.String, "kind": pl.String, "panel": pl.String, "value": pl.Float64,
                                      "lo": pl.Float64, "hi": pl.Float64, "ratio": pl.Float64})


def calibration_text(result: dict) -> str:
    """Whether the vanilla replay reproduces the measured trace (docs/whatif.md, calibration)."""
    c = result["calibration"]
    status = "within 5%" if c["within_tolerance"] else "NOT within 5%: treat the predictions with care"
    return (f"{result['server']['comm']}: calibration (vanilla replay vs measured) capacity "
            f"{100 * c['capacity_error']:+.1f}%, p50 {100 * c['p50_error']:+.1f}%, p99 {100 * c['p99_error']:+.1f}% "
            f"({status})")


# --------------------------------------------------------------------------- chart inputs


# What each chart draws, as JSON-ready data for kptrace.export.charts (keyword arguments of its
# builder); computed here, in Polars, so that the charts need altair alone.


def irq_rate_inputs(analysis: Analysis) -> dict:
    frame, bin_ns, n_bins, cpus = irq_rate_frame(analysis)
    sources = (frame.group_by("source").agg(pl.col("rate").sum())  # ties by name: one order every run
               .sort("rate", "source", descending=[True, False])["source"].to_list())
    return {"values": frame.to_dicts(), "bin_ms": bin_ns // 1_000_000, "n_bins": n_bins, "sources": sources,
            "cpus_drawn": len(cpus), "cpus_with_irqs": _counted(_hard_irqs(analysis), "cpu").height,
            "top_sources": TOP_SOURCES}


def cost_inputs(attribution: pl.DataFrame) -> dict:
    costs, share = cost_frame(attribution)
    more = f"; the {MAX_COST_ROWS} costliest of {attribution.height} rows (all in the table below)" \
        if attribution.height > MAX_COST_ROWS else ""
    drawn = set(costs["component"])
    return {"costs": costs.to_dicts(), "share": share.to_dicts(), "labels": share.sort("order")["label"].to_list(),
            "parts": list(COMPONENTS), "colours": {c: colour for c, colour in COMPONENT_COLOURS.items() if c in drawn},
            "subtitle": [f"direct = the handler and the softirqs it raised; indirect = extra own time of the requests "
                         f"it hit{more}",
                         "share of CPU = rate × (direct + indirect when significant); no orange bar: no request was "
                         f"hit once by that source; grey: {INDIRECT_NS}"]}


def counters_subtitle(counters: dict) -> str:
    """What the slowdown chart can show, given the counter source (summary.counter_source)."""
    if counters["kind"] == "hardware-pmu":
        return ("this trace has hardware counters (cycles/instructions): the slowdown also shows as lower IPC; "
                "this chart shows it in time")
    return f"this trace has no hardware counters (counters: {counters['kind']}), so no IPC: the slowdown is shown in time"


def slowdown_inputs(slowdown: pl.DataFrame, counters: dict) -> dict:
    """The rows of slowdown_frame, by panel (comparison group: CPU, thread and size class)."""
    frame = slowdown.with_columns(is_clean=pl.col("group").str.starts_with("clean"))
    panels = {panel: frame.filter(pl.col("panel") == panel).to_dicts()
              for panel in frame["panel"].unique(maintain_order=True).to_list()}
    return {"panels": panels, "subtitle": [
        "own time = service time minus the disruptions and off-CPU time inside it; compared as the indirect "
        "estimate compares them: within one CPU, thread and size class, requests switched out, hit more than "
        "once or far beyond their group's typical own time left out", counters_subtitle(counters)]}


def whatif_inputs(results: list[dict]) -> dict:
    frame = whatif_frame(results)
    return {"panels": {panel: frame.filter(pl.col("panel") == panel).to_dicts() for panel in WHATIF_PANELS},
            "labels": list(dict.fromkeys(frame["label"])),
            "subtitle": [calibration_text(r) for r in results]
            + ["modelled: a replay of the serving cores under each policy with its default parameters; "
               "95% intervals: bootstrap over requests and interrupts"]}


def chart_inputs(analysis: Analysis, summary: dict) -> dict[str, dict]:
    """The chart inputs of every chart the page holds, by element id; a chart without data is left out."""
    return measured_chart_inputs(analysis, summary["input"]["counters"]) | whatif_chart_inputs(summary)


def whatif_chart_inputs(summary: dict) -> dict[str, dict]:
    """The what-if's chart, when the summary holds what-if results."""
    return {"whatif": whatif_inputs(summary["whatif"])} if summary.get("whatif") else {}


def measured_chart_inputs(analysis: Analysis, counters: dict) -> dict[str, dict]:
    """The charts of measured and estimated figures (all but the what-if's), by element id:
    they need no summary but its counter source (summary.counter_source)."""
    charts = {}
    if _counted(_hard_irqs(analysis), "cpu").height:
        charts["irq-rate"] = irq_rate_inputs(analysis)
    requests = analysis.requests
    if requests is not None and requests.filter(pl.col("dur") > 0).height:
        charts["service-cdf"] = {"values": service_cdf_frame(requests).to_dicts()}
    if analysis.attribution.height:
        charts["cost"] = cost_inputs(analysis.attribution)
    if requests is not None and (slowdown := slowdown_frame(requests)).height:
        charts["slowdown"] = slowdown_inputs(slowdown, counters)
    return charts


# --------------------------------------------------------------------------- HTML


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       margin: 0; background: #f4f5f7; }
header { background: #1f2d3d; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c9d3de; }
main { max-width: 1180px; margin: 0 auto; padding: 12px 24px 40px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 16px 20px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 16px 0 4px; }
.headline { border-left: 4px solid #1f2d3d; }
.headline ul { font-size: 14.5px; }
.headline li { margin: 3px 0; }
.provenance { font-size: 12.5px; color: #444; background: #f7f8fa; border-left: 3px solid #9aa5b1;
              padding: 6px 10px; margin: 10px 0 0; }
.provenance b { color: #222; }
.chart { overflow-x: auto; }
.missing { color: #8a5300; background: #fff7e6; border-left: 3px solid #e0a030; padding: 8px 12px; }
table { border-collapse: collapse; font-size: 13px; margin-top: 6px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e8eb; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
.unit { font-weight: normal; color: #666; font-size: 11.5px; display: block; }
ul { margin: 4px 0; padding-left: 20px; }
.facts td:first-child { color: #555; white-space: nowrap; }
code { font-size: 12px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
"""

EMBED_SCRIPT = """
(function () {
  const ids = %s;
  const options = {renderer: "svg", actions: false};
  Promise.all(ids.map(function (id) {
    const spec = JSON.parse(document.getElementById("spec-" + id).textContent);
    return vegaEmbed("#" + id, spec, options);
  })).then(function () {
    document.body.setAttribute("data-charts", "rendered");
  }).catch(function (error) {
    document.body.setAttribute("data-charts", "failed");
    console.error("kptrace report: chart failed:", error);
  });
})();
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _json_in_script(value) -> str:
    """JSON that cannot end the <script> element it sits in (`<\\/` is a valid JSON escape of `</`)."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _js_in_script(code: str) -> str:
    """JavaScript that cannot end its <script> element (`<\\/script` means the same in strings and regexes)."""
    return re.sub(r"</(script)", r"<\\/\1", code, flags=re.I)


def _vega_lite_version(specs: dict[str, dict]) -> str:
    """The Vega-Lite version (major.minor) the specs were written for, from their `$schema` URL."""
    schema = next(iter(specs.values()))["$schema"]
    return re.search(r"/vega-lite/v(\d+\.\d+)", schema).group(1)


def spec_scripts(specs: dict[str, dict]) -> str:
    """Each spec in its own JSON block, `spec-ID`, where EMBED_SCRIPT finds it for the element ID."""
    return "\n".join(f'<script type="application/json" id="spec-{chart_id}">{_json_in_script(spec)}</script>'
                     for chart_id, spec in specs.items())


def vega_script(specs: dict[str, dict]) -> str:
    """The <script> element with the Vega bundle the specs need, or nothing for a page without charts."""
    return f"<script>{_js_in_script(_vega_bundle(_vega_lite_version(specs)))}</script>" if specs else ""


@functools.cache
def _vega_bundle(version: str) -> str:
    """Vega, Vega-Lite `version` and vega-embed as one script. Building it takes vl-convert about
    a second, so it is kept in the user's cache directory, keyed by both versions."""
    import vl_convert

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kptrace"
    cached = cache / f"vega-bundle-vlconvert{vl_convert.__version__}-vl{version}.js"
    if cached.exists():
        return cached.read_text()
    try:
        bundle = vl_convert.javascript_bundle(vl_version=version)
    except (ValueError, RuntimeError):  # a vl-convert without this Vega-Lite: its own (newest) one
        bundle = vl_convert.javascript_bundle()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(bundle)
        partial.replace(cached)
    except OSError:
        pass  # no writable cache: build it again next time
    return bundle


def _num(value, digits: int = 1, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value / scale:,.{digits}f}"


def _table(header: list[tuple[str, str, bool]], rows: list[list[str]], cls: str = "") -> str:
    """header: (name, unit, numeric) per column; cells are already escaped."""
    head = "".join(f'<th class="{"num" if numeric else ""}">{_esc(name)}'
                   + (f'<span class="unit">{_esc(unit)}</span>' if unit else "") + "</th>"
                   for name, unit, numeric in header)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if numeric else ""}">{cell}</td>'
                                    for cell, (_, _, numeric) in zip(row, header)) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _provenance(kind: str, text: str) -> str:
    return f'<p class="provenance"><b>{_esc(kind)}</b> — {text}</p>'


def _prov(table: str, column: str) -> str:
    """measured | estimated | modelled, as the table declares the column (kptrace.tables)."""
    return tables.column(table, column).provenance


def _declared_text(table: str, shown: list[tuple[str, str]]) -> tuple[str, str]:
    """(the provenance words used, one sentence per shown column) for (label, column) pairs, from
    the declarations: what each figure means and where it comes from."""
    declared = [(label, tables.column(table, column)) for label, column in shown]
    kinds = " / ".join(p for p in PROVENANCES if any(c.provenance == p for _, c in declared))
    sentences = "; ".join(f"{_esc(label)} is <b>{c.provenance}</b>: "
                          + re.sub(r"`([^`]*)`", r"<code>\1</code>", _esc(c.meaning)) for label, c in declared)
    return kinds, sentences + "."


#: The attribution table: (header, column, display unit, scale, digits); each figure is shown with
#: the interval its declaration names.
ATTRIBUTION_VIEW = (
    ("interrupts", "count", "count", 1, 0),
    ("rate", "rate_per_s", "per s", 1, 1),
    ("direct", "direct_per_irq_ns", "µs/IRQ", 1e3, 2),
    ("indirect", "indirect_per_irq_ns", "µs/IRQ", 1e3, 2),
    ("share of CPU", "share_of_cpu", "%", 0.01, 3),
)


def attribution_table(analysis: Analysis) -> str:
    header = [("CPU", "", True), ("source", "", False)]
    for label, column, unit, *_ in ATTRIBUTION_VIEW:
        declared = tables.column("attribution", column)
        header.append((label, f"{unit}{' ±95%' if declared.ci else ''}, {declared.provenance}", True))
    header.append(("requests hit / clean", f"compared, {_prov('attribution', 'n_hit_requests')}", True))
    rows = []
    for r in analysis.attribution.iter_rows(named=True):
        cells = [_esc(r["cpu"]), f"<code>{_esc(r['source'])}</code>"]
        for _, column, _, scale, digits in ATTRIBUTION_VIEW:
            cells.append(_esc(figure_text(r, "attribution", column, scale, digits)))
        cells.append("–" if r["n_hit_requests"] is None else f"{r['n_hit_requests']:,} / {r['n_clean_requests']:,}")
        rows.append(cells)
    # The per-row provenance words repeat the declarations; only the reasons for a missing estimate are new.
    reasons = sorted(set(analysis.attribution["indirect_provenance"].to_list()) - {INDIRECT_PROVENANCE})
    kinds, text = _declared_text("attribution", [(label, column) for label, column, *_ in ATTRIBUTION_VIEW])
    return (_table(header, rows) + _provenance(
        kinds, text + f" ± is a 95% interval; {NOT_SIGNIFICANT} [low, high]: the indirect estimate's 95% interval "
        "includes 0, so it is not counted as a loss."
        + (" No indirect estimate: " + "; ".join(f"“{_esc(p)}”" for p in reasons) + "." if reasons else "")))


def requests_tables(analysis: Analysis, summary: dict) -> str:
    overview = summary["requests"]["by_disrupted"]
    dur, own = _prov("requests", "dur"), _prov("requests", "own_ns")
    header = [("requests", "", False), ("count", dur, True), ("median", f"µs, {dur}", True),
              ("p99", f"µs, {dur}", True), ("own time median", f"µs, {own}", True)]
    rows = [["disrupted" if r["disrupted"] else "clean", _num(r["requests"], 0), _num(r["median_us"]),
             _num(r["p99_us"]), _num(r["own_median_us"])] for r in overview]
    classes = (
        analysis.requests.group_by("size_class")
        .agg(n=pl.len(), disrupted=pl.col("disrupted").mean(), median=pl.col("dur").median() / 1e3,
             p99=pl.col("dur").quantile(0.99) / 1e3, bytes_in=pl.col("bytes_in").median(),
             bytes_out=pl.col("bytes_out").median())
        .sort("n", "size_class", descending=[True, False])  # classes of equal count in one order every run
    )
    class_header = [("size class", "bytes in / out class", False), ("count", dur, True),
                    ("disrupted", "% of requests", True), ("median", f"µs, {dur}", True),
                    ("p99", f"µs, {dur}", True), ("median bytes in / out", _prov("requests", "bytes_in"), True)]
    class_rows = [[f"<code>{_esc(k['size_class'])}</code>", _num(k["n"], 0), _num(k["disrupted"], 1, 0.01),
                   _num(k["median"]), _num(k["p99"]), f"{_num(k['bytes_in'], 0)} / {_num(k['bytes_out'], 0)}"]
                  for k in classes.iter_rows(named=True)]
    return (_table(header, rows) + "<h3>By request size class</h3>" + _table(class_header, class_rows)
            + _provenance("measured", _esc(summary["requests"]["provenance"])
                          + "; a request runs from a read that returned data to the last send answering it on "
                            "the same fd (an epoll server)."))


def facts_table(analysis: Analysis, summary: dict) -> str:
    meta, info = analysis.meta, summary["input"]
    facts = [
        ("input", ", ".join(f"<code>{_esc(f)}</code>" for f in meta.get("files") or [])),
        ("format", _esc(info["format"])),
        ("events", f"{info['events']:,}"),
        ("duration", f"{info['duration_s']:.3f} s"),
        ("trace clock", f"{_esc(info['clock'])}, resolution {info['ts_resolution_ns']:,} ns"),
        ("CPUs", ", ".join(f"CPU {c['cpu']}: {c['events']:,} events"
                           + (f", {c['lost_events']:,} lost" if c.get("lost_events") else "")
                           + (", buffer wrapped" if c.get("buffer_wrapped") else "") for c in meta["per_cpu"])),
        ("lost events", f"{info['lost_events']:,}"),
        ("counters", _esc(counters_text(info["counters"]))),
        ("unparsed lines", f"{meta.get('unparsed_lines', 0):,}"),
    ]
    if meta.get("unknown_events"):
        facts.append(("events without typed columns", _esc(", ".join(map(str, meta["unknown_events"])))))
    bundle = meta.get("bundle") or {}
    if bundle:
        facts += [("recorded", _esc(f"{bundle.get('created_utc', '?')} on {bundle.get('hostname', '?')}")),
                  ("recorder command", f"<code>{_esc(' '.join(bundle.get('command') or []))}</code>")]
        server = (bundle.get("workload") or {}).get("server")
        if server:
            facts.append(("server", _esc(f"{server.get('program')} on CPU {server.get('cpu')}, "
                                         f"{server.get('threads')} thread(s)")))
    facts.append(("kptrace", _esc(meta.get("kptrace_version", "?"))))
    rows = [[_esc(name), value] for name, value in facts]
    return _table([("fact", "", False), ("value", "", False)], rows, "facts") + _provenance(
        "measured", "read from the trace and the bundle's manifest.")


def notes_section(summary: dict) -> str:
    warnings, notes = summary["warnings"], summary["notes"]

    def listing(items):
        return "<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>" if items else "<p>none</p>"

    return f'<div class="grid"><div><h3>Warnings</h3>{listing(warnings)}</div><div><h3>Notes</h3>{listing(notes)}</div></div>'



def _figure(charts: dict, chart_id: str, provenance: str, missing: str) -> str:
    if chart_id not in charts:
        return f'<p class="missing">{_esc(missing)}</p>'
    return f'<div class="chart" id="{chart_id}"></div>{provenance}'


def headline(analysis: Analysis, summary: dict) -> str:
    """The few figures a reader wants first: the costliest sources, and clean vs disrupted requests."""
    items = []
    share, rate, direct, indirect = (_prov("attribution", c) for c in
                                     ("share_of_cpu", "rate_per_s", "direct_per_irq_ns", "indirect_per_irq_ns"))
    for row in analysis.attribution.sort("share_of_cpu", descending=True, nulls_last=True).head(3).iter_rows(named=True):
        extra = ("" if row["indirect_per_irq_ns"] is None else
                 f" + {_esc(figure_text(row, 'attribution', 'indirect_per_irq_ns', 1e3, 2))} µs indirect ({indirect})")
        items.append(
            f"<li><code>{_esc(row['source'])}</code> on CPU {row['cpu']}: <b>{figure_text(row, 'attribution', 'share_of_cpu', 0.01, 2)}"
            f" % of that CPU</b> ({share}) — {row['rate_per_s']:,.0f} interrupts/s ({rate}), "
            f"{figure_text(row, 'attribution', 'direct_per_irq_ns', 1e3, 2)} µs direct ({direct}){extra} each</li>")
    overview = {r["disrupted"]: r for r in summary["requests"]["by_disrupted"]}
    if True in overview and False in overview:
        clean, hit = overview[False], overview[True]
        share = hit["requests"] / (hit["requests"] + clean["requests"])
        items.append(
            f"<li>{share:.1%} of {clean['requests'] + hit['requests']:,} requests were disrupted (measured): median "
            f"<b>{hit['median_us']:.1f} µs</b> vs {clean['median_us']:.1f} µs clean, p99 <b>{hit['p99_us']:.1f} µs</b> vs "
            f"{clean['p99_us']:.1f} µs (measured)</li>")
    if not items:
        return ""
    return ("<section class=\"headline\"><h2>At a glance</h2><ul>" + "".join(items) + "</ul>"
            + _provenance("measured / estimated", "± is a 95% interval; details and method in the sections below.")
            + "</section>")


def whatif_text(summary: dict) -> str:
    """The what-if chart's provenance line, and what each policy changed (its notes)."""
    results = summary.get("whatif") or []
    notes = sorted({f"{e['policy']}: {n}" for r in results for e in r["policies"] for n in e["notes"]
                    if e["policy"] != "vanilla"})
    return (_esc(results[0]["provenance"] if results else "") + ". Units: requests per busy second of the "
            "serving cores; µs at the recorded offered load. Figures and every other policy figure: "
            "<code>summary.json</code> (<code>whatif</code>) and <code>whatif.parquet</code>; method: "
            "<code>docs/whatif.md</code>." + ("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
                                              if notes else ""))


def _cost_text() -> tuple[str, str]:
    """The cost chart's provenance line, from the declarations of the columns it draws."""
    kinds, text = _declared_text("attribution", [("direct µs per interrupt", "direct_per_irq_ns"),
                                                 ("indirect µs per interrupt", "indirect_per_irq_ns"),
                                                 ("share of CPU", "share_of_cpu")])
    return kinds, text + " Whiskers: 95% intervals. Units: µs per interrupt; % of that CPU's time."


#: What the page reads of each request (charts, tables, attribute.comparable_requests).
REPORT_REQUEST_COLUMNS = ("cpu", "tid", "size_class", "dur", "own_ns", "offcpu_ns", "sources", "disrupted",
                          "bytes_in", "bytes_out")


def report_view(analysis: Analysis) -> Analysis:
    """The analysis narrowed to what the page draws: the request columns it reads, collected once,
    and the hard IRQ intervals as a query (its tables may be scans of 50 M-row files: the
    interrupt chart collects only counts per bin)."""
    irqs = analysis.intervals.lazy().filter(pl.col("kind") == "hardirq").select("cpu", "name", "ts", "kind")
    requests = None if analysis.requests is None else analysis.requests.lazy().select(REPORT_REQUEST_COLUMNS).collect()
    return replace(analysis, intervals=irqs, requests=requests)


#: Builds the specs of chart inputs: kptrace.export.charts.specs, here or in a ChartProcess.
Draw = Callable[[dict[str, dict]], dict[str, dict]]


def chart_specs(analysis: Analysis, summary: dict, measured: dict[str, dict] | None = None,
                draw: Draw = in_process) -> dict[str, dict]:
    """The Vega-Lite spec of each chart the page holds, by element id, built by `draw`.
    `measured`: the specs of measured_chart_specs, when built already (beside the summary)."""
    if measured is None:
        return draw(chart_inputs(report_view(analysis), summary))
    return measured | draw(whatif_chart_inputs(summary))


def measured_chart_specs(analysis: Analysis, draw: Draw = in_process) -> dict[str, dict]:
    """The specs of the charts measured_chart_inputs gives: all but the what-if's, which need no
    summary, so that write_all has them built while the summary is built."""
    return draw(measured_chart_inputs(report_view(analysis), counter_source(analysis)))


def render_report(analysis: Analysis, summary: dict, specs: dict[str, dict] | None = None) -> str:
    """The whole page as one HTML string, with the chart specs given (chart_specs) or built here."""
    charts = chart_specs(analysis, summary) if specs is None else specs
    analysis = report_view(analysis)
    name = input_name(analysis.meta)
    if analysis.requests is None:
        reason = "; ".join(n for n in summary["notes"] if "request" in n) or "no per-request view: no requests found"
        no_requests = reason[:1].upper() + reason[1:] + "."
    else:
        no_requests = "Too few requests for this chart."
    sections = [
        ("Interrupt activity", _figure(charts, "irq-rate", _provenance(
            "measured", "hard IRQ handler entries counted per CPU and source in each time bin, divided by the bin "
                        "length; unit: interrupts per second."), "No hard interrupts in this trace.")),
        ("Request service time", _figure(charts, "service-cdf", _provenance(
            "measured", "service time of each request from the syscall events (first receive to last answering "
                        "send); unit: µs. Curves are drawn through quantiles of all requests."), no_requests)),
        ("Cost per interrupt source", _figure(charts, "cost", _provenance(
            *_cost_text()), "No complete interrupt in this trace.")
         + "<h3>All sources</h3>" + attribution_table(analysis)),
        ("Slowdown around interrupts", _figure(charts, "slowdown", _provenance(
            f"{_prov('requests', 'own_ns')} / estimated", f"own time per request is <b>{_prov('requests', 'own_ns')}</b> "
            "(service time minus disruptions and off-CPU time inside it; unit: µs); the mean and 95% interval of each "
            "group are <b>estimated</b>. The gap between a source's bar and the clean bar is that source's indirect "
            "cost for the size class."),
            no_requests)),
    ]
    sections.append(("What-if: interrupt policies (modelled)", _figure(charts, "whatif", _provenance(
        "modelled", whatif_text(summary)), next((n for n in summary["notes"] if n.startswith("no what-if")),
                                                "No what-if predictions for this trace."))))
    if analysis.requests is not None:
        sections.append(("Requests overview", requests_tables(analysis, summary)))
    sections.append(("Warnings and notes", notes_section(summary)))
    sections.append(("Input", facts_table(analysis, summary)))

    body = headline(analysis, summary) + "\n".join(
        f'<section><h2>{_esc(title)}</h2>{content}</section>' for title, content in sections)
    info = summary["input"]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="kptrace-charts" content="{len(charts)}">
<title>kptrace report — {_esc(name)}</title>
<style>{CSS}</style>
{vega_script(charts)}
</head>
<body>
<header>
<h1>kptrace report — {_esc(name)}</h1>
<p>{_esc(info['format'])} · {info['events']:,} events over {info['duration_s']:.3f} s · {len(analysis.meta['per_cpu'])} CPUs
· counters: {_esc(info['counters']['kind'])} · generated {generated} by kptrace {_esc(analysis.meta.get('kptrace_version', ''))}</p>
</header>
<main>
{body}
</main>
{spec_scripts(charts)}
<script>{EMBED_SCRIPT % json.dumps(list(charts))}</script>
</body>
</html>
"""


def write_report(path: str | Path, analysis: Analysis, summary: dict, specs: dict[str, dict] | None = None) -> Path:
    """Write report.html (one file, works offline) and return its path; `specs`: chart_specs, if built already."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(analysis, summary, specs), encoding="utf-8")
    return path
