"""The summary `kptrace analyze` prints: per CPU and interrupt source what it costs, and how
requests fare clean versus disrupted. Every figure carries its unit and provenance."""

from __future__ import annotations

import math

import polars as pl

from kptrace import tables
from kptrace.analysis import Analysis, Table
from kptrace.attribute import HARDWARE_COUNTERS
from kptrace.faults import fault_overview
from kptrace.whatif.render import render_whatif


def counter_source(analysis: Analysis) -> dict:
    """Which counters the trace carries, as {"kind": "hardware-pmu" | "software-only" | "none",
    "names": [perf event names]}: the kind decides whether IPC can be measured."""
    events = analysis.events
    names = [] if events is None else sorted(set(
        events.lazy().filter(pl.col("subsystem") == "counter").select(pl.col("event").cast(pl.String).unique())
        .collect(engine="streaming")["event"]))
    recorded = ((analysis.meta.get("bundle") or {}).get("counters") or {}).get("source")
    if set(names) & set(HARDWARE_COUNTERS):
        kind = "hardware-pmu"
    elif names or recorded == "software-only":
        kind = "software-only"
    else:
        kind = "none"
    return {"kind": kind, "names": names}


def counters_text(counters: dict) -> str:
    """The counter source in words, for the terminal and the report."""
    names = f" ({', '.join(counters['names'])})" if counters["names"] else ""
    if counters["kind"] == "hardware-pmu":
        return f"hardware-pmu{names}: IPC measured"
    return f"{counters['kind']}{names}: no IPC; indirect costs measured in time"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plus_minus(value, ci, scale: float = 1.0, digits: int = 1) -> str:
    """`value±ci`, both divided by `scale`: the one way kptrace prints a figure with its 95%
    interval; `–` when there is no figure, the figure alone when it has no interval."""
    if _missing(value):
        return "–"
    text = f"{value / scale:,.{digits}f}"
    return text if _missing(ci) else f"{text}±{ci / scale:,.{digits}f}"


#: Figures whose estimate may not differ from 0, and the column that says whether it does.
SIGNIFICANCE = {"indirect_per_irq_ns": "indirect_significant"}
NOT_SIGNIFICANT = "n.s."


def figure_text(row: dict, table: str, name: str, scale: float = 1.0, digits: int = 1) -> str:
    """One figure of a row with the 95% interval its declaration names (kptrace.tables): `value±ci`;
    an estimate whose interval includes 0 reads `n.s. [low, high]`: not significant, never a loss."""
    declared = tables.column(table, name)
    flag = SIGNIFICANCE.get(name)
    if flag and row.get(flag) is False and declared.bounds:
        low, high = (row[bound] / scale for bound in declared.bounds)
        return f"{NOT_SIGNIFICANT} [{low:,.{digits}f}, {high:,.{digits}f}]"
    return plus_minus(row[name], row[declared.ci] if declared.ci else None, scale, digits)


def declared(table: str, rows: pl.DataFrame) -> dict:
    """The rows of a table with the units and provenance (measured|estimated|modelled) of their
    columns, taken from the table's declaration (kptrace.tables), for summary.json."""
    cols = [c for c in tables.columns(table) if c.name in rows.columns]
    return {"units": {c.name: c.unit for c in cols if c.unit},
            "provenance": {c.name: c.provenance for c in cols},
            "rows": rows.to_dicts()}


def counter_samples(events: Table) -> pl.LazyFrame:
    """Counter values read by perf at tracepoints (ts, cpu, name, value), for counter tracks: a
    query, so the timeline collects only the samples it draws."""
    return events.lazy().filter(pl.col("subsystem") == "counter").select(
        "ts", "cpu", name=pl.col("event").cast(pl.String), value=pl.col("value").cast(pl.Float64)
    )


def request_overview(requests: Table | None) -> list[dict]:
    """Service time of clean and disrupted requests (µs, measured)."""
    if requests is None:
        return []
    return (
        requests.lazy().group_by("disrupted")
        .agg(
            requests=pl.len(),
            median_us=pl.col("dur").median() * 1e-3,
            p99_us=pl.col("dur").quantile(0.99) * 1e-3,
            own_median_us=pl.col("own_ns").median() * 1e-3,
        )
        .sort("disrupted")
        .collect()
        .to_dicts()
    )


def predict_policies(analysis: Analysis) -> tuple[list[dict], str | None]:
    """Every what-if policy with its defaults, per server (kptrace.whatif: the JSON contract of
    docs/whatif.md), or no results and a note why: a trace without requests has nothing to
    replay, and a policy that cannot be applied must not cost the user the rest of the analysis."""
    from kptrace.whatif import PolicyError, whatif

    try:
        return whatif(analysis), None
    except PolicyError as error:
        return [], f"no what-if predictions: {error}"


def build_summary(analysis: Analysis, predict: bool = True) -> dict:
    """A JSON-ready summary of one analysis; `predict=False` leaves out the what-if replay (the
    slowest part: about as long again as the analysis on a sample bundle)."""
    meta = analysis.meta
    predictions, why_none = predict_policies(analysis) if predict else ([], None)
    return {
        "input": {
            "format": meta["source_format"], "events": meta["event_count"], "duration_s": meta["duration_s"],
            "clock": meta["clock"], "ts_resolution_ns": meta["ts_resolution_ns"],
            "lost_events": sum(c["lost_events"] or 0 for c in meta["per_cpu"]),
            "counters": counter_source(analysis),
        },
        "notes": analysis.notes + ([why_none] if why_none else []),
        "warnings": meta["warnings"],
        "faults": fault_overview(analysis.damaged_windows, analysis.requests),
        "attribution": declared("attribution", analysis.attribution.drop("direct_provenance", "indirect_provenance")),
        "requests": {"provenance": f"{tables.column('requests', 'dur').provenance} from syscall events; "
                                   "service time in µs", "by_disrupted": request_overview(analysis.requests)},
        "ipc": None if analysis.ipc is None else declared("ipc", analysis.ipc),
        "whatif": predictions,
    }


#: What the terminal shows of each attribution row: (header, column, scale, digits, width); each
#: figure is printed with the interval its declaration names (kptrace.tables).
COST_VIEW = (
    ("count", "count", 1, 0, 7),
    ("rate/s", "rate_per_s", 1, 1, 9),
    ("direct µs", "direct_per_irq_ns", 1e3, 1, 13),
    ("indirect µs", "indirect_per_irq_ns", 1e3, 1, 17),
    ("CPU %", "share_of_cpu", 0.01, 2, 12),
    ("lost %", "capacity_loss", 0.01, 2, 12),
)


def _cost_legend() -> list[str]:
    """The provenance of every column shown, and what the two shares mean, from the declarations."""
    shown = "; ".join(f"{header} {tables.column('attribution', name).provenance}"
                      for header, name, *_ in COST_VIEW[1:])
    share, loss = tables.column("attribution", "share_of_cpu"), tables.column("attribution", "capacity_loss")
    return [f"interrupt cost per CPU and source ({shown}; ±: 95% interval; {NOT_SIGNIFICANT} [low, high]: "
            "the 95% interval includes 0, counted as 0)",
            f"(CPU %: {share.meaning}; lost %: {loss.meaning})".replace("`", "")]


def _cost_cells(row: dict) -> str:
    return " ".join(f"{figure_text(row, 'attribution', name, scale, digits):>{width}}"
                    for _, name, scale, digits, width in COST_VIEW)


def render_summary(summary: dict, top: int = 6) -> str:
    """Fixed-width text for the terminal: the costliest sources of each CPU first."""
    info = summary["input"]
    lines = [
        f"input: {info['format']}, {info['events']} events over {info['duration_s']:.3f} s, clock {info['clock']}, "
        f"lost events {info['lost_events']}",
        f"counters: {counters_text(info['counters'])}",
        *[f"note: {note}" for note in summary["notes"]],
        "",
        *_cost_legend(),
        f"{'cpu':>3} {'source':<22} " + " ".join(f"{header:>{width}}" for header, _, _, _, width in COST_VIEW),
    ]
    rows = summary["attribution"]["rows"]
    for cpu in sorted({r["cpu"] for r in rows}):
        for row in [r for r in rows if r["cpu"] == cpu][:top]:
            lines.append(f"{cpu:>3} {row['source'][:22]:<22} {_cost_cells(row)}")
    if summary.get("ipc"):
        ipc, gain = tables.column("ipc", "ipc"), tables.column("ipc", "gain_at_clean_ipc")
        lines += ["", f"IPC and IPQ per epoll loop iteration ({ipc.provenance}, hardware counters); gain at clean "
                      f"IPC {gain.provenance}: {gain.meaning}"]
        for row in summary["ipc"]["rows"]:
            gain = "" if row["gain_at_clean_ipc"] is None else f"  gain at clean IPC {100 * row['gain_at_clean_ipc']:+.1f}%"
            lines.append(f"cpu {row['cpu']} {row['group']:<9} iterations {row['iterations']:>7}  IPC {row['ipc']:.3f}  "
                         f"IPQ {row['ipq']:,.0f}{gain}")
    overview = summary["requests"]["by_disrupted"]
    if overview:
        lines += ["", f"requests: {summary['requests']['provenance']}",
                  f"{'':<11} {'requests':>9} {'median':>8} {'p99':>8} {'own median':>11}"]
        for row in overview:
            label = "disrupted" if row["disrupted"] else "clean"
            lines.append(f"{label:<11} {row['requests']:>9} {row['median_us']:>8.1f} {row['p99_us']:>8.1f} "
                         f"{row['own_median_us']:>11.1f}")
    for result in summary.get("whatif") or []:
        lines += ["", render_whatif(result)]
    return "\n".join(lines)
