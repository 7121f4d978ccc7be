"""write_all's parts run side by side: the same outputs as one after another, the summary heard as
soon as it is built, and an error in any part raised as the part that ran first would raise it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import kptrace.export as export
import kptrace.summary
from kptrace.analysis import analyze
from kptrace.errors import TraceError
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


def test_an_import_that_fails_ahead_is_left_to_fail_where_the_outputs_import_it(monkeypatch):
    from kptrace import cli

    monkeypatch.setitem(sys.modules, "kptrace.export.report", None)  # any import of it fails
    cli._import_ahead()  # quietly
    with pytest.raises(ImportError):
        import kptrace.export.report  # noqa: F401
