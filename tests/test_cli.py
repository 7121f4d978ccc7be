"""`kptrace analyze` as a user runs it: outputs, --json, directories of inputs, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import polars as pl
import pytest

from kptrace.simulate import Scenario, write_simulation

KPTRACE = [sys.executable, "-m", "kptrace.cli"]


def run(*args):
    return subprocess.run([*KPTRACE, *map(str, args)], capture_output=True, text=True)


def test_analyze_writes_every_table_the_summary_and_a_timeline(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4))
    result = run("analyze", trace, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for table in ("events", "intervals", "disruptions", "requests", "request_hits", "attribution"):
        assert pl.read_parquet(tmp_path / "out" / f"{table}.parquet").height > 0, table
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {r["source"] for r in summary["attribution"]["rows"]} == {"sim-disk", "local_timer"}
    assert (tmp_path / "out" / "timeline.perfetto-trace.gz").stat().st_size > 1000
    report = (tmp_path / "out" / "report.html").read_text()
    assert "kptrace report" in report and "sim-disk" in report
    assert "sim-disk" in result.stdout and "indirect µs estimated" in result.stdout
    assert "read" in result.stderr and "requests" in result.stderr  # progress lines


def test_json_summary_carries_units_and_provenance(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4))
    result = run("analyze", trace, "-o", tmp_path / "out", "--json")
    summary = json.loads(result.stdout)
    assert summary["attribution"]["provenance"]["indirect_*"] == "estimated"
    assert summary["attribution"]["units"]["rate_per_s"] == "interrupts/s"
    assert summary["requests"]["by_disrupted"][0]["requests"] > 0
    assert result.stderr == ""  # no progress lines mixed into machine output


def test_a_directory_of_inputs_is_analyzed_entry_by_entry(tmp_path):
    inputs = tmp_path / "inputs"
    for seed in (1, 2):
        write_simulation(tmp_path / f"s{seed}", Scenario(duration_s=0.1, seed=seed))
        inputs.mkdir(exist_ok=True)
        (tmp_path / f"s{seed}" / "trace.txt").rename(inputs / f"run{seed}.txt")
    result = run("analyze", inputs, "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {str(inputs / "run1.txt"), str(inputs / "run2.txt")}
    assert (tmp_path / "out" / "run1" / "attribution.parquet").exists()


def test_unusable_input_exits_1_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("analyze", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "empty directory" in result.stderr


def test_bad_usage_exits_2(tmp_path):
    assert run("analyze").returncode == 2
    assert run("simulate", "-o", tmp_path, "--format", "pcap").returncode == 2


def test_a_trace_with_neither_interrupts_nor_requests_still_analyzes(tmp_path):
    """perf-counters.txt.zst holds only sys_exit_epoll_wait samples and counter readings."""
    from conftest import DATA

    result = run("analyze", DATA / "perf-counters.txt.zst", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "no per-request view" in result.stdout and "interrupt costs may be undercounted" in result.stdout
    assert (tmp_path / "out" / "timeline.perfetto-trace.gz").exists() and (tmp_path / "out" / "report.html").exists()


DAMAGE = {
    "cut": lambda lines, rng: lines[: len(lines) * 2 // 3] + [lines[len(lines) * 2 // 3][:20]],
    "garbled": lambda lines, rng: [("@@ %d\n" % rng.random()) if rng.random() < 0.01 else line for line in lines],
    "dropped": lambda lines, rng: [line for line in lines if rng.random() > 0.02],
    "shuffled": lambda lines, rng: rng.sample(lines, len(lines)),
    "lost": lambda lines, rng: [x for line in lines for x in ([line, "CPU:1 [LOST 7 EVENTS]\n"]
                                                             if rng.random() < 0.005 else [line])],
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_analyze_of_a_damaged_trace_warns_and_finishes(tmp_path, damage):
    """Every kind of damage ends in results plus a warning (or a one-line error), never a traceback."""
    import random

    lines = write_simulation(tmp_path / "sim", Scenario(duration_s=0.1, seed=6)).read_text().splitlines(keepends=True)
    damaged = DAMAGE[damage](lines[6:], random.Random(damage))
    (tmp_path / "damaged.txt").write_text("".join(damaged))
    result = run("analyze", tmp_path / "damaged.txt", "-o", tmp_path / "out", "-q")
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 0, result.stderr
    warned = any(line.startswith("kptrace: warning:") for line in result.stderr.splitlines())
    noted = re.search(r"note: [\d,]+ of [\d,]+ intervals lack their entry or exit", result.stdout)
    assert warned or (damage == "dropped" and noted)  # dropped lines show only as unpaired intervals
    assert "sim-disk" in result.stdout
