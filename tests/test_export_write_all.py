"""write_all's parts run side by side: the same outputs as one after another, the summary heard as
soon as it is built, and an error in any part raised as the part that ran first would raise it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

import kptrace.export.outputs as export
import kptrace.summary
from kptrace.analysis import analyze
from kptrace.errors import TraceError
from kptrace.export.chart_process import ChartProcess
from kptrace.export.perfetto import write_timeline
from kptrace.simulate import Scenario, write_simulation
from kptrace.summary import build_summary


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    return analyze(write_simulation(tmp_path_factory.mktemp("sim"), Scenario(duration_s=0.3, seed=3), "tracefs"))


def test_a_summary_built_inside_is_the_one_given_and_is_heard_once_before_the_outputs(analysis, tmp_path):
    heard = []
    built = export.write_all(analysis, tmp_path / "inside", summarized=lambda s: heard.append(json.dumps(s)))
    given = export.write_all(analysis, tmp_path / "given", build_summary(analysis))
    assert len(heard) == 1 and "outputs" not in json.loads(heard[0])  # heard before outputs were added
    assert json.loads(heard[0])["whatif"] == built["whatif"]
    text = {name: (tmp_path / name / "summary.json").read_text().replace(str(tmp_path / name), "OUT")
            for name in ("inside", "given")}
    assert text["inside"] == text["given"]
    assert sorted(p.name for p in (tmp_path / "inside").iterdir()) == sorted(p.name for p in (tmp_path / "given").iterdir())
    assert (tmp_path / "inside" / "whatif.parquet").exists() and given["outputs"]["whatif"]


def _broken(message: str):
    def raises(*args, **kwargs):
        raise TraceError("input", message)
    return raises


@pytest.mark.parametrize("broken", [("write_tables_of",), ("timeline",), ("write_tables_of", "timeline")])
def test_an_error_on_a_thread_is_raised_by_write_all_the_first_in_turn(analysis, tmp_path, monkeypatch, broken):
    """Tables before the timeline, as when they ran in turn; no summary.json nor page is written."""
    if "write_tables_of" in broken:
        monkeypatch.setattr(export, "write_tables_of", _broken("tables failed"))
    if "timeline" in broken:
        monkeypatch.setattr("kptrace.export.perfetto.write_timeline", _broken("timeline failed"))
    expected = "tables failed" if "write_tables_of" in broken else "timeline failed"
    with pytest.raises(TraceError, match=expected):
        export.write_all(analysis, tmp_path)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "report.html").exists()


def test_the_summary_error_comes_first_though_the_threads_fail_too(analysis, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "write_tables_of", _broken("tables failed"))
    monkeypatch.setattr("kptrace.export.perfetto.write_timeline", _broken("timeline failed"))
    monkeypatch.setattr(kptrace.summary, "build_summary", _broken("summary failed"))
    with pytest.raises(TraceError, match="summary failed"):
        export.write_all(analysis, tmp_path)


def test_the_timeline_written_beside_the_summary_is_the_one_written_alone(analysis, tmp_path):
    export.write_all(analysis, tmp_path / "all")
    (tmp_path / "alone").mkdir()  # the same file name: gzip's header holds it
    alone = write_timeline(tmp_path / "alone" / "timeline.perfetto-trace.gz", analysis.events, analysis.intervals,
                           analysis.requests, kptrace.summary.counter_samples(analysis.events))
    assert (tmp_path / "all" / "timeline.perfetto-trace.gz").read_bytes() == Path(alone["path"]).read_bytes()


def _same_outputs(left: Path, right: Path) -> None:
    """Every file of two output folders equal: Parquet by content, the rest byte for byte but for
    the folder's own path and the report's date."""
    names = sorted(p.name for p in left.iterdir())
    assert names == sorted(p.name for p in right.iterdir())
    for name in names:
        if name.endswith(".parquet"):
            assert pl.read_parquet(left / name).equals(pl.read_parquet(right / name)), name
        elif name == "report.html":
            dated = r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC"
            assert re.sub(dated, "", (left / name).read_text()) == re.sub(dated, "", (right / name).read_text())
        else:
            assert ((left / name).read_bytes().replace(bytes(left), b"OUT")
                    == (right / name).read_bytes().replace(bytes(right), b"OUT")), name


@pytest.mark.parametrize("predicted", [None, "remove"])
def test_outputs_started_while_the_analysis_runs_are_those_written_after_it(analysis, tmp_path, predicted):
    """events.parquet and the timeline's measured group start as their tables are built, the
    what-if group is appended after, the report's charts are built by a chart process (as
    `kptrace analyze` does); every output equals one written after the analysis, all in-process."""
    trace = analysis.meta["files"][0]
    with ChartProcess() as charts, export.EarlyOutputs(tmp_path / "early", draw_charts=charts.specs) as early:
        started = analyze(trace, built=early.built)
        assert early.events_written is not None and early.timeline_drawn is not None  # before write_all
        export.write_all(started, tmp_path / "early", predicted=predicted, early=early)
    export.write_all(analysis, tmp_path / "after", predicted=predicted)
    _same_outputs(tmp_path / "early", tmp_path / "after")
    groups = json.loads((tmp_path / "early" / "summary.json").read_text())["outputs"]["timeline_groups"]
    assert len(groups) == (1 if predicted is None else 2)


def test_an_asked_timeline_window_is_drawn_after_the_analysis(analysis, tmp_path):
    """Drawing an asked window needs the trace's start, known at the end: only the events start early."""
    window = (0.1, 0.2)
    with export.EarlyOutputs(tmp_path / "early", draw_timeline=False) as early:
        started = analyze(analysis.meta["files"][0], built=early.built)
        assert early.events_written is not None and early.timeline_drawn is None
        export.write_all(started, tmp_path / "early", timeline_window=window, early=early)
    export.write_all(analysis, tmp_path / "after", timeline_window=window)
    _same_outputs(tmp_path / "early", tmp_path / "after")


def test_an_early_events_write_that_fails_is_raised_by_write_all(analysis, tmp_path, monkeypatch):
    import kptrace.export.parquet as parquet

    write_table = parquet.write_table

    def events_fail(target, table):
        if Path(target).name == "events.parquet":
            raise TraceError("input", "events failed")
        write_table(target, table)

    monkeypatch.setattr(parquet, "write_table", events_fail)
    with export.EarlyOutputs(tmp_path) as early:
        started = analyze(analysis.meta["files"][0], built=early.built)
        with pytest.raises(TraceError, match="events failed"):
            export.write_all(started, tmp_path, early=early)
    assert not (tmp_path / "summary.json").exists()
