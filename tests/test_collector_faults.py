"""The collector when the machine misbehaves (issue 11, item 5): real faults, real recordings.

Each fault must give one clear error line and a non-zero exit, leave tracefs as it was, and
keep what was recorded up to the fault, readable by `kptrace analyze`. Needs root and tracefs
(skips without them, fails in CI), like tests/test_collector.py whose helpers it uses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_collector import (CONTINUOUS, LOOPBACK_TRAFFIC, RECORD, TRACEFS, assert_state_unchanged, collector_instances,
                            counter_blocks, decompress, our_processes, record, recording_root, require_root_tracefs,
                            tracefs_state, wait_for_instance, wait_lock_free)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root():
    require_root_tracefs()
    wait_lock_free()


def analyze(bundle: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kptrace.cli", "analyze", "-q", str(bundle), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)


#: The one warning a fault's output may carry besides its error: a loaded machine (CI runs
#: beside other work) can overrun the ring buffer while the disk fills, and the collector says so.
LOSS_WARNING = "kptrace-record: warning: ring buffer lost "


def one_error_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(LOSS_WARNING)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kptrace-record: error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


# ----------------------------------------------------------------- the output disk fills up
@pytest.fixture
def small_disk(tmp_path):
    """An 80 MiB tmpfs of the test's own (unmounted afterwards): room for the collector's free-space
    check (64 MiB plus half the ring buffers), and small enough to fill in a moment."""
    point = tmp_path / "disk"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m,mode=0700", "kptrace-fault-disk", str(point)],
                   check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def fill(path: Path) -> int:
    """Write zeros until the file system says ENOSPC; bytes written (another process filling the disk)."""
    fd, written = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), 0
    try:
        for chunk in (bytes(1 << 20), bytes(4096)):
            while True:
                try:
                    written += os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


def test_disk_full_mid_binary_run_stops_keeps_the_pages_and_analyze_reads_them(small_disk, tmp_path):
    """The disk fills while --binary streams pages: the run stops soon (not when the 30 s load
    ends) with exit 6 and one line, tracefs is restored, and the bundle (manifest naming the fault,
    INCOMPLETE, the pages copied before it) is read by kptrace analyze."""
    before = tracefs_state()
    out = small_disk / "b"
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--binary", *CONTINUOUS, "--no-perf", "--buffer-kb", "1024",
                          "--", sys.executable, "-c", LOOPBACK_TRAFFIC, "30"], stderr=subprocess.PIPE, text=True)
    wait_for_instance()
    time.sleep(0.5)
    fill(small_disk / "filler")
    filled = time.monotonic()
    rc = p.wait(timeout=60)
    stderr = p.stderr.read()
    assert rc == 6, stderr
    assert time.monotonic() - filled < 10
    one_error_line(stderr, "No space left on device", "disk full", "kept")
    assert_state_unchanged(before)
    assert not our_processes(str(out))
    man = json.loads((out / "manifest.json").read_text())
    assert man["capture"] == "binary" and man["duration_s"] > 0
    assert [n["what"] for n in man["not_recorded"]][-1] == "events after the fault"
    assert (out / "INCOMPLETE").exists() and (out / "machine" / "summary.json").exists()
    assert sum(row["raw_bytes"] for row in man["per_cpu"]) > 0
    result = analyze(out, tmp_path / "analysis")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "analysis" / "summary.json").read_text())


def test_disk_full_mid_counters_only_run_keeps_whole_samples(small_disk):
    """--counters-only on a disk that fills: exit 6, one line, and every counters file cut back to
    the samples that were whole (no half block at the end), as many as the manifest says."""
    out = small_disk / "c"
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--counters-only", "--no-perf", "--interval-ms", "10",
                          "--duration", "30"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (out / "counters" / "stat.txt").exists() or (out / "counters" / "stat.txt").stat().st_size == 0:
        assert time.monotonic() < deadline and p.poll() is None, "the counters never started"
        time.sleep(0.05)
    fill(small_disk / "filler")
    rc = p.wait(timeout=60)
    stderr = p.stderr.read()
    assert rc == 6, stderr
    one_error_line(stderr, "No space left on device", "samples before it are kept")
    man = json.loads((out / "manifest.json").read_text())
    samples = man["counters_only"]["samples"]
    assert samples >= 1
    for name in ("interrupts", "softirqs", "stat"):
        blocks = counter_blocks(out / man["files"][name])
        assert len(blocks) == samples, name
        # the last block is a whole copy: it ends like the live file does
        last_line = Path(f"/proc/{name}").read_text().rstrip("\n").splitlines()[-1].split()[0]
        assert blocks[-1][1].splitlines()[-1].split()[0] == last_line, name
    assert (out / "INCOMPLETE").exists()


# ----------------------------------------------------------------- instance creation fails
def test_instance_name_already_taken_fails_with_one_line_and_leaves_that_instance_alone(tmp_path, tracefs):
    """Another tool made an instance with the very name the collector wants (kptrace-<its pid>,
    made by the shell that then execs the collector under the same pid): mkdir fails, exit 4, one
    line; the other tool's instance keeps its settings and its content."""
    before = tracefs_state()
    root = recording_root()  # the tracefs fixture mounted one if none was
    script = (f'd={root}/instances/kptrace-$$; mkdir "$d" && echo 256 > "$d/buffer_size_kb" && '
              f'echo "other tool was here" > "$d/trace_marker" && echo "$d $(cat "$d/buffer_size_kb")" >&2 && '
              f'exec {RECORD} -q -o {tmp_path}/b --no-perf --duration 1')
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    first, _, stderr = r.stderr.partition("\n")
    taken, _, size_kb = first.partition(" ")  # the kernel rounds 256 KiB to whole pages
    try:
        assert r.returncode == 4, r.stderr
        one_error_line(stderr, "cannot create tracefs instance", "File exists")
        assert Path(f"{taken}/buffer_size_kb").read_text() == f"{size_kb}\n"
        assert "other tool was here" in Path(f"{taken}/trace").read_text()
        assert Path(f"{taken}/tracing_on").read_text() == "1\n"
    finally:
        os.rmdir(taken)
    assert_state_unchanged(before)


def test_read_only_tracefs_fails_with_one_line(tmp_path):
    """tracefs mounted read-only (in a private mount namespace, so nothing else sees it): the
    instance cannot be made, exit 4, one line, and nothing is left in that tracefs."""
    script = f"""
        while point=$(grep ' tracefs ' /proc/mounts | head -1 | cut -d' ' -f2); [ -n "$point" ]; do
            umount "$point" || exit 97
        done
        mount -t tracefs -o ro nodev {TRACEFS} || exit 98
        {RECORD} -q -o {tmp_path}/b --no-perf --duration 1; echo "rc=$?"
        echo "instances=$(ls {TRACEFS}/instances | grep -c '^kptrace-')"
    """
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert "rc=4" in r.stdout, r.stdout + r.stderr
    one_error_line(r.stderr, "cannot create tracefs instance", "Read-only file system")
    assert "instances=0" in r.stdout, r.stdout


# ----------------------------------------------------------------- another tracer at work
NEVER = "prev_pid == 2147483000"  # a filter no sched_switch matches: the buffers hold markers only


def settings(directory: str) -> dict:
    """What a tracer sets in a tracefs directory (global or instance)."""
    files = ["tracing_on", "buffer_size_kb", "trace_clock", "tracing_cpumask", "set_event", "current_tracer",
             "options/overwrite", "events/sched/sched_switch/enable", "events/sched/sched_switch/filter"]
    return {f: Path(f"{directory}/{f}").read_text() for f in files if os.path.exists(f"{directory}/{f}")}


def trace_body(place: str) -> list[str]:
    """A buffer's text without its # header (whose entry counts change as markers arrive)."""
    return [line for line in Path(f"{place}/trace").read_text().splitlines() if not line.startswith("#")]


def test_another_tracer_on_the_global_buffer_and_its_own_instance_is_untouched(tmp_path, tracefs):
    """A tracer writes markers into the global buffer and into its own instance, before and while
    the collector records: afterwards both buffers hold their old lines byte for byte and then
    exactly the markers written meanwhile, and every setting of both is as the tracer left it."""
    root = recording_root()  # the tracefs fixture mounted one if none was
    other = f"{root}/instances/other-tracer-{os.getpid()}"
    saved = settings(root)
    was_empty = not trace_body(root)
    os.mkdir(other)
    stop = threading.Event()
    written = {root: [], other: []}

    def mark(n: int) -> None:
        for place in (root, other):
            text = f"other-tracer {os.getpid()} {place.rsplit('/', 1)[-1]} {n}"
            Path(f"{place}/trace_marker").write_text(text)
            written[place].append(text)

    try:
        for place in (root, other):
            Path(f"{place}/events/sched/sched_switch/filter").write_text(NEVER)
            Path(f"{place}/events/sched/sched_switch/enable").write_text("1")
            Path(f"{place}/tracing_on").write_text("1")
        Path(f"{other}/buffer_size_kb").write_text("512")
        mark(0)
        traces = {place: trace_body(place) for place in (root, other)}
        configured = {place: settings(place) for place in (root, other)}
        before = tracefs_state()

        def keep_marking() -> None:
            n = 1
            while not stop.wait(0.05):
                mark(n)
                n += 1
        writer = threading.Thread(target=keep_marking)
        writer.start()
        try:
            r = record(tmp_path / "b", "--no-perf", "--buffer-kb", "2048", "--", sys.executable, "-c",
                       LOOPBACK_TRAFFIC, "1")
        finally:
            stop.set()
            writer.join()
        assert r.returncode == 0, r.stderr
        assert_state_unchanged(before)
        for place in (root, other):
            assert settings(place) == configured[place], place
            after = trace_body(place)
            assert after[:len(traces[place])] == traces[place], place
            new = [line.split("tracing_mark_write: ", 1)[-1] for line in after[len(traces[place]):]]
            assert [text for text in new if text.startswith("other-tracer ")] == written[place][1:], place
        assert len(written[root]) > 5
        man = json.loads((tmp_path / "b" / "manifest.json").read_text())
        assert "other-tracer" not in decompress(tmp_path / "b" / man["files"]["trace"])
    finally:
        if os.path.isdir(other):
            for name, value in (("tracing_on", "0"), ("events/sched/sched_switch/enable", "0")):
                Path(f"{other}/{name}").write_text(value)
            os.rmdir(other)
        restore_global(root, saved, was_empty)


def restore_global(root: str, saved: dict, was_empty: bool) -> None:
    """The global tracefs as it was before the other tracer: its sched_switch switch and filter,
    tracing_on, and the buffer emptied again if it was empty."""
    Path(f"{root}/events/sched/sched_switch/enable").write_text(saved["events/sched/sched_switch/enable"])
    old_filter = saved["events/sched/sched_switch/filter"].strip()
    Path(f"{root}/events/sched/sched_switch/filter").write_text("0" if old_filter == "none" else old_filter)
    Path(f"{root}/tracing_on").write_text(saved["tracing_on"])
    if was_empty:
        Path(f"{root}/trace").write_text("")


# ----------------------------------------------------------------- the traced command
def test_traced_command_that_exits_at_once_gives_a_complete_bundle_and_its_exit_code(tmp_path):
    before = tracefs_state()
    out = tmp_path / "b"
    r = record(out, "--no-perf", "--buffer-kb", "2048", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stderr == ""
    assert_state_unchanged(before)
    man = json.loads((out / "manifest.json").read_text())
    assert man["workload_exit_code"] == 3 and man["duration_s"] < 5
    assert not (out / "INCOMPLETE").exists()
    result = analyze(out, tmp_path / "analysis")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["kptrace-no-such-command", "/nonexistent/kptrace-cmd"])
def test_traced_command_that_does_not_exist_is_refused_before_anything_is_set_up(tmp_path, command):
    before = tracefs_state()
    out = tmp_path / "b"
    r = record(out, "--", command, "arg")
    assert r.returncode == 127
    one_error_line(r.stderr, f"cannot run {command}")
    assert not out.exists()
    assert_state_unchanged(before)


# ----------------------------------------------------------------- two collectors at once
@pytest.mark.parametrize("mode", [list(CONTINUOUS), ["--counters-only"]], ids=["traced", "counters-only"])
def test_two_collectors_started_together_one_records_the_other_exits_7(tmp_path, mode):
    before = tracefs_state()
    outs = [tmp_path / "one", tmp_path / "two"]
    procs = [subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--no-perf", *mode, "--duration", "3"],
                              stderr=subprocess.PIPE, text=True) for out in outs]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 7], results
    [(winner, _)] = [(out, err) for out, (rc, err) in zip(outs, results) if rc == 0]
    [(loser, err)] = [(out, err) for out, (rc, err) in zip(outs, results) if rc == 7]
    one_error_line(err, "another kptrace-record is running")
    assert not loser.exists()
    assert json.loads((winner / "manifest.json").read_text())["duration_s"] >= 2.9
    assert_state_unchanged(before)


# ----------------------------------------------------------------- SIGKILL
def test_sigkilled_binary_run_keeps_readable_pages_and_the_next_run_cleans_up(tmp_path):
    """SIGKILL in the middle of a --binary run with perf: the next run removes the instance, kills
    the perf processes the dead one left, and the killed bundle (its first manifest and INCOMPLETE)
    keeps the pages streamed before the kill, which kptrace analyze reads."""
    before = tracefs_state()
    out = tmp_path / "killed"
    workload_marker = f"kptrace-fault-workload-{tmp_path.name}"
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--binary", "--preset", "requests", "--buffer-kb",
                          "1024", "--", sys.executable, "-c", LOOPBACK_TRAFFIC, "30", workload_marker])
    inst = wait_for_instance()
    time.sleep(1.0)
    p.kill()
    p.wait()
    assert inst in collector_instances(recording_root())
    r = record(tmp_path / "next", "--no-perf", "--buffer-kb", "1024", "--duration", "0.3")
    assert r.returncode == 0, r.stderr
    assert f"removing stale tracefs instance {inst}" in r.stderr and "stale lock" in r.stderr
    if shutil.which("perf"):
        assert "killing leftover perf process" in r.stderr
    assert_state_unchanged(before)
    assert not our_processes(str(out))
    man = json.loads((out / "manifest.json").read_text())
    assert man["capture"] == "binary" and man["duration_s"] is None and man["per_cpu"] == []
    assert (out / "INCOMPLETE").exists()
    result = analyze(out, tmp_path / "analysis")
    assert result.returncode == 0, result.stderr
    for line in our_processes(workload_marker):  # the dead run's workload is the user's: the test ends it
        os.kill(int(line.split("/")[2]), signal.SIGKILL)
