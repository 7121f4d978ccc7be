"""The report's charts as Vega-Lite specs, built by altair from plain data (lists and dicts).

kptrace.export.report computes what each chart draws in Polars (its "chart inputs", JSON-ready);
this module only lays it out, so it needs altair and nothing else. That lets altair, about 0.3 s
of pure Python to import and as much to build the specs, run in a process of its own beside the
analysis (kptrace.export.chart_process, `python -m kptrace.export.charts`): one request per line
on stdin, the specs as one line on stdout.

Every encoding channel is given as an object (alt.X("lo:Q"), alt.Tooltip("cpu:N")), never as a
bare shorthand string: altair turns each string into its channel object by matching it against
every class of the Vega-Lite schema (from_dict), which took a third of the report's time."""

from __future__ import annotations

import json
import os
import sys

import altair as alt
from altair.utils.schemapi import debug_mode

WIDTH = 900


def chart_title(text: str, subtitle: str | list[str]) -> alt.TitleParams:
    return alt.TitleParams(text, subtitle=subtitle, anchor="start", fontSize=15, subtitleFontSize=12,
                           subtitleColor="#555", offset=10)


def _shared(channel: str) -> alt.Resolve:
    """A composed chart's scale of `channel` shared by its panels. Composed charts get this, their
    sizes and titles through the constructors: each .properties() or .resolve_scale() would copy
    every panel again (altair copies deeply: the slowdown chart's six panels took 0.2 s of CPU)."""
    return alt.Resolve(scale=alt.ScaleResolveMap(**{channel: "shared"}))


def irq_rate_chart(values: list[dict], bin_ms: int, n_bins: int, sources: list[str], cpus_drawn: int,
                   cpus_with_irqs: int, top_sources: int) -> alt.FacetChart:
    """Hard IRQs per second per CPU (a row each) and source, in time bins; missing bins are zeros."""
    shown = "" if cpus_drawn >= cpus_with_irqs else f"; the {cpus_drawn} CPUs with most interrupts"
    height = 150 if cpus_drawn <= 2 else 90
    return (
        alt.Chart(alt.Data(values=values))
        .transform_impute(impute="rate", key="t_ms", value=0, groupby=["cpu", "source"],
                          keyvals=alt.ImputeSequence(start=0, stop=n_bins * bin_ms, step=bin_ms))
        .transform_calculate(t_s="datum.t_ms / 1000")
        .mark_line(interpolate="step-after", strokeWidth=1.4)
        .encode(
            x=alt.X("t_s:Q", title="time since trace start (s)", scale=alt.Scale(nice=False),
                    axis=alt.Axis(labelFlush=False, tickCount=14)),
            y=alt.Y("rate:Q", title="hard IRQs / s"),
            color=alt.Color("source:N", title="source", sort=sources, scale=alt.Scale(scheme="tableau10")),
            tooltip=[alt.Tooltip("cpu:N"), alt.Tooltip("source:N"),
                     alt.Tooltip("t_s:Q", title="bin start (s)", format=".3f"),
                     alt.Tooltip("rate:Q", title="IRQs/s", format=",.0f")],
        )
        .properties(width=WIDTH - 60, height=height)
        .facet(row=alt.Row("cpu:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left",
                                                                   labelFontWeight="bold")))
        .properties(title=chart_title("Hard interrupts per second, per CPU",
                                 f"{bin_ms} ms bins; colour = IRQ handler or APIC vector{shown}; "
                                 f"sources beyond the {top_sources} most frequent summed as 'other'"))
    )


def service_cdf_chart(values: list[dict]) -> alt.Chart:
    """Cumulative distribution of service time, one curve per group (clean, disrupted)."""
    return (
        alt.Chart(alt.Data(values=values))
        .mark_line(interpolate="step-after", strokeWidth=2)
        .encode(
            x=alt.X("service_us:Q", title="service time (µs, log scale)", scale=alt.Scale(type="log")),
            y=alt.Y("fraction:Q", title="fraction of requests ≤ x", axis=alt.Axis(format="%"),
                    scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("group:N", title=None, scale=alt.Scale(range=["#54a24b", "#e45756"]),
                            legend=alt.Legend(orient="bottom-right", fillColor="white", padding=6)),
            tooltip=[alt.Tooltip("group:N"), alt.Tooltip("service_us:Q", title="µs", format=",.1f"),
                     alt.Tooltip("fraction:Q", format=".1%")],
        )
        .properties(width=WIDTH, height=280, title=chart_title(
            "Request service time, clean vs disrupted",
            "cumulative distribution; disrupted = the work of a hard IRQ (and the softirqs it raised) ran inside the request"))
    )


def cost_chart(costs: list[dict], share: list[dict], labels: list[str], parts: list[str], colours: dict[str, str],
               subtitle: list[str]) -> alt.HConcatChart:
    """Per-interrupt costs by component (left) and share of CPU (right), one row per `labels`
    entry in that order; `parts` orders the components within a row, `colours` those drawn."""
    y = alt.Y("label:N", title=None, sort=labels, axis=alt.Axis(labelLimit=280, labelFontSize=11.5))
    step = 30 * max(3, len(labels))  # one fixed height for both panels, so their rows line up
    colour = alt.Color("component:N", title=None, scale=alt.Scale(domain=list(colours), range=list(colours.values())),
                       legend=alt.Legend(orient="top", labelFontSize=12))
    per_irq = alt.Chart(alt.Data(values=costs))
    x_us = alt.X("us:Q", title="µs per interrupt (bars: mean; whiskers: 95% interval)")
    bars = per_irq.mark_bar(height=alt.RelativeBandSize(0.42)).encode(
        x=x_us, y=y, yOffset=alt.YOffset("part:N", sort=parts), color=colour,
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("component:N"), alt.Tooltip("us:Q", title="µs", format=",.2f"),
                 alt.Tooltip("lo:Q", title="95% low", format=",.2f"), alt.Tooltip("hi:Q", title="95% high", format=",.2f"),
                 alt.Tooltip("count:Q", title="interrupts", format=",")],
    )
    whiskers = per_irq.mark_rule(color="#222", strokeWidth=1.2).encode(
        x=alt.X("lo:Q"), x2=alt.X2("hi:Q"), y=y, yOffset=alt.YOffset("part:N", sort=parts))
    left = alt.layer(bars, whiskers, width=400, height=step)
    share_chart = alt.Chart(alt.Data(values=share))
    y_share = alt.Y("label:N", sort=labels, axis=None)
    share_bars = share_chart.mark_bar(color="#72b7b2", height=alt.RelativeBandSize(0.6)).encode(
        x=alt.X("pct:Q", title="% of that CPU's time (±95%)"), y=y_share,
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("pct:Q", title="% of CPU", format=".3f"),
                 alt.Tooltip("lo:Q", title="95% low", format=".3f"), alt.Tooltip("hi:Q", title="95% high", format=".3f"),
                 alt.Tooltip("rate_per_s:Q", title="IRQs/s", format=",.1f")],
    )
    share_whiskers = share_chart.mark_rule(color="#222", strokeWidth=1.2).encode(
        x=alt.X("lo:Q"), x2=alt.X2("hi:Q"), y=y_share)
    share_text = share_chart.mark_text(align="left", dx=4, fontSize=10.5, color="#444").encode(
        x=alt.X("hi:Q"), y=y_share, text=alt.Text("pct:Q", format=".2f"))
    right = alt.layer(share_bars, share_whiskers, share_text, width=250, height=step)
    return alt.hconcat(left, right, spacing=30, resolve=_shared("y"), title=chart_title(
        "Cost per interrupt source (left: per interrupt; right: share of CPU)", subtitle))


def whatif_chart(panels: dict[str, list[dict]], labels: list[str], subtitle: list[str]) -> alt.HConcatChart:
    """Predicted figures with their 95% intervals: a panel per figure, a row per `labels` entry."""
    y = alt.Y("label:N", title=None, sort=labels, axis=alt.Axis(labelLimit=280, labelFontSize=11.5))
    colour = alt.Color("kind:N", title=None, scale=alt.Scale(domain=["vanilla (calibration)", "policy"],
                                                             range=["#9aa5b1", "#4c78a8"]),
                       legend=alt.Legend(orient="top", labelFontSize=12))
    drawn = []
    for panel, values in panels.items():
        base = alt.Chart(alt.Data(values=values))
        bars = base.mark_bar(height=alt.RelativeBandSize(0.6)).encode(
            x=alt.X("value:Q", title=f"{panel} (bars: predicted; error bars: 95% interval)"), y=y, color=colour,
            tooltip=[alt.Tooltip("label:N"), alt.Tooltip("value:Q", title=panel, format=",.1f"),
                     alt.Tooltip("lo:Q", title="95% low", format=",.1f"),
                     alt.Tooltip("hi:Q", title="95% high", format=",.1f"),
                     alt.Tooltip("ratio:Q", title="capacity × vanilla", format=".3f")])
        errors = base.mark_errorbar(ticks=True, color="#222").encode(
            x=alt.X("lo:Q", title=None), x2=alt.X2("hi:Q"), y=y)
        drawn.append(alt.layer(bars, errors, width=330, height=alt.Step(26)))
    return alt.hconcat(*drawn, spacing=30, resolve=_shared("y"), title=chart_title(
        "What-if: predicted capacity and p99 per interrupt policy (modelled)", subtitle))


def slowdown_chart(panels: dict[str, list[dict]], subtitle: list[str]) -> alt.VConcatChart:
    """Own time of clean and hit requests: a panel per comparison group (CPU, thread and size
    class), a bar per row of it."""
    y = alt.Y("group:N", title=None, sort=None, axis=alt.Axis(labelLimit=280, labelFontSize=11.5, minExtent=200))
    colour = alt.Color("is_clean:N", legend=None, scale=alt.Scale(domain=[True, False], range=["#54a24b", "#e45756"]))
    x_title = "own time per request (µs; bars: mean, whiskers: 95% interval; label: requests)"
    drawn = []
    for position, (panel, values) in enumerate(panels.items()):
        base = alt.Chart(alt.Data(values=values))
        last = position == len(panels) - 1
        bars = base.mark_bar(height=alt.RelativeBandSize(0.6)).encode(
            x=alt.X("mean:Q", title=x_title if last else None, axis=alt.Axis(labels=last)),
            y=y, color=colour,
            tooltip=[alt.Tooltip("panel:N"), alt.Tooltip("group:N"),
                     alt.Tooltip("mean:Q", title="mean µs", format=",.2f"),
                     alt.Tooltip("lo:Q", title="95% low", format=",.2f"),
                     alt.Tooltip("hi:Q", title="95% high", format=",.2f"), alt.Tooltip("n:Q", title="requests", format=",")],
        )
        whiskers = base.mark_rule(color="#222", strokeWidth=1.2).encode(x=alt.X("lo:Q"), x2=alt.X2("hi:Q"), y=y)
        counts = base.mark_text(align="left", dx=4, fontSize=10.5, color="#444").encode(
            x=alt.X("hi:Q"), y=y, text=alt.Text("n:Q", format=","))
        drawn.append(alt.layer(bars, whiskers, counts, width=WIDTH - 320, height=alt.Step(24),
                               title=alt.TitleParams(f"{panel} (power-of-two classes of bytes in / out)",
                                                     anchor="start", fontSize=12, fontWeight="bold")))
    return alt.vconcat(*drawn, spacing=12, resolve=_shared("x"), title=chart_title(
        "Slowdown around interrupts: own time of requests, clean vs hit once", subtitle))


#: Each chart of the page, by element id: what builds it from its chart inputs (keyword arguments).
CHARTS = {"irq-rate": irq_rate_chart, "service-cdf": service_cdf_chart, "cost": cost_chart,
          "slowdown": slowdown_chart, "whatif": whatif_chart}


def charts(inputs: dict[str, dict]) -> dict[str, alt.TopLevelMixin]:
    """The altair chart of each chart id in `inputs` (its chart inputs), in the same order."""
    return {chart_id: CHARTS[chart_id](**given) for chart_id, given in inputs.items()}


def specs(inputs: dict[str, dict]) -> dict[str, dict]:
    """Each chart's Vega-Lite spec, built without altair's check of each schema object as it is
    made (debug mode) and written unvalidated: checking each against the schema took half the
    report's time; tests/test_report.py validates every chart the report draws."""
    with debug_mode(False):
        return {chart_id: chart.to_dict(validate=False) for chart_id, chart in charts(inputs).items()}


def serve() -> None:
    """The chart process: each line on stdin is a JSON object of chart inputs by chart id; each
    answer, one line on stdout, is {"specs": ...} or {"error": ...} (the requester then builds
    that request in its own process, which raises the error where it can be reported)."""
    for line in sys.stdin.buffer:
        try:
            answer = {"specs": specs(json.loads(line))}
        except Exception as error:  # any: the requester rebuilds in-process, which raises it properly
            answer = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.buffer.write(json.dumps(answer).encode() + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    serve()
    # Nothing to clean up: leave without the interpreter's teardown (0.1 s with altair loaded),
    # which the requester, waiting for this process to end, would pay for.
    sys.stdout.flush()
    os._exit(0)
