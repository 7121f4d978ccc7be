"""The report's chart process (kptrace.export.chart_process): it builds the specs altair builds
in-process, it is the kptrace of the requesting process that runs there, and when it cannot
answer (killed, or a chart that fails) the request is built in-process: the same specs, or the
chart's own error."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

import kptrace.export.chart_process as chart_process
from kptrace.analysis import analyze
from kptrace.export import report
from kptrace.export.chart_process import ChartProcess
from kptrace.summary import build_summary

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "memcached-diskirq-same-core"


@pytest.fixture(scope="module")
def inputs() -> dict[str, dict]:
    analysis = analyze(SAMPLE)
    return report.chart_inputs(report.report_view(analysis), build_summary(analysis))


def _refused(inputs):
    raise AssertionError("built in-process")


def test_the_process_builds_the_specs_altair_builds_here(inputs, monkeypatch):
    expected = chart_process.in_process(inputs)
    assert list(expected) == ["irq-rate", "service-cdf", "cost", "slowdown", "whatif"]
    monkeypatch.setattr(chart_process, "in_process", _refused)  # so only the process can answer
    with ChartProcess() as charts:
        measured = {key: inputs[key] for key in ("irq-rate", "cost")}
        assert charts.specs(measured) == {key: expected[key] for key in measured}  # one request, then another
        assert charts.specs(inputs) == expected


def test_the_process_runs_this_kptrace_whatever_its_path_finds_first(inputs, monkeypatch, tmp_path):
    impostor = tmp_path / "kptrace"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("raise SystemExit('an impostor kptrace')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(chart_process, "in_process", _refused)
    with ChartProcess() as charts:
        assert charts.specs({"cost": inputs["cost"]})["cost"]["hconcat"]


def test_a_process_that_died_leaves_the_request_to_this_one(inputs):
    expected = chart_process.in_process(inputs)
    with ChartProcess() as charts:
        charts._process.kill()
        charts._process.wait()
        assert charts.specs(inputs) == expected
        assert charts._process is None  # not asked again
        assert charts.specs({"cost": inputs["cost"]}) == {"cost": expected["cost"]}


def test_a_chart_that_fails_in_the_process_raises_its_own_error_here(inputs, monkeypatch):
    broken = {"cost": dict(inputs["cost"], labels=None)}  # len(None): a TypeError in the child, then here
    with ChartProcess() as charts:
        with pytest.raises(TypeError, match="NoneType"):
            charts.specs(broken)
        expected = chart_process.in_process({"cost": inputs["cost"]})
        monkeypatch.setattr(chart_process, "in_process", _refused)
        assert charts.specs({"cost": inputs["cost"]}) == expected  # the process still answers


def test_closing_ends_the_process_at_once():
    charts = ChartProcess()
    process = charts._process
    started = time.monotonic()
    charts.close()
    assert process.returncode == 0 and time.monotonic() - started < chart_process.EXIT_WAIT_S
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, 0)
        pytest.fail("the chart process is still there")
    charts.close()  # twice is harmless
