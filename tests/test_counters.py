"""Counters-only bundles (docs/counters.md): read, analyzed and estimated from real /proc samples.

The bundles are recorded here by tests/counters_sampler.py from this machine's own /proc files
(and `perf stat` where it runs); damaged variants are made by editing those real files the way a
killed recorder, a wrapping counter, a reset or an offline CPU would. Expected figures are
recomputed in the tests from the raw text, never typed in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_tools, unavailable
from counters_sampler import record_counters, record_memcached_lab
from kptrace.counters import analyze_counters
from kptrace.estimate import estimate
from kptrace.estimate.inputs import parse_cpu_list, read_counters_windows
from kptrace.errors import TraceError
from kptrace.read.counters import USER_HZ, WRAP, interval_deltas, is_counters_bundle, read_counters_bundle
from test_report import check_page, chromium, render  # noqa: F401 (chromium is a fixture)

ROOT = Path(__file__).resolve().parent.parent
LAST_CPU = os.cpu_count() - 1


def _ctxt() -> int:
    """A real cumulative count that moves every sample: context switches since boot."""
    return int(next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("ctxt")).split()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Path:
    """2 s of this machine's /proc, with one CPU kept spinning by a pinned busy loop."""
    spinner = subprocess.Popen(["taskset", "-c", str(LAST_CPU), sys.executable, "-c",
                                "import time\nend = time.monotonic() + 4\nwhile time.monotonic() < end: pass"])
    try:
        bundle = record_counters(tmp_path_factory.mktemp("live") / "bundle", 2.0, [LAST_CPU],
                                 ["/proc/stat ctxt"], count_requests=_ctxt)
    finally:
        spinner.wait(timeout=30)
    return bundle


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def blocks(path: Path) -> list[tuple[int, list[str]]]:
    """The raw `@ t_ns` blocks of a sampled file, parsed here independently of the reader."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("@ "):
            out.append((int(line[2:]), []))
        else:
            out[-1][1].append(line)
    return out


def write_blocks(path: Path, parts: list[tuple[int, list[str]]]) -> None:
    path.write_text("".join(f"@ {t}\n" + "".join(f"{line}\n" for line in lines) for t, lines in parts))


def irq_counts(lines: list[str]) -> dict[tuple[int, str], int]:
    """(cpu, irq label) -> count from one /proc/interrupts block."""
    cpus = [int(c[3:]) for c in lines[0].split()]
    counts = {}
    for line in lines[1:]:
        label, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= len(cpus):
            counts |= {(cpu, label.strip()): int(value) for cpu, value in zip(cpus, fields)}
    return counts


# --------------------------------------------------------------------------- reading


def test_a_counters_bundle_is_recognised_by_its_manifest(live, tmp_path):
    assert is_counters_bundle(live)
    other = copy_of(live, tmp_path)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest | {"capture": "trace"}))
    assert not is_counters_bundle(other) and not is_counters_bundle(tmp_path / "nothing")


def test_irq_counts_per_interval_add_up_to_the_raw_difference(live):
    raw = blocks(live / "counters" / "interrupts.txt")
    first, last = irq_counts(raw[0][1]), irq_counts(raw[-1][1])
    rates = analyze_counters(live).counter_rates.filter(pl.col("kind") != "softirq")
    summed = {(cpu, irq): total for cpu, irq, total in
              rates.group_by("cpu", "irq").agg(pl.col("count").sum()).iter_rows()}
    assert summed == {key: last[key] - first[key] for key in first}
    moving = rates.filter(pl.col("count") > 0)
    assert moving.height > 0
    # a rate is its interval's count over that interval's measured length
    row = moving.row(0, named=True)
    assert row["rate_per_s"] == pytest.approx(row["count"] / ((row["t1_ns"] - row["t0_ns"]) / 1e9))
    kinds = dict(rates.select("irq", "kind").unique().iter_rows())
    assert kinds["LOC"] == "cpu" and all(kinds[k] == "device" for k in kinds if k.isdigit())


def test_busy_idle_iowait_and_steal_fill_each_interval(live):
    busy = analyze_counters(live).cpu_busy
    accounted = busy["busy_s"] + busy["idle_s"] + busy["iowait_s"] + busy["steal_s"]
    # ticks are 10 ms and each CPU's counts are read a little after the sample's stamp
    assert ((accounted - busy["seconds"]).abs() <= 3 / USER_HZ).all()
    assert busy["cpu"].n_unique() == os.cpu_count()


def test_a_spinning_cpu_shows_as_busy(live):
    mine = analyze_counters(live).cpu_busy.filter(pl.col("cpu") == LAST_CPU)
    share = (mine["busy_s"].sum() + mine["steal_s"].sum()) / mine["seconds"].sum()
    assert share > 0.9


def test_requests_per_interval_add_up_to_the_count_difference(live):
    lines = (live / "counters" / "requests.txt").read_text().split()
    counts = [int(v) for v in lines[1::2]]
    requests = analyze_counters(live).requests
    assert requests["requests"].sum() == counts[-1] - counts[0]
    assert requests.height == len(counts) - 1


def test_perf_stat_intervals_are_read_per_cpu_when_perf_runs(live):
    bundle = read_counters_bundle(live)
    if bundle.perf_stat is None:
        unavailable("perf stat did not run here")
    clock = bundle.perf_stat.filter(pl.col("event") == "task-clock")
    assert sorted(clock["cpu"].unique().to_list()) == list(range(os.cpu_count()))
    # task-clock under -a counts each interval's wall time per CPU (msec): placed on the samples'
    # clock, consecutive lines are that far apart (perf's timer runs late on a loaded machine)
    spaced = clock.sort("cpu", "t_ns").with_columns(gap_ms=pl.col("t_ns").diff().over("cpu") / 1e6).drop_nulls()
    assert ((spaced["value"] - spaced["gap_ms"]).abs() / spaced["gap_ms"]).median() < 0.1


def test_same_bundle_gives_the_same_tables(live):
    one, two = analyze_counters(live), analyze_counters(live)
    assert one.counter_rates.equals(two.counter_rates) and one.cpu_busy.equals(two.cpu_busy)


# --------------------------------------------------------------------------- damage


def test_a_torn_last_block_is_left_out_with_a_warning(live, tmp_path):
    torn = copy_of(live, tmp_path)
    path = torn / "counters" / "interrupts.txt"
    text = path.read_text()
    path.write_text(text[:text.rindex("\n", 0, len(text) - 1) - 7])   # cut mid-line in the last block
    whole, cut = analyze_counters(live), analyze_counters(torn)
    assert any("interrupts.txt: the last sample" in w and "incomplete" in w for w in cut.warnings)
    irq = pl.col("kind") != "softirq"
    kept = cut.counter_rates.filter(irq)
    assert kept["t1_ns"].max() < whole.counter_rates.filter(irq)["t1_ns"].max()
    assert kept.equals(whole.counter_rates.filter(irq, pl.col("t1_ns") <= kept["t1_ns"].max()))


def _edit_series(bundle: Path, label: str, cpu_column: int, change) -> None:
    """Rewrite one /proc/interrupts line's count on one CPU in every block: new = change(index, old)."""
    path = bundle / "counters" / "interrupts.txt"
    parts = blocks(path)
    for index, (_, lines) in enumerate(parts):
        for n, line in enumerate(lines):
            head, _, rest = line.partition(":")
            if head.strip() == label:
                fields = rest.split()
                fields[cpu_column] = str(change(index, int(fields[cpu_column])))
                lines[n] = f"{head}: " + " ".join(fields)
    write_blocks(path, parts)


def test_a_32_bit_wrap_is_counted_through(live, tmp_path):
    wrapped = copy_of(live, tmp_path)
    offset = WRAP - 1 - irq_counts(blocks(live / "counters" / "interrupts.txt")[5][1])[(0, "LOC")]
    _edit_series(wrapped, "LOC", 0, lambda i, old: (old + offset) % WRAP)
    result = analyze_counters(wrapped)
    assert any("wrapped at 2^32" in w for w in result.warnings)
    loc = pl.col("irq") == "LOC"
    assert result.counter_rates.filter(loc).equals(analyze_counters(live).counter_rates.filter(loc))


def test_a_reset_counter_leaves_its_interval_out_not_a_negative_rate(live, tmp_path):
    reset = copy_of(live, tmp_path)
    at = irq_counts(blocks(live / "counters" / "interrupts.txt")[8][1])[(0, "LOC")]
    _edit_series(reset, "LOC", 0, lambda i, old: old - at if i >= 8 else old)
    result = analyze_counters(reset)
    assert any("went backwards (a reset)" in w and "cpu 0, irq LOC" in w for w in result.warnings)
    mine = result.counter_rates.filter(pl.col("irq") == "LOC", pl.col("cpu") == 0).sort("t1_ns")
    original = analyze_counters(live).counter_rates.filter(pl.col("irq") == "LOC", pl.col("cpu") == 0).sort("t1_ns")
    assert mine["count"].null_count() == 1 and mine["count"][7] is None
    assert mine["count"].drop_nulls().min() >= 0
    assert mine["count"].fill_null(-1).to_list() == [c if i != 7 else -1 for i, c in enumerate(original["count"])]


def test_a_cpu_missing_from_a_sample_leaves_its_intervals_around_it_out(live, tmp_path):
    offline = copy_of(live, tmp_path)
    path = offline / "counters" / "stat.txt"
    parts = blocks(path)
    parts[6] = (parts[6][0], [line for line in parts[6][1] if not line.startswith(f"cpu{LAST_CPU} ")])
    write_blocks(path, parts)
    result = analyze_counters(offline)
    assert any(f"CPU {LAST_CPU} is missing from 1 of" in w for w in result.warnings)
    assert any("span samples where the series was missing" in w for w in result.warnings)
    gone = set(analyze_counters(live).cpu_busy.filter(pl.col("cpu") == LAST_CPU)["t1_ns"]) - set(
        result.cpu_busy.filter(pl.col("cpu") == LAST_CPU)["t1_ns"])
    assert gone == {parts[6][0], parts[7][0]}
    assert result.cpu_busy.filter(pl.col("cpu") != LAST_CPU).height == analyze_counters(live).cpu_busy.filter(
        pl.col("cpu") != LAST_CPU).height


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 2 ** 40), steps=st.lists(st.integers(0, WRAP // 2 - 1), min_size=1, max_size=40))
def test_32_bit_counts_give_the_true_increments_however_often_they_wrap(start, steps):
    """A per-CPU IRQ count is the true count modulo 2^32: the deltas must still be the true steps."""
    true = [start]
    for step in steps:
        true.append(true[-1] + step)
    seen = pl.DataFrame({"sample": range(len(true)), "t_ns": [i * 100_000_000 for i in range(len(true))],
                         "count": [c % WRAP for c in true]}, schema={"sample": pl.Int32, "t_ns": pl.Int64, "count": pl.Int64})
    warnings: list[str] = []
    assert interval_deltas(seen, (), "x", warnings)["delta"].to_list() == steps
    assert bool(warnings) == any(a % WRAP > b % WRAP for a, b in zip(true, true[1:]))


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "counters" / "stat.txt").write_text("cpu0 1 2 3\n"), "expected '@ <t_ns>' before the first sample"),
    (lambda b: (b / "counters" / "softirqs.txt").unlink(), "missing: the manifest names it"),
    (lambda b: (b / "counters" / "interrupts.txt").write_text("@ soon\n"), "line 1: expected '@ <t_ns>'"),
    (lambda b: (b / "manifest.json").write_text("{"), "not JSON"),
])
def test_unusable_files_are_one_line_errors(live, tmp_path, damage, message):
    bad = copy_of(live, tmp_path)
    damage(bad)
    with pytest.raises(TraceError, match=re.escape(message)):
        analyze_counters(bad)


# --------------------------------------------------------------------------- the command


def kptrace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kptrace.cli", *args], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300)


def test_analyze_writes_tables_summary_and_report(live, tmp_path):
    done = kptrace("analyze", str(live), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rates = pl.read_parquet(tmp_path / "out" / "counter_rates.parquet")
    busy = pl.read_parquet(tmp_path / "out" / "cpu_busy.parquet")
    analysis = analyze_counters(live)
    assert rates.equals(analysis.counter_rates) and busy.equals(analysis.cpu_busy)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    mine = next(c for c in summary["cpus"] if c["cpu"] == LAST_CPU)
    assert f"CPU {LAST_CPU}: busy {mine['busy_share']:.1%} of its time" in done.stdout
    assert f"requests: {summary['requests']['total']:,} served" in done.stdout


def test_analyze_json_is_the_summary_it_writes(live, tmp_path):
    done = kptrace("analyze", str(live), "-o", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert printed.pop("outputs")["report"] == str(tmp_path / "out" / "report.html")
    assert printed == written


def test_analyze_prints_names_from_the_bundle_terminal_safe(live, tmp_path):
    hostile = copy_of(live, tmp_path)
    manifest = json.loads((hostile / "manifest.json").read_text())
    (hostile / "manifest.json").write_text(json.dumps(manifest | {"hostname": "box\x1b]0;owned\x07"}))
    done = kptrace("analyze", str(hostile), "-o", str(tmp_path / "out"))
    assert done.returncode == 0 and "\x1b" not in done.stdout and "box\\x1b]0;owned\\x07" in done.stdout


def test_analyze_of_a_damaged_bundle_is_one_line(live, tmp_path):
    bad = copy_of(live, tmp_path)
    (bad / "counters" / "stat.txt").write_text("garbage\n")
    done = kptrace("analyze", str(bad), "-o", str(tmp_path / "out"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "stat.txt" in done.stderr


def test_report_renders_both_charts_offline(live, tmp_path, chromium):  # noqa: F811
    assert kptrace("analyze", str(live), "-o", str(tmp_path / "out"), "-q").returncode == 0
    report = tmp_path / "out" / "report.html"
    charts, found, state = render(chromium, report, tmp_path, tmp_path / "report.png")
    check_page(charts, found, state, ["irq-rate", "cpu-busy"])
    texts = {t for c in charts for t in c["texts"]}
    assert "interrupts per second" in texts and "busy share of the interval, %" in texts
    assert f"CPU {LAST_CPU}" in texts


# --------------------------------------------------------------------------- estimate


def test_serving_cpu_list_parses_like_the_kernel_cpulist():
    assert parse_cpu_list("3,0-1") == [0, 1, 3]
    with pytest.raises(TraceError, match="expected a CPU list"):
        parse_cpu_list("1-x")


def test_windows_sum_the_serving_cpu_counts_of_one_second(live):
    """Each window holds the intervals that end within its second (by the request samples' clock,
    since a collector that skips late ticks puts a varying number of samples in a second)."""
    runs, _ = read_counters_windows(live)
    raw = blocks(live / "counters" / "interrupts.txt")
    stamps = [int(v) for v in (live / "counters" / "requests.txt").read_text().split()[0::2]]
    requests = [int(v) for v in (live / "counters" / "requests.txt").read_text().split()[1::2]]
    ends: dict[int, list[int]] = {}
    for sample in range(1, len(stamps)):
        ends.setdefault((stamps[sample] - stamps[0]) // 1_000_000_000, []).append(sample)
    whole = {w: s for w, s in ends.items() if stamps[s[-1]] - stamps[s[0] - 1] >= 0.9e9}
    assert runs["run"].to_list() == [f"bundle#{w}" for w in sorted(whole)]
    for row, (window, samples) in zip(runs.iter_rows(named=True), sorted(whole.items())):
        first, last = irq_counts(raw[samples[0] - 1][1]), irq_counts(raw[samples[-1]][1])
        assert row["irqs"] == sum(last[k] - first[k] for k in first if k[0] == LAST_CPU and k[1].isdigit())
        assert row["requests"] == requests[samples[-1]] - requests[samples[0] - 1]
        assert row["cores"] == 1 and row["seconds"] == pytest.approx(1.0, abs=0.25)


def test_estimate_refuses_without_serving_cpus_or_requests(live, tmp_path):
    anonymous = copy_of(live, tmp_path / "a")
    manifest = json.loads((anonymous / "manifest.json").read_text())
    manifest["counters_only"]["serving_cpus"] = None
    (anonymous / "manifest.json").write_text(json.dumps(manifest))
    done = kptrace("estimate", str(anonymous))
    assert done.returncode == 1 and "kptrace estimate --serving-cpus LIST" in done.stderr and done.stderr.count("\n") == 1
    assert kptrace("estimate", str(anonymous), "--serving-cpus", str(LAST_CPU)).returncode == 0
    silent = copy_of(live, tmp_path / "b")
    manifest = json.loads((silent / "manifest.json").read_text())
    (silent / "manifest.json").write_text(json.dumps(manifest | {"files": manifest["files"] | {"requests": None}}))
    done = kptrace("estimate", str(silent), "--serving-cpus", "0")
    assert done.returncode == 1 and "no request count" in done.stderr


def test_serving_cpus_override_the_manifest(live):
    mine = read_counters_windows(live)[0]
    other = read_counters_windows(live, [0])[0] if LAST_CPU else mine
    both = read_counters_windows(live, [0, LAST_CPU])[0]
    assert (both["cores"] == (2 if LAST_CPU else 1)).all()
    if LAST_CPU:
        assert both["busy_s"].to_list() == pytest.approx((mine["busy_s"] + other["busy_s"]).to_list())


def test_perf_intervals_are_summed_into_the_window_they_end_in(live, tmp_path):
    """This VM has no PMU, so perf's real task-clock lines stand in for cycles (relabelled in a
    copy): per CPU under -a, task-clock counts wall time, so a 1 s window must sum to ~1000 msec."""
    if read_counters_bundle(live).perf_stat is None:
        unavailable("perf stat did not run here")
    relabelled = copy_of(live, tmp_path)
    csv = relabelled / "perf-stat.csv"
    csv.write_text(csv.read_text().replace(",cycles,", ",not-cycles,").replace(",task-clock,", ",cycles,"))
    runs, warnings = read_counters_windows(relabelled)
    assert not any("no cycles" in w for w in warnings)
    assert runs["cycles"].to_list() == pytest.approx((runs["seconds"] * 1000).to_list(), rel=0.15)


@pytest.fixture(scope="module")
def memcached_lab(tmp_path_factory) -> Path:
    """memcached on the disk-IRQ core, a disk writer paced through four rates: a real bundle."""
    require_tools("memcached", "memcaslap", "taskset")
    if os.cpu_count() < 2 or not Path("/var/tmp").is_dir():
        unavailable("needs 2 CPUs and /var/tmp")
    root = tmp_path_factory.mktemp("lab") / "disk-rates"
    return record_memcached_lab(root / "run", 1.5, [0, 1000, 2000, 4000], port=11990 + os.getpid() % 9)


def test_estimate_of_a_real_memcached_bundle_follows_the_contract(memcached_lab):
    result = estimate([memcached_lab])
    group = result["groups"][0]
    windows = read_counters_windows(memcached_lab)[0]
    assert group["group"] == "disk-rates" and group["runs"] == windows.height >= 4
    assert group["unit"] == "busy_ns"
    for run, window in zip(group["per_run"], windows.iter_rows(named=True)):
        assert run["cost_per_request"] == pytest.approx(window["busy_s"] * 1e9 / window["requests"])
        assert run["irqs_per_request"] == pytest.approx(window["irqs"] / window["requests"])
    assert window["irqs.virtio1-req.0"] > 0 or windows["irqs.virtio1-req.0"].sum() > 0
    # figures or a reason: never a silent null
    assert group["cost_per_irq"] is not None or group["messages"]
    assert any("cycles" in w for w in result["warnings"]) or group["ipc"] is not None
