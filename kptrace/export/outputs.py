"""Every output of an analysis, written by one entry point that the CLI and library callers share."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from kptrace.analysis import Analysis, Table
from kptrace.export.chart_process import in_process
from kptrace.export.report import Draw, chart_specs, measured_chart_specs, write_report

SLICE_SCHEMA = {"ts": pl.Int64, "dur": pl.Int64, "name": pl.String}
#: The Perfetto group a what-if replay draws into, beside "measured".
PREDICTED_GROUP = "predicted: {policy}"
TIMELINE_FILE = "timeline.perfetto-trace.gz"


class EarlyOutputs:
    """The outputs that need only the first tables of a whole-trace analysis, written on threads
    while the analysis goes on (attribution, faults, the what-if): events.parquet as soon as the
    events are read, and the timeline's "measured" group once the requests are known. Its `built`
    is the analysis's hook (kptrace.analysis.Built); write_all(early=...) waits for what it
    started and writes the rest. Leaving it as a context manager waits for its threads.

    With `draw_timeline` False (an asked window, which needs the trace's start from the meta the
    analysis ends with), write_all draws the timeline. A what-if group is always drawn there.
    `draw_charts` builds the report's chart specs (a ChartProcess's, started before the analysis's
    imports: kptrace.export.chart_process); by default they are built in this process."""

    def __init__(self, out: str | Path, draw_timeline: bool = True, draw_charts: Draw = in_process):
        self.out = Path(out)
        self.draw_timeline = draw_timeline
        self.draw_charts = draw_charts
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="early-outputs")
        self._tables: dict[str, Table | None] = {}
        self.events_written: Future | None = None
        self.timeline_drawn: Future | None = None

    def __enter__(self) -> EarlyOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self._threads.shutdown(wait=True)

    def built(self, name: str, table: Table | None) -> None:
        self._tables[name] = table
        if name == "events" and isinstance(table, pl.DataFrame):
            from kptrace.export.parquet import write_table

            self.out.mkdir(parents=True, exist_ok=True)
            self.events_written = self._threads.submit(write_table, self.out / "events.parquet", table)
        elif name == "requests" and self.draw_timeline and self.events_written is not None:
            self.timeline_drawn = self._threads.submit(
                _draw_measured, self.out, self._tables["events"], self._tables["intervals"], table)


def write_all(analysis: Analysis, out: str | Path, summary: dict | None = None, group: str = "measured",
              predicted: str | None = None, timeline_window: tuple[float, float] | None = None, *,
              summarized: Callable[[dict], None] = lambda summary: None, early: EarlyOutputs | None = None) -> dict:
    """Write the Parquet tables and meta.json, whatif.parquet (when the summary holds what-if
    results), summary.json, report.html and the Perfetto timeline (its tracks under `group`, and
    with `predicted=POLICY` a second group replaying that policy) into `out`; return the summary
    with an `outputs` entry naming them. The summary is built here (build_summary) when not
    given, and `summarized` hears it as soon as it is. The timeline draws `timeline_window`
    (seconds from the trace's start, [start, end)), else the busiest seconds of a trace too large
    to draw whole (kptrace.export.perfetto.TIMELINE_MAX_ITEMS); the tables always hold
    everything. Tables a windowed analysis stored already are left in place when `out` is where it
    stored them, and copied when it is not (write_tables_of). The outputs `early` started while
    the analysis ran (EarlyOutputs, into the same `out`) are waited for, not written again.

    The parts run side by side (_write_side_by_side); those of a windowed analysis, whose tables
    are scans of its files, one after another but for the report's charts (_write_in_turn). An
    error in a part is raised here: the first in the order the parts run in turn (summary,
    tables, timeline, charts)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # before the parts, which write into it side by side
    draw = in_process if early is None else early.draw_charts
    if analysis.stored is not None:
        analysis, summary, charts, drawn = _write_in_turn(analysis, out, summary, summarized, group, predicted,
                                                          timeline_window, draw)
    else:
        analysis, summary, charts, drawn = _write_side_by_side(analysis, out, summary, summarized, group, predicted,
                                                               timeline_window, early, draw)
    _finish_summary(analysis, out, summary, *drawn)
    write_report(out / "report.html", analysis, summary, charts)
    return summary


def _write_side_by_side(analysis: Analysis, out: Path, summary: dict | None, summarized: Callable[[dict], None],
                        group: str, predicted: str | None, timeline_window: tuple[float, float] | None,
                        early: EarlyOutputs | None, draw: Draw):
    """The Parquet tables (pyarrow's writer) and the timeline (Polars, numpy and ISA-L's gzip),
    which release the GIL, each on a thread of its own, and the report's charts of measured
    figures (their data in Polars, their specs by `draw`) on a third, while this one builds the
    summary (the what-if, mostly Polars and compiled stepping), then the what-if's chart, and
    whatif.parquet once the
    tables are written; events.parquet and the timeline's measured group are only waited for
    when `early` started them. The analysis is held whole, so the tables written are the
    analysis's own (write_tables_of returns it unchanged)."""
    from kptrace.summary import build_summary

    events_written, timeline_drawn = (None, None) if early is None else (early.events_written, early.timeline_drawn)
    written = dict(analysis.tables())
    if events_written is not None:
        del written["events"]
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="write-all") as threads:
        tables = threads.submit(write_tables_of, analysis, out, written)
        timeline = threads.submit(_write_timeline, analysis, out, group, predicted, timeline_window,
                                  timeline_drawn)
        measured_charts = threads.submit(measured_chart_specs, analysis, draw)
        summary = build_summary(analysis) if summary is None else summary
        summarized(summary)
        tables.result()
        if events_written is not None:
            events_written.result()
        if summary.get("whatif"):
            from kptrace.export.parquet import write_table
            from kptrace.whatif.render import whatif_frame

            write_table(out / "whatif.parquet", whatif_frame(summary["whatif"]))
        drawn = timeline.result()
        return analysis, summary, chart_specs(analysis, summary, measured_charts.result(), draw), drawn


def _write_in_turn(analysis: Analysis, out: Path, summary: dict | None, summarized: Callable[[dict], None],
                   group: str, predicted: str | None, timeline_window: tuple[float, float] | None, draw: Draw):
    """The summary, the tables, then the timeline with the report's charts built on a thread beside
    it: a windowed analysis's parts one after another, so no two hold window-sized frames at once
    (its peak memory is bounded, docs/windows.md). The analysis returned scans the tables written."""
    from kptrace.summary import build_summary
    from kptrace.whatif.render import whatif_frame

    summary = build_summary(analysis) if summary is None else summary
    summarized(summary)
    written = dict(analysis.tables())
    if summary.get("whatif"):
        written["whatif"] = whatif_frame(summary["whatif"])
    analysis = write_tables_of(analysis, out, written)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-charts") as thread:
        charts = thread.submit(chart_specs, analysis, dict(summary), None, draw)  # a copy: notes and outputs change later
        drawn = _write_timeline(analysis, out, group, predicted, timeline_window)
        return analysis, summary, charts.result(), drawn


def _draw_measured(out: Path, events: Table | None, intervals: Table, requests: Table | None,
                   trace_start: int = 0, timeline_window: tuple[float, float] | None = None,
                   group: str = "measured") -> dict:
    """Write the timeline's measured group (`timeline_window`: seconds from `trace_start`);
    return write_timeline's account of it."""
    from kptrace.export.perfetto import write_timeline
    from kptrace.summary import counter_samples

    counters = None if events is None else counter_samples(events)
    asked = None if timeline_window is None else tuple(trace_start + round(s * 1e9) for s in timeline_window)
    return write_timeline(out / TIMELINE_FILE, events, intervals, requests, counters, group=group, window=asked)


def _write_timeline(analysis: Analysis, out: Path, group: str, predicted: str | None,
                    timeline_window: tuple[float, float] | None, measured: Future | None = None
                    ) -> tuple[dict, str | None]:
    """Write the timeline, or only its `predicted` group when the `measured` one is being drawn
    already (EarlyOutputs); return its entries of the summary's `outputs` and, when the
    `predicted` policy could not be replayed, the note saying why."""
    from kptrace.export.perfetto import write_timeline

    path = out / TIMELINE_FILE
    trace_start = int(analysis.meta.get("start_ns") or 0)
    timeline = measured.result() if measured is not None else _draw_measured(
        out, analysis.events, analysis.intervals, analysis.requests, trace_start, timeline_window, group)
    drawn_window = timeline["window"]
    groups = {group: sum(timeline["slices"].values())}
    note = None
    if predicted is not None:
        frames, why_none = predicted_timeline(analysis, predicted)
        if frames is None:
            note = f"no {PREDICTED_GROUP.format(policy=predicted)} timeline group: {why_none}"
        else:
            name = PREDICTED_GROUP.format(policy=predicted)
            drawn = write_timeline(path, None, *frames, group=name, append=True,
                                   window=drawn_window and tuple(drawn_window), max_items=None)
            groups[name] = sum(drawn["slices"].values())
    return {"timeline": str(timeline["path"]), "timeline_slices": sum(groups.values()), "timeline_groups": groups,
            "timeline_window": _window_drawn(drawn_window, trace_start, timeline_window is not None)}, note


def _finish_summary(analysis: Analysis, out: Path, summary: dict, timeline: dict, note: str | None) -> None:
    """Give the summary its `outputs` entry (and the timeline's note) and write it as summary.json."""
    if note is not None:
        summary["notes"] = summary["notes"] + [note]
    summary["outputs"] = {"directory": str(out), "summary": str(out / "summary.json"),
                          "report": str(out / "report.html"), **timeline, "tables": sorted(analysis.tables()),
                          "whatif": str(out / "whatif.parquet") if summary.get("whatif") else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _stored_as_is(table, stored: Path | None, name: str) -> Path | None:
    """The file a windowed analysis stored `table` in, when the table is a scan of it as it is
    (its columns unchanged: marks added to a scan make it another table)."""
    if stored is None or not isinstance(table, pl.LazyFrame) or not (stored / f"{name}.parquet").exists():
        return None
    path = stored / f"{name}.parquet"
    return path if table.collect_schema() == pl.read_parquet_schema(path) else None


def write_tables_of(analysis: Analysis, out: Path, tables: dict) -> Analysis:
    """Every table as `<name>.parquet` and meta.json into `out` (export.parquet's layout): a table
    stored as it is in `out` already is not written again, one stored elsewhere is copied; a
    scan is written a row group at a time. A changed table that replaces a stored file
    being scanned is written beside it and moved over it, and read from there on: the analysis
    returned scans it."""
    from kptrace.export.parquet import ROW_GROUP_ROWS, write_tables

    out.mkdir(parents=True, exist_ok=True)
    stored = None if analysis.stored is None else Path(analysis.stored)
    in_place = stored is not None and stored.resolve() == out.resolve()
    frames, rescanned = {}, {}
    for name, table in tables.items():
        target = out / f"{name}.parquet"
        if (source := _stored_as_is(table, stored, name)) is not None:
            if not in_place:
                shutil.copyfile(source, target)
        elif isinstance(table, pl.LazyFrame):
            scratch = target.with_name(target.name + ".partial")
            table.sink_parquet(scratch, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            os.replace(scratch, target)
            rescanned[name] = pl.scan_parquet(target)
        else:
            frames[name] = table
    write_tables(out, frames, analysis.meta)
    if not in_place or not rescanned:
        return analysis
    fields = {"request_hits": "hits"}
    return replace(analysis, **{fields.get(name, name): scan for name, scan in rescanned.items()
                                if fields.get(name, name) in Analysis.__dataclass_fields__})


def _window_drawn(window: list[int] | None, trace_start: int, asked: bool) -> dict | None:
    """What the timeline drew: None for the whole trace, else the window in seconds from the
    trace's start and in trace-clock ns, and why that one."""
    if window is None:
        return None
    return {"start_s": (window[0] - trace_start) / 1e9, "end_s": (window[1] - trace_start) / 1e9,
            "start_ns": window[0], "end_ns": window[1],
            "chosen": "asked (--timeline-window)" if asked else "the busiest whole seconds (the trace has more "
                      "slices than a timeline draws; every table holds them all)"}


def predicted_timeline(analysis: Analysis, policy: str) -> tuple[tuple[pl.DataFrame, pl.DataFrame] | None, str | None]:
    """(intervals, requests) of every server's cores replayed at the recorded load under `policy`
    with its default parameters, in the timeline's column contract (kptrace.export.perfetto): per
    interrupt the replay took a hard IRQ slice and a slice for the softirq work charged to it;
    each request keeps its measured id and thread. Or None and why there is no replay."""
    from kptrace.whatif import POLICIES, PolicyError, default_policies, nic_sources, servers
    from kptrace.whatif.policies import apply
    from kptrace.whatif.predict import core_inputs
    from kptrace.whatif.replay import replay_core
    from kptrace.whatif.stream import request_stream

    if policy not in POLICIES:
        return None, f"unknown policy {policy!r}; one of: {', '.join(POLICIES)}"
    if analysis.requests is None:
        return None, "no requests in this trace, so nothing to replay"
    nic = nic_sources(analysis)
    irqs, requests = [], []
    try:
        for server in servers(analysis):
            chosen = next(p for p in default_policies(analysis, server["cpus"]) if p.name == policy)
            cores = apply(chosen, core_inputs(analysis, server["tids"], nic), nic).cores
            # The replay's request order on each core: that of core_inputs' request stream.
            mine = analysis.requests.lazy().filter(pl.col("tid").is_in(server["tids"]))
            stream = request_stream(replace(analysis, requests=mine))
            for core in cores:
                order = stream.filter(pl.col("cpu") == core.cpu)
                run = replay_core(core, saturated=False, record=True)
                irqs.append(_interrupt_slices(core.cpu, run.taken))
                requests.append(_request_slices(core.cpu, order, run))
    except PolicyError as error:
        return None, str(error)
    return (pl.concat(irqs), pl.concat(requests)), None


def _interrupt_slices(cpu: int, taken) -> pl.DataFrame:
    """A hard IRQ slice per interrupt the replay took, and one for the softirq work charged to it."""
    start = np.array([at for at, _ in taken], np.int64)
    handler = np.array([a.handler_ns for _, a in taken], np.int64)
    softirq = np.array([a.softirq_ns for _, a in taken], np.int64)
    source = [a.source for _, a in taken]
    hard = pl.DataFrame({"ts": start, "dur": handler, "name": source}, schema=SLICE_SCHEMA).with_columns(
        kind=pl.lit("hardirq"))
    soft = pl.DataFrame({"ts": start + handler, "dur": softirq, "name": [f"softirqs of {s}" for s in source]},
                        schema=SLICE_SCHEMA).with_columns(kind=pl.lit("softirq")).filter(pl.col("dur") > 0)
    return pl.concat([hard, soft]).with_columns(cpu=pl.lit(cpu, pl.Int16), complete=pl.lit(True))


def _request_slices(cpu: int, order: pl.DataFrame, run) -> pl.DataFrame:
    """The replayed requests, each `disrupted` when the replay took an interrupt inside it."""
    taken_at = np.array([at for at, _ in run.taken], np.int64)
    n_irq = np.searchsorted(taken_at, run.ends) - np.searchsorted(taken_at, run.starts)
    return order.select("request_id", "tid").with_columns(
        cpu=pl.lit(cpu, pl.Int16), ts=pl.Series(run.starts), dur=pl.Series(run.ends - run.starts),
        n_irq=pl.Series(n_irq, dtype=pl.Int64), disrupted=pl.Series(n_irq > 0))
