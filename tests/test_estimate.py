"""`kptrace estimate`: the counters-only estimate, on simulated runs whose truth is known, on the
real NIC runs of the IRQ-suspension series, and on this machine's disk-IRQ rate runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from kptrace.estimate import estimate
from kptrace.estimate.fit import estimate_group, theil_sen
from kptrace.estimate.inputs import read_bundle

DATA = Path(__file__).parent / "data" / "estimate"
NIC = DATA / "irqsuspend-v8-runs.csv"
DISK = DATA / "disk-rates-runs.csv"
KPTRACE = [sys.executable, "-m", "kptrace.cli"]


def run_cli(*args):
    return subprocess.run([*KPTRACE, *map(str, args)], capture_output=True, text=True)


def simulate_runs(seed: int, n_runs: int = 32, cost_ns: float = 14_000.0, irq_ns: float = 30_000.0) -> pl.DataFrame:
    """A runs table with known per-request and per-IRQ costs and noise like the lab's.

    Per-request costs vary (gamma), per-IRQ costs are long-tailed (gamma, shape 0.8), IRQ counts
    are Poisson around four paced rates, the machine's state moves each run's cost (6% lognormal),
    one run in ten has a noisy neighbour (+5..30%), and most runs have idle time."""
    rng = np.random.default_rng(seed)
    x_target = rng.choice([0.0, 0.05, 0.1, 0.2], n_runs) * rng.uniform(0.8, 1.2, n_runs) + 0.005
    requests = rng.integers(40_000, 60_000, n_runs)
    irqs = rng.poisson(x_target * requests)
    own = rng.gamma(2.0 * requests, cost_ns / 2.0)                       # sum of per-request gammas
    irq = rng.gamma(np.maximum(0.8 * irqs, 1e-9), irq_ns / 0.8) * (irqs > 0)
    machine = np.exp(rng.normal(0.0, 0.06, n_runs))
    neighbour = np.where(rng.random(n_runs) < 0.1, rng.uniform(0.05, 0.3, n_runs), 0.0)
    busy_ns = (own + irq) * machine * (1 + neighbour)
    busy_share = np.where(rng.random(n_runs) < 0.3, rng.uniform(0.96, 1.0, n_runs), rng.uniform(0.55, 0.9, n_runs))
    return pl.DataFrame({"run": [f"r{i}" for i in range(n_runs)], "group": "sim",
                         "seconds": busy_ns / 1e9 / busy_share, "cores": 1.0, "requests": requests.astype(float),
                         "busy_s": busy_ns / 1e9, "irqs": irqs.astype(float)})


# ---------------------------------------------------------------- the estimator on known truth

def test_theil_sen_agrees_with_scipy_slope():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1, 40), rng.standard_t(2, 40)
    slope, _ = theil_sen(x[None, :], y[None, :])
    assert slope[0] == pytest.approx(stats.theilslopes(y, x).slope, rel=1e-12)


def test_intervals_cover_the_true_costs_and_gain_about_95_percent_of_the_time():
    """Over 200 simulated labs, the 95% intervals hold the truth 88-99% of the time."""
    cost_ns, irq_ns, seeds = 14_000.0, 30_000.0, range(200)
    hits = {"cost_per_irq": 0, "gain": 0}
    for seed in seeds:
        result = estimate_group("sim", simulate_runs(seed, cost_ns=cost_ns, irq_ns=irq_ns), replicates=500, seed=1)
        lo, hi = result["cost_per_irq_ci"]
        hits["cost_per_irq"] += lo <= irq_ns <= hi
        true_gain = irq_ns * result["irqs_per_request_saturated"] / cost_ns
        lo, hi = result["capacity_gain_without_irqs_ci"]
        hits["gain"] += lo <= true_gain <= hi
    coverage = {name: count / len(seeds) for name, count in hits.items()}
    assert all(0.88 <= value <= 0.99 for value in coverage.values()), coverage


def test_point_estimates_land_near_the_truth():
    result = estimate_group("sim", simulate_runs(7, n_runs=60))
    assert result["cost_per_irq"] == pytest.approx(30_000, rel=0.2)
    assert result["cost_per_request_without_irqs"] == pytest.approx(14_000, rel=0.05)
    assert result["unit"] == "busy_ns"


def test_same_input_gives_the_same_output():
    runs = simulate_runs(11)
    assert estimate_group("sim", runs) == estimate_group("sim", runs)


def test_too_few_runs_gives_no_figures_and_says_why():
    result = estimate_group("sim", simulate_runs(1).head(4))
    assert result["cost_per_irq"] is None and result["capacity_gain_without_irqs"] is None
    assert "too few runs" in result["messages"][0]


def test_runs_lacking_a_count_are_left_out_with_a_warning_not_an_error():
    runs = simulate_runs(9).with_columns(irqs=pl.when(pl.col("run") == "r3").then(None).otherwise(pl.col("irqs")))
    result = estimate_group("sim", runs)
    assert result["messages"][0] == "1 run(s) lack IRQs or cost: left out of the fit"
    assert result["cost_per_irq"] == estimate_group("sim", runs.filter(pl.col("run") != "r3"))["cost_per_irq"]


def test_runs_at_one_irq_rate_give_no_slope_and_say_why():
    runs = simulate_runs(2).with_columns(irqs=pl.col("requests") * 0.1)
    result = estimate_group("sim", runs)
    assert result["cost_per_irq"] is None
    assert "too little spread" in result["messages"][0]


def test_cost_unrelated_to_irqs_is_called_a_bad_fit():
    rng = np.random.default_rng(5)
    runs = simulate_runs(5, irq_ns=0.0).with_columns(irqs=pl.Series(rng.uniform(0, 0.2, 32) * 50_000))
    result = estimate_group("sim", runs)
    assert any(text.startswith("bad fit") for text in result["messages"])
    assert result["cost_per_irq_ci"][0] <= 0 <= result["cost_per_irq_ci"][1]


def test_irq_rate_that_follows_the_load_is_flagged():
    """Fewer IRQs per request exactly where the cores are busier: load effects could pass for IRQ cost."""
    runs = simulate_runs(6).sort("irqs").with_columns(seconds=pl.col("busy_s") / pl.Series(np.linspace(0.99, 0.4, 32)))
    runs = runs.with_columns(irqs=(pl.col("requests") * pl.Series(np.linspace(0.01, 0.2, 32))).round())
    assert any("move with the load" in text for text in estimate_group("sim", runs)["messages"])


# ---------------------------------------------------------------- inputs and the command line

def test_json_output_follows_the_contract(tmp_path):
    table = tmp_path / "runs.csv"
    simulate_runs(8).write_csv(table)
    result = run_cli("estimate", table, "--json")
    assert result.returncode == 0, result.stderr
    group = json.loads(result.stdout)["groups"][0]
    for key in ("group", "runs", "unit", "cost_per_irq", "cost_per_irq_ci", "cost_per_request_without_irqs",
                "irq_share", "capacity_gain_without_irqs", "capacity_gain_without_irqs_ci", "ipc", "ipq"):
        assert key in group
    assert group["runs"] == 32 and group["unit"] == "busy_ns"
    assert group["cost_per_irq_ci"][0] < group["cost_per_irq"] < group["cost_per_irq_ci"][1]


@pytest.mark.parametrize("content, message", [
    ("run,group,seconds\n1,a,1\n", "lacks column(s) cores, requests, irqs"),
    ("run,group,seconds,cores,requests,irqs\n1,a,1,1,10,2\n", "neither busy_s nor cycles"),
    ("run,group,seconds,cores,requests,irqs,busy_s\n1,a,1,1,ten,2,1\n", "column requests holds non-numbers"),
    ("run,group,seconds,cores,requests,irqs,busy_s\n1,a,0,1,10,2,1\n", "must be positive"),
])
def test_bad_runs_table_is_one_line_error(tmp_path, content, message):
    table = tmp_path / "bad.csv"
    table.write_text(content)
    result = run_cli("estimate", table)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_input_and_non_bundle_directory_are_one_line_errors(tmp_path):
    for path, message in ((tmp_path / "nope.csv", "no such file"), (tmp_path, "not a counters bundle")):
        result = run_cli("estimate", path)
        assert result.returncode == 1 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_counters_bundle_reads_as_one_run_and_says_what_it_lacks():
    """The traced V run's bundle: 50,000 requests, the disk IRQs CPU1 took, no PMU counters."""
    bundle = DATA / "counters-bundle" / "v-run"
    frame, missing = read_bundle(bundle)
    row = frame.row(0, named=True)
    before = int(next(line for line in (bundle / "machine/interrupts-before.txt").read_text().splitlines()
                      if line.endswith("virtio1-req.0")).split()[2])
    after = int(next(line for line in (bundle / "machine/interrupts-after.txt").read_text().splitlines()
                     if line.endswith("virtio1-req.0")).split()[2])
    assert row["requests"] == 50_000 and row["cores"] == 1
    assert row["irqs.virtio1-req.0"] == after - before == row["irqs"]
    assert any("no IPC/IPQ" in text for text in missing)


# ---------------------------------------------------------------- real NIC runs (irqsuspend v8)

@pytest.fixture(scope="module")
def nic_groups() -> dict[str, dict]:
    return {g["group"]: g for g in estimate([NIC])["groups"]}


def _nic_saturated_median(group: str) -> float:
    runs = pl.read_csv(NIC).filter(pl.col("group") == group, pl.col("load") == 0)
    return runs["requests"].median()


def test_nic_ipc_and_ipq_match_the_raw_counts(nic_groups):
    """At saturation suspend20 serves more at the same instructions per query: the gain is IPC."""
    groups = nic_groups
    raw = pl.read_csv(NIC).filter(pl.col("busy_s") / (pl.col("seconds") * pl.col("cores")) >= 0.95)
    for name in ("base", "suspend20", "fullbusy"):
        mine = raw.filter(pl.col("group") == name)
        assert groups[name]["ipc"] == pytest.approx((mine["instructions"] / mine["cycles"]).median(), rel=1e-9)
        assert groups[name]["ipq"] == pytest.approx((mine["instructions"] / mine["requests"]).median(), rel=1e-9)
    assert groups["suspend20"]["ipq"] == pytest.approx(groups["base"]["ipq"], rel=0.01)
    assert groups["suspend20"]["ipc"] / groups["base"]["ipc"] > 1.15


def test_nic_base_prediction_is_a_lower_bound_of_what_suspension_measured(nic_groups):
    """From `base` alone the fit sees only IRQs as cheap as low-load ones: it under-predicts (docs)."""
    base = nic_groups["base"]
    measured = _nic_saturated_median("suspend20") / _nic_saturated_median("base") - 1
    assert measured == pytest.approx(0.185, abs=0.005)
    assert 0 < base["capacity_gain_without_irqs_ci"][1] < measured
    assert any("move with the load" in text for text in base["messages"])


def test_nic_polling_groups_are_flagged_not_believed(nic_groups):
    """Busy polling burns cycles while idle: its cost per request is not an IRQ effect."""
    for name in ("fullbusy", "napibusy", "suspend20"):
        assert nic_groups[name]["messages"], name
    assert any("not credible" in text for text in nic_groups["fullbusy"]["messages"])


@pytest.mark.xfail(strict=True, reason="issue 12 asks for within 5 points of suspend20's +18.5%; the base-only "
                   "fit predicts about +5% (docs/estimate.md, NIC check): not met yet")
def test_nic_base_prediction_within_5_points_of_suspend20(nic_groups):
    base = nic_groups["base"]
    measured = _nic_saturated_median("suspend20") / _nic_saturated_median("base") - 1
    assert abs(base["capacity_gain_without_irqs"] - measured) <= 0.05


# ---------------------------------------------------------------- this machine's disk-IRQ rate runs

def test_disk_runs_table_is_what_the_converter_makes_of_the_lab_results(tmp_path):
    """tests/data's runs table comes from the recorded whatif-ab CSV by collectors/lab/runs-table."""
    converter = Path(__file__).parent.parent / "collectors" / "lab" / "runs-table"
    out = tmp_path / "runs.csv"
    done = subprocess.run([sys.executable, converter, DATA / "disk-rates-whatif-ab-runs.csv", "--group",
                           "writes=V,V1k,V2k,V4k", "--group", "none=N", "-o", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == DISK.read_text()
    lab = pl.read_csv(DATA / "disk-rates-whatif-ab-runs.csv")
    assert pl.read_csv(out)["irqs"].to_list() == lab["disk_irqs_server_cpu"].to_list()


def _disk():
    groups = {g["group"]: g for g in estimate([DISK])["groups"]}
    none = pl.read_csv(DISK).filter(pl.col("group") == "none")
    return groups["writes"], none["busy_s"].sum() * 1e9 / none["requests"].sum()


def test_disk_writes_predict_the_no_write_capacity_within_10_percent_and_its_interval():
    """From the runs with disk writes only, the cost per request without IRQs matches the N arm's."""
    writes, none_ns = _disk()
    predicted = writes["cost_per_request_without_irqs"]
    assert abs(none_ns / predicted - 1) <= 0.10
    lo, hi = writes["cost_per_request_without_irqs_ci"]
    assert lo <= none_ns <= hi


def test_disk_gain_at_the_busiest_runs_matches_the_measured_gain():
    writes, none_ns = _disk()
    measured_gain = writes["cost_per_request_saturated"] / none_ns - 1
    lo, hi = writes["capacity_gain_without_irqs_ci"]
    assert lo <= measured_gain <= hi
    assert abs(writes["capacity_gain_without_irqs"] - measured_gain) <= 0.10


def test_disk_cost_per_irq_agrees_with_the_traced_attribution():
    """kptrace analyze's direct + indirect cost of virtio1-req.0 on the traced V run lies in the interval."""
    traced = json.loads((DATA / "disk-traced-v-attribution.json").read_text())["row"]
    writes, _ = _disk()
    lo, hi = writes["cost_per_irq_ci"]
    assert lo <= traced["direct_per_irq_ns"] + traced["indirect_per_irq_ns"] <= hi
