"""`kptrace analyze` as a user runs it: outputs, --json, directories of inputs, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from kptrace.simulate import Scenario, write_simulation

KPTRACE = [sys.executable, "-m", "kptrace.cli"]
SAMPLES = Path(__file__).parent.parent / "sample_traces"


def run(*args):
    return subprocess.run([*KPTRACE, *map(str, args)], capture_output=True, text=True)


def _truth_sources(sim_dir) -> set[str]:
    return {row["source"] for row in json.loads((sim_dir / "truth.json").read_text())["per_source"]}


def test_analyze_writes_every_table_as_the_library_computes_it(tmp_path):
    """The Parquet tables read back equal the in-memory analysis; summary.json is its summary."""
    from polars.testing import assert_frame_equal

    from kptrace.analysis import analyze
    from kptrace.summary import build_summary

    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4))
    result = run("analyze", trace, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    expected = analyze(trace)
    for name, table in expected.tables().items():  # the events are a view of the held table
        assert_frame_equal(pl.read_parquet(tmp_path / "out" / f"{name}.parquet"), table.lazy().collect(), check_exact=True)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    outputs = summary.pop("outputs")
    assert summary == json.loads(json.dumps(build_summary(expected), default=str))
    assert outputs["timeline_window"] is None and outputs["tables"] == sorted(expected.tables())  # drawn whole
    assert {r["source"] for r in summary["attribution"]["rows"]} == _truth_sources(tmp_path / "sim")
    assert (tmp_path / "out" / "timeline.perfetto-trace.gz").stat().st_size > 1000
    report = (tmp_path / "out" / "report.html").read_text()
    assert all(source in report for source in _truth_sources(tmp_path / "sim"))
    assert all(source in result.stdout for source in _truth_sources(tmp_path / "sim"))
    assert "indirect µs estimated" in result.stdout
    assert "read" in result.stderr and "requests" in result.stderr  # progress lines


def test_library_callers_analyze_frames_and_write_the_same_outputs(tmp_path):
    """analyze_events on the event table gives analyze()'s tables; analyze_intervals without
    events gives the same attribution and says what it could not check; write_all writes what
    the CLI writes."""
    from polars.testing import assert_frame_equal

    from kptrace.analysis import analyze, analyze_events, analyze_intervals
    from kptrace.export.outputs import write_all

    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4))
    from_path = analyze(trace)
    from_events = analyze_events(from_path.events, from_path.meta)
    for name, table in from_path.tables().items():
        assert_frame_equal(from_events.tables()[name].lazy().collect(), table.lazy().collect(), check_exact=True)
    from_intervals = analyze_intervals(from_path.intervals)
    assert from_intervals.events is None and "events" not in from_intervals.tables()
    assert any("without events" in note for note in from_intervals.notes)
    assert_frame_equal(from_intervals.requests, from_path.requests, check_exact=True)
    own = from_intervals.attribution.select("cpu", "source", "count", "direct_per_irq_ns", "indirect_per_irq_ns")
    assert_frame_equal(own, from_path.attribution.select(own.columns), check_exact=True)
    summary = write_all(from_events, tmp_path / "lib")
    assert sorted(summary["outputs"]["tables"]) == sorted(from_path.tables())
    assert_frame_equal(pl.read_parquet(tmp_path / "lib" / "requests.parquet"), from_path.requests)
    assert (tmp_path / "lib" / "report.html").exists() and (tmp_path / "lib" / "timeline.perfetto-trace.gz").exists()
    write_all(from_intervals, tmp_path / "intervals-only")
    assert not (tmp_path / "intervals-only" / "events.parquet").exists()
    assert (tmp_path / "intervals-only" / "attribution.parquet").exists()


def test_json_summary_carries_units_and_provenance(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4))
    result = run("analyze", trace, "-o", tmp_path / "out", "--json")
    summary = json.loads(result.stdout)
    assert summary["attribution"]["provenance"]["indirect_per_irq_ns"] == "estimated"
    assert summary["attribution"]["units"]["rate_per_s"] == "interrupts/s"
    assert summary["requests"]["by_disrupted"][0]["requests"] > 0
    assert result.stderr == ""  # no progress lines mixed into machine output


def test_a_directory_of_inputs_is_analyzed_each_into_its_own_folder(tmp_path):
    """Names that shorten alike (`a.txt` and `a.txt.zst`) keep their full names; every folder
    holds the analysis of its own input."""
    import zstandard
    from polars.testing import assert_frame_equal

    from kptrace.analysis import analyze

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    names = {1: "a.1.txt", 2: "a.2.txt", 3: "a.txt", 4: "a.txt.zst"}
    for seed, name in names.items():
        text = write_simulation(tmp_path / f"s{seed}", Scenario(duration_s=0.05, seed=seed)).read_bytes()
        (inputs / name).write_bytes(zstandard.compress(text) if name.endswith(".zst") else text)
    result = run("analyze", inputs, "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    summaries = json.loads(result.stdout)
    assert set(summaries) == {str(inputs / name) for name in names.values()}
    folders = {"a.1.txt": "a.1", "a.2.txt": "a.2", "a.txt": "a.txt", "a.txt.zst": "a.txt.zst"}
    for seed, name in names.items():
        out = tmp_path / "out" / folders[name]
        assert summaries[str(inputs / name)]["outputs"]["directory"] == str(out)
        expected = analyze(tmp_path / f"s{seed}" / "trace.txt").requests
        assert_frame_equal(pl.read_parquet(out / "requests.parquet"), expected, check_exact=True)


def test_a_failing_entry_does_not_stop_the_others(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_simulation(tmp_path / "sim", Scenario(duration_s=0.05, seed=1)).rename(inputs / "good.txt")
    (inputs / "broken.txt").write_text("")
    result = run("analyze", inputs, "-o", tmp_path / "out", "-q")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("kptrace: error:")]
    assert len(errors) == 2 and "broken.txt" in errors[0] and "1 of 2 inputs" in errors[1]
    assert "good.txt" in result.stdout and (tmp_path / "out" / "good" / "attribution.parquet").exists()
    assert not (tmp_path / "out" / "broken").exists()


def test_simulate_from_the_command_line_writes_a_trace_analyze_reads(tmp_path):
    for fmt in ("tracefs", "trace-cmd", "perf"):
        result = run("simulate", "-o", tmp_path / fmt, "--format", fmt, "--duration", "0.05", "--seed", "2")
        assert result.returncode == 0, result.stderr
        truth = json.loads((tmp_path / fmt / "truth.json").read_text())
        analyzed = json.loads(run("analyze", tmp_path / fmt / "trace.txt", "-o", tmp_path / f"{fmt}-out",
                                  "--json").stdout)
        assert {r["source"] for r in analyzed["attribution"]["rows"]} == {r["source"] for r in truth["per_source"]}, fmt
    texts = {fmt: (tmp_path / fmt / "trace.txt").read_text() for fmt in ("tracefs", "trace-cmd", "perf")}
    assert texts["trace-cmd"].startswith("cpus=") and "# tracer: nop" in texts["tracefs"]
    assert " cycles: " in texts["perf"]


def test_perf_input_gives_the_ipc_tables(tmp_path):
    run("simulate", "-o", tmp_path / "sim", "--format", "perf", "--duration", "0.2", "--seed", "3")
    result = run("analyze", tmp_path / "sim" / "trace.txt", "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    ipc = pl.read_parquet(tmp_path / "out" / "ipc.parquet")
    assert set(ipc["group"]) == {"clean", "disrupted", "all"}
    scenario = json.loads((tmp_path / "sim" / "truth.json").read_text())["scenario"]
    clean = ipc.filter(pl.col("group") == "clean").row(0, named=True)
    assert clean["ipc"] == pytest.approx(scenario["ipc_clean"], rel=0.01)
    counters = pl.read_parquet(tmp_path / "out" / "request_counters.parquet")
    assert set(counters["counter"]) == {"cycles", "instructions"}
    assert "IPC" in result.stdout


def test_analyze_of_a_bundle_reads_its_manifest_and_counters(tmp_path):
    result = run("analyze", SAMPLES / "memcached-baseline", "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["input"]["format"].startswith("kptrace-bundle")
    assert summary["input"]["counters"] == {"kind": "software-only", "names": ["msr/tsc/", "task-clock"]}
    rows = pl.read_parquet(tmp_path / "out" / "attribution.parquet")
    assert rows.height == len(summary["attribution"]["rows"])
    assert set(pl.read_parquet(tmp_path / "out" / "request_counters.parquet")["counter"]) == {"task-clock", "msr/tsc/"}


def test_unusable_input_exits_1_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("analyze", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "empty directory" in result.stderr


def test_bad_usage_exits_2(tmp_path):
    assert run("analyze").returncode == 2
    assert run("simulate", "-o", tmp_path, "--format", "pcap").returncode == 2


def test_a_timeline_window_draws_those_seconds_and_the_tables_keep_everything(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4))
    whole = run("analyze", trace, "-o", tmp_path / "whole", "--json")
    part = run("analyze", trace, "-o", tmp_path / "part", "--json", "--timeline-window", "0.05:0.1")
    assert whole.returncode == part.returncode == 0, part.stderr
    whole_out, part_out = json.loads(whole.stdout)["outputs"], json.loads(part.stdout)["outputs"]
    window = part_out["timeline_window"]
    assert (window["start_s"], window["end_s"]) == (0.05, 0.1) and window["end_ns"] - window["start_ns"] == 50_000_000
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["outputs"]["timeline_window"] == window
    assert 0 < part_out["timeline_slices"] < whole_out["timeline_slices"] / 2
    for name in whole_out["tables"]:
        assert pl.read_parquet(tmp_path / "part" / f"{name}.parquet").equals(
            pl.read_parquet(tmp_path / "whole" / f"{name}.parquet"))


@pytest.mark.parametrize("window", ["2", "3:1", "a:b", "-1:2", "1:inf"])
def test_a_bad_timeline_window_exits_2_with_one_line(tmp_path, window):
    result = run("analyze", SAMPLES / "memcached-baseline", "-o", tmp_path / "out", "--timeline-window", window)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--timeline-window" in result.stderr and not (tmp_path / "out").exists()


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


def _stderr_on_a_terminal(args: list, cwd: Path) -> str:
    """stderr of a kptrace command run with a pseudo-terminal as its stderr (stdout discarded)."""
    import os
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen([*KPTRACE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=follower, cwd=cwd)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait() == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_analyze_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(tmp_path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.1, seed=5))
    plain = run("analyze", trace, "-o", tmp_path / "plain").stderr
    lines = [line for line in plain.splitlines() if line.startswith("kptrace: [")]
    assert [line.split(": ", 2)[2].split()[0] for line in lines] == ["read", "rebuilt", "found", "replayed", "wrote"]
    assert "\x1b" not in plain
    on_terminal = _stderr_on_a_terminal(["analyze", trace, "-o", tmp_path / "tty"], tmp_path)
    assert all(line.split("] ", 1)[1] in on_terminal for line in lines if "wrote" not in line)  # same lines
    assert "\x1b[" in on_terminal and "/5" in on_terminal and "finding requests" in on_terminal  # the bar


#: Runs kptrace's main in a fresh interpreter with argv[1:], recording each garbage collection and
#: whether the command's imports were done (its first _freeze_imports) when it ran; prints JSON.
_COLLECTIONS_SCRIPT = """
import gc, json, sys
import kptrace.cli as cli
seen = {"polars_at_import": "polars" in sys.modules, "before": 0, "after": 0}
frozen = []
def record(phase, info):
    if phase == "stop":
        seen["after" if frozen else "before"] += 1
gc.callbacks.append(record)
freeze = cli._freeze_imports
def marked():
    frozen.append(True)
    freeze()
cli._freeze_imports = marked
sys.argv = ["kptrace", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as stop:
    seen["exit"] = stop.code
seen["enabled"] = gc.isenabled()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("args, code", [
    (["analyze", SAMPLES / "memcached-diskirq-same-core", "-o", "{tmp}/out", "--quiet"], 0),
    (["analyze", SAMPLES / "memcached-diskirq-same-core", "-o", "{tmp}/out", "--whatif", "nonsense"], 2),
])
def test_the_command_collects_no_garbage_during_its_imports_and_collects_after(tmp_path, args, code):
    """Importing kptrace.cli leaves Polars for the command to import; main pauses the garbage
    collector through the command's imports (numpy, Polars, pyarrow, altair: objects that live as
    long as the process) and the command collects again once they are frozen; a command that
    stops early leaves the collector on too."""
    argv = [str(a).format(tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-c", _COLLECTIONS_SCRIPT, *argv], capture_output=True, text=True)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["polars_at_import"] is False
    assert (seen.get("exit") or 0) == code
    assert seen["enabled"] is True
    if code == 0:
        assert seen["before"] == 0 and seen["after"] > 0
        assert (tmp_path / "out" / "summary.json").exists()
