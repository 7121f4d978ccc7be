"""What-if inside `kptrace analyze`: the predictions reach summary.json, whatif.parquet, the
terminal and the report; a trace without requests, or one a policy cannot be applied to, still
analyzes, with a note; the replay a timeline draws is the replay the figures come from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kptrace import tables
from kptrace.analysis import analyze
from kptrace.export.outputs import predicted_timeline, write_all
from kptrace.simulate import Scenario, write_simulation
from kptrace.whatif import whatif

KPTRACE = [sys.executable, "-m", "kptrace.cli"]


def run(*args):
    return subprocess.run([*KPTRACE, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """A simulated epoll server with a disk IRQ on its cores, and varying request costs."""
    return write_simulation(tmp_path_factory.mktemp("sim"), Scenario(duration_s=0.2, seed=4))


@pytest.fixture(scope="module")
def written(simulated, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out")
    return write_all(analyze(simulated), out, predicted="remove"), out


def test_summary_json_holds_the_whatif_contract_for_every_policy(simulated, written):
    summary, out = written
    on_disk = json.loads((out / "summary.json").read_text())["whatif"]
    assert on_disk == whatif(analyze(simulated))  # same input, same predictions, JSON-clean
    (result,) = on_disk
    assert [p["policy"] for p in result["policies"]] == ["vanilla", "move-irqs", "remove", "coalesce", "busy-poll",
                                                          "irq-suspend", "kernel-polling"]
    remove = next(p for p in result["policies"] if p["policy"] == "remove")
    assert remove["params"] == {"source": ["sim-disk"]}
    assert remove["capacity_ratio_ci"][0] > 1  # taking the disk IRQ off the cores wins capacity


def test_whatif_parquet_is_the_declared_table_with_bounds_from_the_intervals(written):
    summary, out = written
    frame = pl.read_parquet(out / "whatif.parquet")
    assert frame.schema == pl.Schema(tables.polars_schema("whatif"))
    (result,) = summary["whatif"]
    assert frame["policy"].to_list() == [p["policy"] for p in result["policies"]]
    for row, entry in zip(frame.iter_rows(named=True), result["policies"]):
        assert json.loads(row["params"]) == entry["params"]
        assert (row["server"], row["tids"]) == (result["server"]["comm"], result["server"]["tids"])
        for figure in ("capacity_rps", "p99_us", "irq_per_s"):
            assert [row[f"{figure}_lo"], row[figure], row[f"{figure}_hi"]] == [
                entry["predicted"][f"{figure}_ci"][0], entry["predicted"][figure], entry["predicted"][f"{figure}_ci"][1]]
        assert (row["capacity_ratio_lo"], row["capacity_ratio_hi"]) == tuple(entry["capacity_ratio_ci"])
        assert row["capacity_ratio_lo"] <= row["capacity_ratio"] <= row["capacity_ratio_hi"]
    assert summary["outputs"]["whatif"] == str(out / "whatif.parquet")


def test_the_report_draws_the_whatif_chart_with_its_calibration(written):
    summary, out = written
    text = (out / "report.html").read_text()
    assert '<meta name="kptrace-charts" content="5">' in text
    spec = json.loads(re.search(r'<script type="application/json" id="spec-whatif">(.*?)</script>', text, re.S)[1])
    subtitle = " ".join(spec["title"]["subtitle"])
    status = "within 5%" if summary["whatif"][0]["calibration"]["within_tolerance"] else "NOT within 5%"
    assert status in subtitle and "modelled" in subtitle
    drawn = {(row["label"], row["panel"]): (row["lo"], row["value"], row["hi"])
             for panel in spec["hconcat"] for row in panel["data"]["values"]}
    for entry in summary["whatif"][0]["policies"]:
        p = entry["predicted"]
        assert drawn[(entry["policy"], "capacity (requests per busy second)")] == (
            p["capacity_rps_ci"][0], p["capacity_rps"], p["capacity_rps_ci"][1])
        assert drawn[(entry["policy"], "p99 request time (µs)")] == (p["p99_us_ci"][0], p["p99_us"], p["p99_us_ci"][1])


def test_recording_a_replay_changes_nothing_it_predicts(simulated):
    from kptrace.whatif.predict import core_inputs
    from kptrace.whatif.replay import replay_core

    analysis = analyze(simulated)
    tids = analysis.requests["tid"].unique().to_list()
    for core in core_inputs(analysis, tids):
        plain, recorded = replay_core(core, False), replay_core(core, False, record=True)
        assert np.array_equal(plain.starts, recorded.starts) and np.array_equal(plain.ends, recorded.ends)
        assert (plain.busy_ns, plain.interrupts, plain.taken) == (recorded.busy_ns, recorded.interrupts, ())
        assert len(recorded.taken) == recorded.interrupts > 0
        starts = np.array([at for at, _ in recorded.taken])
        assert np.all(np.diff(starts) >= 0)  # one interrupt at a time, in order
        assert all(at >= arrival.ts for at, arrival in recorded.taken)  # never before it arrives


def test_the_predicted_timeline_is_the_replay_of_the_policy(simulated):
    analysis = analyze(simulated)
    (intervals, requests), why = predicted_timeline(analysis, "remove")
    vanilla, _ = predicted_timeline(analysis, "vanilla")
    assert why is None
    assert requests["request_id"].sort().to_list() == analysis.requests["request_id"].sort().to_list()
    assert "sim-disk" in set(vanilla[0]["name"]) and "sim-disk" not in set(intervals["name"])
    assert requests["n_irq"].sum() < vanilla[1]["n_irq"].sum()
    hard = intervals.filter(pl.col("kind") == "hardirq")
    inside = requests.join_where(hard.select("cpu", i_ts="ts"), pl.col("cpu") == pl.col("cpu_right"),
                                 pl.col("i_ts") >= pl.col("ts"), pl.col("i_ts") < pl.col("ts") + pl.col("dur"))
    assert inside.height == requests["n_irq"].sum()


def test_analyze_prints_the_whatif_table_after_the_summary(simulated, tmp_path):
    result = run("analyze", simulated, "-o", tmp_path / "out", "--whatif", "remove")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.index("requests: measured") < text.index("what-if for sim-worker") < text.index("tables:")
    assert re.search(r"^remove\s+[\d,]+ \[", text, re.M) and "calibration (vanilla replay vs measured)" in text
    assert "replayed the what-if policies for 1 server" in result.stderr


def test_an_unknown_whatif_policy_is_a_usage_error(simulated, tmp_path):
    result = run("analyze", simulated, "-o", tmp_path / "out", "--whatif", "faster")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kptrace: error: --whatif must be one of vanilla, move-irqs, remove, coalesce, busy-poll, irq-suspend, "
        "kernel-polling"]


def test_a_trace_without_requests_gets_no_whatif_and_says_why(simulated, tmp_path):
    stripped = tmp_path / "no-syscalls.txt"
    stripped.write_text("".join(line for line in simulated.read_text().splitlines(keepends=True) if "sys_" not in line))
    result = run("analyze", stripped, "-o", tmp_path / "out", "--whatif", "remove")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"^note: no what-if predictions: no requests in this trace", result.stdout, re.M)
    assert re.search(r"^note: no predicted: remove timeline group: no requests in this trace", result.stdout, re.M)
    assert not (tmp_path / "out" / "whatif.parquet").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["whatif"] == []
    assert '<p class="missing">no what-if predictions: no requests in this trace' in (
        tmp_path / "out" / "report.html").read_text()


def test_network_policies_are_predicted_on_a_nic_trace_and_drawn_by_analyze(simulated, tmp_path):
    """The disk IRQ made a NIC (a napi_poll of device eth0, 2 packets, in its chain): the
    network policies replay its NIC queue. whatif() predicts each of them, and `analyze
    --whatif coalesce` writes them all and draws the predicted group."""
    from kptrace.whatif import NETWORK_POLICIES

    lines = simulated.read_text().splitlines(keepends=True)
    nic = tmp_path / "nic.txt"
    nic.write_text("".join(
        line + (re.sub(r"irq_handler_exit:.*", "napi_poll: napi poll on napi struct 0000000012345678 for device "
                                               "eth0 work 2 budget 64", line) if "irq_handler_exit" in line else "")
        for line in lines))
    (result,) = whatif(analyze(nic), replicates=2)
    assert [entry["policy"] for entry in result["policies"]] == ["vanilla", "move-irqs", "remove", *NETWORK_POLICIES]
    assert result["skipped"] == []
    run_result = run("analyze", nic, "-o", tmp_path / "out", "--whatif", "coalesce")
    assert run_result.returncode == 0 and "Traceback" not in run_result.stderr, run_result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["whatif"][0]["policies"]) == 3 + len(NETWORK_POLICIES)
    assert pl.read_parquet(tmp_path / "out" / "whatif.parquet").height == 3 + len(NETWORK_POLICIES)
    assert not any(note.startswith("no predicted:") for note in summary["notes"])
