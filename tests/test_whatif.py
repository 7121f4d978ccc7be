"""What-if replay: calibrated on real bundles, right on simulated traces whose truth is known,
and its JSON contract (docs/whatif.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kptrace.analysis import analyze
from kptrace.simulate import Scenario, write_simulation
from kptrace.whatif import Policy, PolicyError, whatif

SAMPLES = Path(__file__).parent.parent / "sample_traces"
KPTRACE = [sys.executable, "-m", "kptrace.cli"]
CONTRACT_FIGURES = ("capacity_rps", "throughput_rps", "p50_us", "p99_us", "cpu_util", "irq_per_s")


@pytest.fixture(scope="module", params=["memcached-baseline", "memcached-diskirq-same-core",
                                        "memcached-diskirq-other-core"])
def bundle(request):
    return request.param, analyze(SAMPLES / request.param)


def test_vanilla_replay_reproduces_each_bundles_measured_capacity_and_latency(bundle):
    name, analysis = bundle
    (result,) = whatif(analysis, [Policy("vanilla")], replicates=0)
    calibration = result["calibration"]
    print(name, json.dumps(calibration, indent=1))
    for key in ("capacity_error", "p50_error", "p99_error"):
        assert abs(calibration[key]) <= 0.05, (name, key, calibration)
    assert calibration["within_tolerance"]


def _sim(tmp_path, name, scenario, fmt="perf"):
    return analyze(write_simulation(tmp_path / name, scenario, fmt))


def test_remove_predicts_the_capacity_of_the_same_workload_without_that_source(tmp_path):
    """Mechanism truth: the trace generated without the disk source is what `remove` predicts."""
    scenario = Scenario(duration_s=1.0, seed=11)
    with_disk = _sim(tmp_path, "with", scenario)
    without = _sim(tmp_path, "without", replace(scenario, sources=tuple(
        s for s in scenario.sources if s.name != "sim-disk")))
    (predicted,) = whatif(with_disk, [Policy("remove", {"source": ["sim-disk"]})], replicates=10)
    (measured,) = whatif(without, [Policy("vanilla")], replicates=0)
    got = predicted["policies"][0]["predicted"]["capacity_rps"]
    truth = measured["calibration"]["measured"]["capacity_rps"]
    print(f"remove sim-disk: predicted {got:,.0f} req/s, measured without it {truth:,.0f}")
    assert got == pytest.approx(truth, rel=0.05)
    assert predicted["policies"][0]["capacity_ratio"] > 1


def test_network_policies_change_nothing_without_nic_interrupts_and_say_why(tmp_path):
    analysis = _sim(tmp_path, "sim", Scenario(duration_s=0.3, seed=5))
    (result,) = whatif(analysis, [Policy("busy-poll"), Policy("irq-suspend")], replicates=3)
    for entry in result["policies"]:
        assert entry["capacity_ratio"] == 1.0 and entry["p99_ratio"] == 1.0
        assert any("no change predicted" in note and "NIC" in note for note in entry["notes"])


def test_a_policy_on_an_unknown_source_is_refused_with_the_known_ones(tmp_path):
    analysis = _sim(tmp_path, "sim", Scenario(duration_s=0.2, seed=5))
    with pytest.raises(PolicyError, match="no interrupt source nosuch.*known: .*sim-disk"):
        whatif(analysis, [Policy("remove", {"source": ["nosuch"]})], replicates=0)


def test_the_same_trace_gives_the_same_prediction(tmp_path):
    analysis = _sim(tmp_path, "sim", Scenario(duration_s=0.3, seed=7))
    first = whatif(analysis, None, replicates=5)
    second = whatif(analysis, None, replicates=5)
    assert json.dumps(first, default=str) == json.dumps(second, default=str)


def test_whatif_json_follows_the_documented_contract(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.3, seed=8))
    result = subprocess.run([*KPTRACE, "whatif", str(trace), "--policy", "all", "--json", "--replicates", "5"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"input", "server", "calibration", "policies", "tracing"}
    assert set(out["server"]) >= {"comm", "pids", "cpus"}
    assert set(out["tracing"]) >= {"corrected", "events_per_request", "samples_per_request"}
    assert set(out["calibration"]) >= {"capacity_error", "p99_error"}
    names = [entry["policy"] for entry in out["policies"]]
    assert names[:3] == ["vanilla", "move-irqs", "remove"] and "kernel-polling" in names
    for entry in out["policies"]:
        for key in CONTRACT_FIGURES:
            lo, hi = entry["predicted"][f"{key}_ci"]
            assert lo <= entry["predicted"][key] <= hi, (entry["policy"], key)
        lo, hi = entry["capacity_ratio_ci"]
        assert lo <= entry["capacity_ratio"] <= hi
        assert {"throughput_ratio", "p99_ratio", "params"} <= set(entry)
    removal = next(e for e in out["policies"] if e["policy"] == "remove")
    assert removal["params"]["source"] == ["sim-disk"] and removal["capacity_ratio_ci"][0] > 1


def test_whatif_on_an_unknown_source_exits_1_with_one_line(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.1, seed=8))
    result = subprocess.run([*KPTRACE, "whatif", str(trace), "--policy", "remove", "--source", "nosuch"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "nosuch" in result.stderr
