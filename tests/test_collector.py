"""Real recordings with collectors/kptrace-record (no mocks).

These need root and tracefs. Without them they skip, except when the CI
environment variable is set: then they fail, because CI must run them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import kptrace
from conftest import unavailable

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "collectors" / "kptrace-record"
TRACEFS = "/sys/kernel/tracing"

pytestmark = pytest.mark.root

# Events the collector uses (the default set), as system/event globs.
SYSCALLS = ["epoll_wait", "epoll_pwait", "epoll_pwait2", "read", "recvfrom", "recvmsg",
            "sendmsg", "sendto", "write", "writev", "accept4"]
EVENT_GLOBS = (["irq/*", "irq_vectors/*_entry", "irq_vectors/*_exit", "ipi/*", "napi/napi_poll",
                "net/netif_receive_skb", "net/netif_rx", "net/net_dev_xmit",
                "sched/sched_switch", "sched/sched_wakeup", "sched/sched_waking",
                "sched/sched_migrate_task"]
               + [f"syscalls/sys_{d}_{s}" for s in SYSCALLS for d in ("enter", "exit")])
GLOBAL_FILES = ["tracing_on", "set_event", "current_tracer", "buffer_size_kb", "trace_options",
                "trace_clock", "tracing_cpumask", "set_event_pid", "options/record-tgid",
                "options/irq-info", "options/overwrite"]


# ----------------------------------------------------------------- helpers
def tracefs_mounted(mounts: str = "/proc/self/mounts") -> bool:
    with open(mounts) as f:
        return any(line.split()[1:3] == [TRACEFS, "tracefs"] for line in f if len(line.split()) > 2)


def require_root_tracefs() -> None:
    if os.geteuid() != 0:
        unavailable("needs root")
    if not RECORD.exists():
        unavailable(f"{RECORD} missing")
    if tracefs_mounted():
        return
    with open("/proc/filesystems") as f:
        if "tracefs" not in f.read():
            unavailable("kernel has no tracefs")
    # mountable? try it in a private mount namespace so nothing global changes
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tracefs",
                        "nodev", TRACEFS], capture_output=True, text=True)
    if r.returncode != 0:
        unavailable(f"tracefs cannot be mounted: {r.stderr.strip()}")


LOCK = "/run/kptrace-record.lock"


def wait_lock_free(timeout: float = 120.0) -> None:
    """Another recording on this machine (someone else's) holds the collector's lock: wait."""
    import fcntl
    deadline = time.time() + timeout
    while True:
        try:
            fd = os.open(LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except BlockingIOError:
            if time.time() > deadline:
                raise AssertionError(f"{LOCK} stayed locked for {timeout} s")
            time.sleep(0.2)
        finally:
            os.close(fd)


@pytest.fixture(autouse=True)
def _root():
    require_root_tracefs()
    wait_lock_free()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return f"<error {e.errno}>"


def collector_instances(root: str = TRACEFS) -> list[str]:
    """The collector's instances (kptrace-<pid>); other tools' instances come and go on their own."""
    return sorted(i for i in os.listdir(f"{root}/instances") if re.fullmatch(r"kptrace-\d+", i))


def recording_root() -> str | None:
    """The tracefs the collector records in: the default mount, else any other tracefs mount (such
    as the one debugfs mounts at /sys/kernel/debug/tracing when perf touches it), as the
    collector itself chooses; None while none is mounted."""
    with open("/proc/self/mounts") as f:
        found = [line.split()[1] for line in f if len(line.split()) > 2 and line.split()[2] == "tracefs"]
    return TRACEFS if TRACEFS in found else (found[0] if found else None)


def tracefs_state() -> dict:
    """Everything the collector could touch, read from the global tracefs."""
    state: dict = {"mounted": tracefs_mounted()}
    if not state["mounted"]:
        return state
    for name in GLOBAL_FILES:
        state[name] = _read(f"{TRACEFS}/{name}")
    state["instances"] = collector_instances()
    for g in EVENT_GLOBS:
        for d in sorted(glob.glob(f"{TRACEFS}/events/{g}")):
            if os.path.isfile(f"{d}/enable"):
                rel = os.path.relpath(d, f"{TRACEFS}/events")
                state[f"{rel}/enable"] = _read(f"{d}/enable")
                state[f"{rel}/filter"] = _read(f"{d}/filter")
    return state


def assert_state_unchanged(before: dict) -> None:
    """Compare with a snapshot; name the files that differ. (Another tool using the global
    tracefs at the same time, e.g. trace-cmd record, would also show up here.)"""
    after = tracefs_state()
    diff = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not diff, f"tracefs state changed: {diff}"


def our_processes(marker: str) -> list[str]:
    """Processes whose command line mentions marker (e.g. the bundle path)."""
    found = []
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(p, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and str(os.getpid()) not in p:
            found.append(f"{p}: {cmd}")
    return found


def wait_for_instance(timeout: float = 10.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if root := recording_root():
            inst = collector_instances(root)
            # A new instance starts with tracing on; the collector turns it off, enables its events,
            # and turns it on again only once it is recording: wait for both.
            if inst and (_read(f"{root}/instances/{inst[0]}/events/sched/sched_switch/enable") == "1\n"
                         and _read(f"{root}/instances/{inst[0]}/tracing_on") == "1\n"):
                return inst[0]
        time.sleep(0.05)
    raise AssertionError("the recorder never started recording")


#: What most tests here were written against: continuous tracing of the full event set, as text.
#: The default (the sampled preset, binary capture) has tests of its own.
CONTINUOUS = ("--preset", "full")
TEXT = ("--text",)


def record(out: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the collector; options a test leaves out are the CONTINUOUS and TEXT ones, unless it
    asks for the defaults (`--defaults`, removed before the run)."""
    options = set(args[: args.index("--")] if "--" in args else args)
    if "--defaults" in options:
        args, extra = tuple(arg for arg in args if arg != "--defaults"), ()
    else:
        extra = ((() if options & {"--preset", "--events", "--counters-only"} else CONTINUOUS)
                 + (() if options & {"--binary", "--text", "--counters-only"} else TEXT))
    return subprocess.run([str(RECORD), "-q", "-o", str(out), *extra, *args], capture_output=True,
                          text=True, timeout=timeout)


LOOPBACK_TRAFFIC = textwrap.dedent("""
    import socket, threading, time
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    port = srv.getsockname()[1]
    def echo():
        c, _ = srv.accept()
        while True:
            d = c.recv(4096)
            if not d: break
            c.sendall(d)
    threading.Thread(target=echo, daemon=True).start()
    cl = socket.create_connection(("127.0.0.1", port))
    end = time.time() + float(__import__("sys").argv[1])
    while time.time() < end:
        cl.sendall(b"x" * 64); cl.recv(4096); time.sleep(0.0005)
    cl.close()
""")


def modes(bundle: Path) -> tuple[set, set]:
    dmodes, fmodes = set(), set()
    for root, dirs, files in os.walk(bundle):
        dmodes.add(stat.S_IMODE(os.stat(root).st_mode))
        for f in files:
            fmodes.add(stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode))
    return dmodes, fmodes


def decompress(path: Path) -> str:
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout.decode()
    if path.suffix == ".gz":
        import gzip
        return gzip.decompress(path.read_bytes()).decode()
    return path.read_text()


# ----------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def short_bundle(tmp_path_factory):
    """One real recording (with perf when present) while loopback traffic runs."""
    require_root_tracefs()
    wait_lock_free()
    before = tracefs_state()
    out = tmp_path_factory.mktemp("short") / "bundle"
    r = record(out, "--buffer-kb", "8192", "--", sys.executable, "-c", LOOPBACK_TRAFFIC, "1")
    assert r.returncode == 0, r.stderr
    assert_state_unchanged(before)
    return out


def test_short_recording_bundle(short_bundle):
    out = short_bundle
    man = json.loads((out / "manifest.json").read_text())
    assert man["kptrace_bundle"] == 1
    for key in ("created_utc", "hostname", "command", "workload_command", "duration_s", "trace_clock",
                "files", "events", "filters", "per_cpu", "lost_events_total", "counters",
                "not_recorded", "workload"):
        assert key in man, key
    assert man["workload_command"][0] == sys.executable
    assert man["workload_exit_code"] == 0
    assert 0.5 < man["duration_s"] < 10
    assert "sched:sched_switch" in man["events"]["enabled"]
    assert "irq:softirq_entry" in man["events"]["enabled"]
    ncpu = os.cpu_count()
    assert len(man["per_cpu"]) == ncpu
    for c in man["per_cpu"]:
        assert {"cpu", "entries", "overrun", "commit_overrun", "dropped_events", "bytes"} <= set(c)
        assert isinstance(c["entries"], int)
    assert man["lost_events_total"] == 0
    assert sum(c["entries"] for c in man["per_cpu"]) > 0
    assert man["counters"]["source"] in ("hardware-pmu", "software-only", "none")

    text = decompress(out / man["files"]["trace"])
    assert text.startswith("# tracer: nop")
    assert "TGID" in text[:2000]
    for name in ("sched_switch", "softirq_entry", "softirq_raise", "local_timer_entry",
                 "net_dev_xmit", "netif_rx"):
        assert f" {name}:" in text, name
    assert "sys_sendto" in text or "sys_write" in text

    if man["files"]["perf_stat"]:
        assert (out / man["files"]["perf_stat"]).stat().st_size > 0
    mach = out / "machine"
    for f in ("uname.txt", "interrupts-before.txt", "interrupts-after.txt", "softirqs-before.txt",
              "softirqs-after.txt", "irq-affinity.txt", "clocksource.txt", "trace_clock.txt",
              "numa.txt", "sysctl.txt", "perf_event_paranoid.txt", "summary.json"):
        assert (mach / f).is_file(), f
    summary = json.loads((mach / "summary.json").read_text())
    assert summary["trace_clock"] == man["trace_clock"]
    assert summary["interrupts_before"] and summary["interrupts_after"]

    dmodes, fmodes = modes(out)
    assert dmodes == {0o700}
    assert fmodes == {0o600}
    assert not our_processes(str(out))


def test_bundle_loads_with_one_row_per_recorded_event_line(short_bundle):
    """kptrace.load reads every event line of a live bundle's trace (counted here by name in the text)."""
    man = json.loads((short_bundle / "manifest.json").read_text())
    text = decompress(short_bundle / man["files"]["trace"])
    events = kptrace.load(short_bundle).events.collect()
    for name in ("sched_switch", "softirq_entry", "local_timer_entry"):
        in_text = sum(1 for line in text.splitlines() if not line.startswith("#") and f" {name}:" in line)
        assert in_text > 0, name
        assert events.filter(events["event"].cast(str) == name).height == in_text, name


def perf_counts(event: str) -> bool:
    """Whether perf counts `event` on this machine: the collector's own probe, `perf stat -e EVENT true`."""
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-x,", "-e", event, "true"], capture_output=True, text=True)
    return probe.returncode == 0 and "<not supported>" not in probe.stderr and "<not counted>" not in probe.stderr


def require_perf_task_clock() -> None:
    if not perf_counts("task-clock"):
        unavailable("perf cannot count task-clock here (`perf stat -e task-clock true` fails)")


def task_clock_msec_per_cpu(perf_stat_csv: str) -> dict[str, list[float]]:
    """task-clock values of `perf stat -A -I 100 -x,` (time,CPU,value,unit,event,...), per CPU."""
    per_cpu: dict[str, list[float]] = {}
    for line in perf_stat_csv.splitlines():
        fields = line.strip().split(",")
        if len(fields) > 4 and fields[4] == "task-clock":
            per_cpu.setdefault(fields[1], []).append(float(fields[2]))
    return per_cpu


def test_live_recording_counts_task_clock_on_every_cpu(short_bundle):
    """Where perf counts task-clock, a live bundle must carry perf-stat.csv with it for each CPU."""
    require_perf_task_clock()
    man = json.loads((short_bundle / "manifest.json").read_text())
    assert man["files"]["perf_stat"], man["not_recorded"]
    assert "task-clock" in man["counters"]["perf_stat_events"]
    per_cpu = task_clock_msec_per_cpu((short_bundle / man["files"]["perf_stat"]).read_text())
    assert sorted(per_cpu) == [f"CPU{cpu}" for cpu in range(os.cpu_count())]
    # perf stat counts each CPU from before the recording starts until after it stops, in 100 ms
    # intervals (longer ones when the machine is loaded): together they cover the whole recording.
    assert all(value > 0 for values in per_cpu.values() for value in values), per_cpu
    assert all(sum(values) >= 0.9 * 1000 * man["duration_s"] for values in per_cpu.values()), (man["duration_s"], per_cpu)


def test_pid_filter_only_on_syscalls(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        out = tmp_path / "b"
        r = record(out, "--no-perf", "--buffer-kb", "4096", "--pid", str(sleeper.pid),
                   "--comm", "sleep", "--cpus", "0", "--duration", "0.5")
        assert r.returncode == 0, r.stderr
        man = json.loads((out / "manifest.json").read_text())
        # --comm also resolves to the pids of any other `sleep` running on the machine now.
        terms = man["filters"]["syscalls"].split(" || ")
        assert f"common_pid == {sleeper.pid}" in terms and terms[-1] == 'comm == "sleep"'
        assert all(re.fullmatch(r"common_pid == \d+", term) for term in terms[:-1])
        assert man["filters"]["tracing_cpumask"] == "1"
        text = decompress(out / man["files"]["trace"])
        body = [l for l in text.splitlines() if l and not l.startswith("#")]
        assert all("[000]" in l for l in body[:200])
        sys_lines = [l for l in body if ": sys_" in l]
        assert all(l.lstrip().startswith("sleep-") for l in sys_lines)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("sig, capture", [(signal.SIGINT, "--text"), (signal.SIGTERM, "--text"),
                                          (signal.SIGTERM, "--binary")])
def test_signal_mid_run_restores_state(tmp_path, sig, capture):
    before = tracefs_state()
    out = tmp_path / "b"
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--buffer-kb", "4096", capture, *CONTINUOUS,
                          "--duration", "30"], stderr=subprocess.PIPE, text=True)
    wait_for_instance()
    time.sleep(0.5)
    p.send_signal(sig)
    rc = p.wait(timeout=60)
    assert rc == 128 + sig, p.stderr.read()
    assert_state_unchanged(before)
    assert not our_processes(str(out))
    man = json.loads((out / "manifest.json").read_text())
    assert man["interrupted_by"] == f"SIG{signal.Signals(sig).name[3:]}"
    assert man["capture"] == capture[2:]


def test_sigkill_then_next_run_cleans_up(tmp_path):
    before = tracefs_state()
    out = tmp_path / "killed"
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--buffer-kb", "4096", *CONTINUOUS, *TEXT,
                          "--duration", "30"])
    inst = wait_for_instance()
    time.sleep(0.3)
    p.kill()
    p.wait()
    assert inst in collector_instances(recording_root())  # left behind, as expected
    r = record(tmp_path / "next", "--no-perf", "--buffer-kb", "4096", "--duration", "0.3")
    assert r.returncode == 0, r.stderr
    assert f"removing stale tracefs instance {inst}" in r.stderr
    assert "stale lock" in r.stderr
    assert_state_unchanged(before)
    assert not our_processes(str(out))


def _in_private_ns(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a bash script in a private mount namespace with tracefs unmounted (every mount of it,
    such as the one under /sys/kernel/debug/tracing that perf's use of debugfs leaves)."""
    full = textwrap.dedent(f"""
        set -u
        while point=$(grep ' tracefs ' /proc/mounts | head -1 | cut -d' ' -f2); [ -n "$point" ]; do
            umount "$point" || exit 97
        done
        R={RECORD}
        T={tmp_path}
    """) + textwrap.dedent(script)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", full],
                          capture_output=True, text=True, timeout=120)


def test_unmounted_before_unmounted_after(tmp_path):
    r = _in_private_ns("""
        "$R" -q -o "$T/b" --buffer-kb 4096 --no-perf --duration 0.3; echo "rc=$?"
        grep -c ' tracefs ' /proc/mounts || true
    """, tmp_path)
    assert "rc=0" in r.stdout, r.stdout + r.stderr
    assert r.stdout.strip().endswith("0"), r.stdout + r.stderr
    assert (tmp_path / "b" / "manifest.json").exists()


def test_unmounted_sigkill_next_run_unmounts(tmp_path):
    r = _in_private_ns("""
        "$R" -q -o "$T/k" --buffer-kb 4096 --no-perf --duration 30 &
        pid=$!
        for i in $(seq 100); do [ -d /sys/kernel/tracing/instances/kptrace-$pid ] && break; sleep 0.05; done
        sleep 0.3
        kill -KILL $pid; wait $pid 2>/dev/null
        echo "mounted-after-kill=$(grep -c ' tracefs ' /proc/mounts)"
        "$R" -q -o "$T/n" --buffer-kb 4096 --no-perf --duration 0.3; echo "rc=$?"
        echo "mounted-end=$(grep -c ' tracefs ' /proc/mounts)"
    """, tmp_path)
    assert "mounted-after-kill=1" in r.stdout, r.stdout + r.stderr
    assert "rc=0" in r.stdout, r.stdout + r.stderr
    assert "mounted-end=0" in r.stdout, r.stdout + r.stderr
    assert "removing stale tracefs instance" in r.stderr


def test_second_concurrent_run_refused(tmp_path):
    before = tracefs_state()
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(tmp_path / "a"), "--no-perf", *CONTINUOUS, *TEXT,
                          "--buffer-kb", "4096", "--duration", "30"])
    try:
        wait_for_instance()
        r = record(tmp_path / "b", "--no-perf", "--duration", "1")
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert "another kptrace-record is running" in lines[0]
        assert not (tmp_path / "b").exists()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    assert_state_unchanged(before)


def test_not_root_one_line_error(tmp_path):
    if shutil.which("setpriv"):
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    elif shutil.which("su"):
        cmd = None
    else:
        unavailable("needs setpriv or su to run the collector as nobody")
    out = "/tmp/kptrace-nobody-bundle-should-not-exist"
    if cmd:
        r = subprocess.run(cmd + [str(RECORD), "-o", out, "--duration", "1"],
                           capture_output=True, text=True)
    else:
        r = subprocess.run(["su", "-s", "/bin/bash", "nobody", "-c",
                            f"'{RECORD}' -o {out} --duration 1"], capture_output=True, text=True)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "must be run as root" in lines[0]
    assert not os.path.exists(out)


def test_dry_run_changes_nothing(tmp_path):
    before = tracefs_state()
    out = tmp_path / "dry"
    r = subprocess.run([str(RECORD), "-o", str(out), "--dry-run", "--comm", "memcached",
                        "--cpus", "1", "--", "sleep", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "plan" in r.stdout
    assert "sched:sched_switch" in r.stdout
    assert 'comm == "memcached"' in r.stdout
    # The defaults: the sampled preset, binary capture.
    assert "preset:         sampled" in r.stdout and "0.2 s traced at the start of every 2 s" in r.stdout
    assert "raw/" in r.stdout and "trace.txt.zst" not in r.stdout
    assert not out.exists()
    assert_state_unchanged(before)


def test_bad_output_dir(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "x").write_text("x")
    r = record(out, "--duration", "1")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1
    assert "not empty" in r.stderr
    r = record(Path("/proc/kptrace-nope/b"), "--duration", "1")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_kptrace_record_traces_a_memcached_run_in_one_command(tmp_path):
    """`kptrace record -- LOAD` records a bundle while the load runs; `kptrace ingest` reads it."""
    for tool in ("memcached", "memcaslap"):
        if shutil.which(tool) is None:
            unavailable(f"needs {tool}")
    before = tracefs_state()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-t", "1", "-U", "0"])
    try:
        time.sleep(0.3)
        kptrace = [sys.executable, "-m", "kptrace.cli"]
        recorded = subprocess.run([*kptrace, "record", "-q", "-o", str(tmp_path / "b"), "--pid", str(server.pid),
                                   *CONTINUOUS, *TEXT,
                                   "--buffer-kb", "16384", "--", "memcaslap", "-s", f"127.0.0.1:{port}",
                                   "-x", "2000", "-c", "2", "-T", "1"], capture_output=True, text=True, timeout=120)
        assert recorded.returncode == 0, recorded.stderr
    finally:
        server.terminate()
        server.wait()
    assert_state_unchanged(before)
    ingested = subprocess.run([*kptrace, "ingest", str(tmp_path / "b"), "-o", str(tmp_path / "out")],
                              capture_output=True, text=True)
    assert ingested.returncode == 0, ingested.stderr
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["source_format"].startswith("kptrace-bundle")
    assert meta["event_counts"]["sys_exit_sendmsg"] >= 2000  # every answer memcached sent
    if perf_counts("task-clock"):
        assert_epoll_exits_carry_counter_samples(tmp_path / "b", meta)


def assert_epoll_exits_carry_counter_samples(bundle: Path, meta: dict) -> None:
    """perf-counters holds, for every sampled epoll_wait exit, a line of its group's first counter
    (task-clock without a PMU, cycles with one), and ingest turns them into counter rows."""
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["files"]["perf_counters"], man["not_recorded"]
    first_member = man["counters"]["sample_groups"][0].strip("{}:S").split(",")[1]
    assert first_member in ("task-clock", "cycles")
    text = decompress(bundle / man["files"]["perf_counters"])
    exits = len(re.findall(r" syscalls:sys_exit_epoll_p?wait:", text))
    samples = len(re.findall(rf" {re.escape(first_member)}:\s*$", text, flags=re.MULTILINE))
    assert exits >= 100 and samples == exits, (exits, samples)
    assert meta["event_counts"][first_member] == samples


# ----------------------------------------------------------------- binary capture
def raw_page_timestamps(page: bytes, data_size: int) -> list[int]:
    """Timestamps (trace clock, ns) of the data events of one ring-buffer page, decoded from the
    page header (u64 timestamp, u64 commit) and each event's 32-bit header (5-bit type, 27-bit
    delta): 29 padding, 30 time extend, 31 absolute time stamp, 1-28 data of 4*type bytes, 0
    data whose length follows. Written here, apart from kptrace's reader, to check the capture."""
    ts = struct.unpack_from("<Q", page, 0)[0]
    size = struct.unpack_from("<Q", page, 8)[0] & ((1 << 30) - 1)  # bits 30, 31: missed-events flags
    assert size <= data_size, size
    stamps, off = [], 16
    while off < 16 + size:
        header = struct.unpack_from("<I", page, off)[0]
        kind, delta = header & 31, header >> 5
        word = struct.unpack_from("<I", page, off + 4)[0] if off + 8 <= len(page) else 0
        if kind == 29:
            if delta == 0:
                break
            ts, off = ts + delta, off + 4 + word
        elif kind == 30:
            ts, off = ts + (word << 27) + delta, off + 8
        elif kind == 31:
            ts, off = (word << 27) | delta, off + 8
        else:
            ts = ts + delta
            stamps.append(ts)
            off += 4 + (kind * 4 if kind else word)
    return stamps


def raw_timestamps(bundle: Path, man: dict, cpu: int) -> list[int]:
    data = (bundle / man["raw"]["cpus"][str(cpu)]).read_bytes()
    size = man["raw"]["page_size"]
    assert len(data) % size == 0
    data_size = int(re.search(r"field: char data;\s*offset:\d+;\s*size:(\d+);",
                              (bundle / man["raw"]["header_page"]).read_text()).group(1))
    return [t for at in range(0, len(data), size) for t in raw_page_timestamps(data[at:at + size], data_size)]


@pytest.fixture(scope="module")
def events_dir():
    """A tracefs to read the kernel's format files and event list from, for the tests' own
    checks: the global mount if there is one; else (tracefs starts unmounted, as in CI) a mount
    point of the tests' own, unmounted afterwards. Reading it changes no tracing state."""
    if tracefs_mounted():
        yield f"{TRACEFS}/events"
        return
    point = tempfile.mkdtemp(prefix="kptrace-test-tracefs.")
    subprocess.run(["mount", "-t", "tracefs", "nodev", point], check=True)
    try:
        yield f"{point}/events"
    finally:
        subprocess.run(["umount", point], check=False)
        os.rmdir(point)


def test_binary_capture_streams_more_than_the_ring_buffer_holds_and_loses_nothing(tmp_path, events_dir):
    """--binary copies every event the kernel hands over (decoded count = the kernel's read count,
    per CPU), more than one ring buffer's worth, in time order, inside the recording window."""
    before = tracefs_state()
    out = tmp_path / "bin"
    r = record(out, "--binary", "--no-perf", "--buffer-kb", "1024", "--", sys.executable, "-c", LOOPBACK_TRAFFIC, "2")
    assert r.returncode == 0, r.stderr
    assert_state_unchanged(before)
    man = json.loads((out / "manifest.json").read_text())
    assert man["capture"] == "binary" and man["files"]["trace"] is None and man["files"]["raw"] == "raw"
    assert (out / "raw" / "header_page").read_text() == _read(f"{events_dir}/header_page")
    assert (out / "raw" / "header_event").read_text() == _read(f"{events_dir}/header_event")
    for name in man["events"]["enabled"]:
        system, event = name.split(":")
        assert (out / "raw" / "format" / system / event / "format").read_text().startswith(f"name: {event}\n")
    assert sorted(man["raw"]["cpus"]) == [str(c) for c in range(os.cpu_count())]
    [window] = man["windows"]
    for row in man["per_cpu"]:
        stamps = raw_timestamps(out, man, row["cpu"])
        assert row["raw_bytes"] == (out / man["raw"]["cpus"][str(row["cpu"])]).stat().st_size
        assert len(stamps) == row["read_events"] > 0, row
        assert stamps == sorted(stamps)
        assert window["start_ts"] * 1e9 - 1e3 <= stamps[0] and stamps[-1] <= window["end_ts"] * 1e9 + 1e3
        assert row["lost"] == row["overrun"] + row["commit_overrun"] + row["dropped_events"]
    assert man["lost_events_total"] == 0
    assert max(row["raw_bytes"] for row in man["per_cpu"]) > 1024 * 1024  # streamed: more than the buffer
    # the streamer's own reads and writes are kept out of the syscall events
    assert man["filters"]["syscalls"].startswith(f"common_pid != ")
    assert modes(out) == ({0o700}, {0o600})


#: A workload that names itself (prctl PR_SET_NAME) and writes its pid, then runs for a second.
NEWBORN = textwrap.dedent("""
    import ctypes, os, sys, time
    ctypes.CDLL(None).prctl(15, b"kpt-newborn", 0, 0, 0)
    open(sys.argv[1], "w").write(str(os.getpid()))
    end = time.time() + 1
    while time.time() < end:
        time.sleep(0.001)
""")


def test_a_task_born_during_a_binary_recording_keeps_its_name(tmp_path):
    """The pid -> comm table is saved again when the recording ends: a task that started after the
    pages began streaming (the workload, here) is named in raw/saved_cmdlines and in the events
    kptrace reads, not `<...>`."""
    before = tracefs_state()
    out, pid_file = tmp_path / "bin", tmp_path / "pid"
    r = record(out, "--binary", "--no-perf", "--preset", "light", "--", sys.executable, "-c", NEWBORN, str(pid_file))
    assert r.returncode == 0, r.stderr
    assert_state_unchanged(before)
    pid = int(pid_file.read_text())
    assert f"{pid} kpt-newborn" in (out / "raw" / "saved_cmdlines").read_text().splitlines()
    events = kptrace.load(out).events.filter(pl.col("tid") == pid).collect()
    assert events.height and events["comm"].cast(pl.String).unique().to_list() == ["kpt-newborn"]


EPOLL_LOOP = "import select, time\nep = select.epoll()\nwhile True: ep.poll(0.001)\n"


def test_duty_cycling_traces_only_inside_its_windows(tmp_path):
    """--every 1 --for 0.25 over 3.1 s: four windows a second apart in the manifest, and every
    recorded event, and every perf counter sample at an epoll_wait return, falls inside one."""
    before = tracefs_state()
    out = tmp_path / "duty"
    poller = subprocess.Popen([sys.executable, "-c", EPOLL_LOOP])
    try:
        time.sleep(0.3)
        r = record(out, "--binary", "--preset", "light", "--events", "+syscalls:sys_exit_epoll_wait",
                   "--buffer-kb", "1024", "--every", "1", "--for", "0.25", "--duration", "3.1")
    finally:
        poller.kill()
        poller.wait()
    assert r.returncode == 0, r.stderr
    assert_state_unchanged(before)
    assert not our_processes(str(out))
    man = json.loads((out / "manifest.json").read_text())
    assert man["duty_cycle"] == {"every_s": 1.0, "for_s": 0.25}
    windows = man["windows"]
    # A loaded machine makes windows late or long (perf's first acknowledgement can take half a
    # second there), but each lasts at least --for and ends before the next; --duration cuts the last.
    assert [w["index"] for w in windows] == [0, 1, 2, 3], windows
    assert all(0.2 <= w["duration_s"] < 1.0 for w in windows[:3]), windows
    assert all(a["end_ts"] < b["start_ts"] for a, b in zip(windows, windows[1:])), windows
    assert all(0.7 <= b["start_ts"] - a["start_ts"] <= 1.5 for a, b in zip(windows, windows[1:])), windows
    assert man["duration_s"] == pytest.approx(sum(w["duration_s"] for w in windows), abs=0.01)
    spans = [(w["start_ts"] * 1e9 - 1e3, w["end_ts"] * 1e9 + 1e3) for w in windows]
    stamps = [t for row in man["per_cpu"] for t in raw_timestamps(out, man, row["cpu"])]
    assert stamps
    outside = [t for t in stamps if not any(lo <= t <= hi for lo, hi in spans)]
    assert not outside, (len(outside), outside[:5], spans)
    assert all(any(lo <= t <= hi for t in stamps) for lo, hi in spans[:3]), "a window recorded nothing"
    if perf_counts("task-clock"):
        assert man["files"]["perf_counters"], man["not_recorded"]
        text = decompress(out / man["files"]["perf_counters"])
        samples = [float(t) * 1e9 for t in re.findall(r"\s([\d.]+): +\d+ +syscalls:sys_exit_epoll", text)]
        assert samples and all(any(lo <= t <= hi for lo, hi in spans) for t in samples), (samples[:5], spans)
        assert all(any(lo <= t <= hi for t in samples) for lo, hi in spans[:3]), "perf sampled nothing in a window"


def test_default_samples_the_requests_preset_in_binary_and_switches_its_events_off_between_windows(tmp_path):
    """With no mode options the collector records the requests events 0.2 s of every 2 s, as raw
    pages; between windows the events themselves are disabled (not only the buffer), which is what
    makes sampling cheap. `kptrace ingest` reads the bundle as separate windows."""
    before = tracefs_state()
    out = tmp_path / "default"
    poller = subprocess.Popen([sys.executable, "-c", EPOLL_LOOP])
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            root = recording_root()
            for inst in collector_instances(root) if root else []:
                state = _read(f"{root}/instances/{inst}/events/syscalls/sys_exit_epoll_wait/enable")
                if not state.startswith("<error"):  # the instance may be gone between listing and reading
                    seen.add(state.strip())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = record(out, "--defaults", "--no-perf", "--pid", str(poller.pid), "--duration", "4.5")
    finally:
        done.set()
        watcher.join()
        poller.kill()
        poller.wait()
    assert r.returncode == 0, r.stderr
    assert_state_unchanged(before)
    man = json.loads((out / "manifest.json").read_text())
    assert (man["preset"], man["capture"], man["duty_cycle"]) == ("sampled", "binary", {"every_s": 2.0, "for_s": 0.2})
    assert [w["index"] for w in man["windows"]] == [0, 1, 2], man["windows"]
    assert seen == {"0", "1"}, seen
    ingested = subprocess.run([sys.executable, "-m", "kptrace.cli", "ingest", str(out), "-o", str(tmp_path / "in")],
                              capture_output=True, text=True)
    assert ingested.returncode == 0, ingested.stderr
    meta = json.loads((tmp_path / "in" / "meta.json").read_text())
    assert len(meta["windows"]) == 3
    assert meta["duration_s"] == pytest.approx(sum(w["end_ts"] - w["start_ts"] for w in man["windows"]), abs=1e-3)
    assert meta["event_counts"].get("sys_exit_epoll_wait", 0) > 0


# Each preset's events (system/event globs), as docs/collector.md lists them.
PRESET_GLOBS = {
    "light": ["irq/irq_handler_entry", "irq/irq_handler_exit", "irq/softirq_entry", "irq/softirq_exit",
              "irq_vectors/*_entry", "irq_vectors/*_exit", "sched/sched_switch"],
}
PRESET_GLOBS["requests"] = (PRESET_GLOBS["light"] + ["irq/softirq_raise"]
                            + [f"syscalls/sys_{d}_{s}" for s in SYSCALLS for d in ("enter", "exit")])
PRESET_GLOBS["full"] = EVENT_GLOBS


@pytest.mark.parametrize("preset", ["light", "requests", "full"])
def test_preset_enables_exactly_its_events_and_the_trace_holds_no_other(tmp_path, preset, events_dir):
    out = tmp_path / preset
    r = record(out, "--preset", preset, "--no-perf", "--buffer-kb", "2048", "--", sys.executable, "-c",
               LOOPBACK_TRAFFIC, "0.3")
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    expected = sorted({os.path.relpath(d, events_dir).replace("/", ":")
                       for g in PRESET_GLOBS[preset] for d in glob.glob(f"{events_dir}/{g}")
                       if os.path.isfile(f"{d}/enable")})
    assert sorted(man["events"]["enabled"]) == expected
    assert man["preset"] == preset
    names = {e.split(":")[1] for e in expected}
    text = decompress(out / man["files"]["trace"])
    seen = set(re.findall(r"^\s*\S.*?\[\d{3}\] \S+\s+[\d.]+: (\w+):", text, flags=re.MULTILINE))
    assert seen and seen <= names, seen - names
    # syscall lines read "sys_sendto(fd: ...)" and "sys_sendto -> 0x40", not "name:"
    syscall_lines = re.search(r"\] \S+\s+[\d.]+: sys_(sendto|write)(\(| ->)", text)
    assert (syscall_lines is not None) == (preset != "light")


@pytest.mark.parametrize("args, message", [
    (["--every", "1", "--duration", "2"], "--every and --for go together"),
    (["--every", "1", "--for", "1", "--duration", "2"], "--for must be shorter than --every"),
    (["--preset", "huge", "--duration", "1"], "--preset"),
    (["--binary", "--text", "--duration", "1"], "either --binary or --text"),
])
def test_bad_mode_options_one_line_error(tmp_path, args, message):
    r = record(tmp_path / "b", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------- counters-only mode
def counter_blocks(path: Path) -> list[tuple[int, str]]:
    """counters/NAME.txt as [(t_ns, text)]: blocks, each an `@ <t_ns>` line and the file's text."""
    blocks: list[tuple[int, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("@ "):
            blocks.append((int(line[2:]), []))
        else:
            assert blocks, f"{path} does not start with an @ line"
            blocks[-1][1].append(line)
    return [(t, "\n".join(lines)) for t, lines in blocks]


def softirq_row(text: str, name: str) -> list[int]:
    """One /proc/softirqs row's per-CPU counts."""
    row = next(line for line in text.splitlines() if line.split(":")[0].strip() == name)
    return [int(v) for v in row.split(":", 1)[1].split()]


def tracefs_mount_lines() -> list[str]:
    with open("/proc/self/mounts") as f:
        return sorted(line for line in f if " tracefs " in line)


def test_counters_only_samples_proc_and_perf_every_interval_without_tracing(tmp_path):
    """--counters-only --duration 2: about 21 samples 100 ms apart on a grid that does not drift,
    each a verbatim copy of /proc/interrupts, /proc/softirqs and /proc/stat; perf stat per CPU;
    and no tracefs instance at any moment (tracefs not even mounted when it was not)."""
    before, mounts_before = tracefs_state(), tracefs_mount_lines()
    out = tmp_path / "counters"
    p = subprocess.Popen([str(RECORD), "-q", "-o", str(out), "--counters-only", "--serving-cpus", "1",
                          "--duration", "2"], stderr=subprocess.PIPE, text=True)
    while p.poll() is None:
        root = recording_root()
        assert not (root and collector_instances(root)), "a counters-only run created a tracefs instance"
        time.sleep(0.05)
    assert p.returncode == 0, p.stderr.read()
    assert_state_unchanged(before)
    assert tracefs_mount_lines() == mounts_before
    man = json.loads((out / "manifest.json").read_text())
    assert man["capture"] == "counters" and man["per_cpu"] == [] and man["lost_events_total"] == 0
    assert man["preset"] is None and man["tracefs_instance"] is None
    co = man["counters_only"]
    assert co["interval_ms"] == 100 and co["clock"] == "CLOCK_MONOTONIC" and co["serving_cpus"] == [1]
    assert co["requests_cmd"] is None and man["files"]["requests"] is None
    files = {name: counter_blocks(out / man["files"][name]) for name in ("interrupts", "softirqs", "stat")}
    assert {len(blocks) for blocks in files.values()} == {co["samples"]}
    # 2 s at 100 ms: 21 samples (both ends); a loaded machine may skip late ticks, never add any
    assert 15 <= co["samples"] <= 21, co["samples"]
    stamps = [t for t, _ in files["stat"]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(gap > 0 for gap in gaps)
    assert abs((stamps[-1] - stamps[0]) / 1e9 - 2.0) < 0.05, stamps  # the last sample at the deadline
    # on the grid that the first sample starts: each sample (its first read) within a few ms of a
    # multiple of 100 ms from it, typically; a grid that drifted would wander off by the end
    starts = [t for t, _ in files["interrupts"]][:-1]
    off_grid = sorted(abs((t - starts[0] + 50_000_000) % 100_000_000 - 50_000_000) for t in starts)
    assert off_grid[len(off_grid) // 2] < 10_000_000 and off_grid[int(0.8 * len(off_grid))] < 25_000_000, off_grid
    assert man["duration_s"] == pytest.approx((stamps[-1] - stamps[0]) / 1e9, abs=0.01)
    for (_, interrupts), (_, softirqs), (_, stat) in zip(*files.values()):
        assert interrupts.split()[0] == "CPU0" and all(":" in row for row in interrupts.splitlines()[1:])
        assert softirqs.split()[0] == "CPU0" and "NET_RX:" in softirqs
        assert stat.startswith("cpu ") and "\nctxt " in stat
    timer = [softirq_row(text, "TIMER") for _, text in files["softirqs"]]
    assert all(all(b >= a for a, b in zip(x, y)) for x, y in zip(timer, timer[1:]))  # counters only grow
    assert sum(timer[-1]) > sum(timer[0])
    if perf_counts("task-clock"):
        events = co["counters"]["events"]
        assert co["counters"]["source"] in ("hardware-pmu", "software-only")
        assert events == (["cycles", "instructions"] if co["counters"]["source"] == "hardware-pmu" else ["task-clock"])
        assert co["perf_stat_start_ns"] < stamps[0]
        rows = [line.split(",") for line in (out / man["files"]["perf_stat"]).read_text().splitlines()
                if line and not line.startswith("#")]
        assert {r[1] for r in rows if r[4] == events[0]} == {f"CPU{c}" for c in range(os.cpu_count())}
        assert max(float(r[0]) for r in rows) >= 1.8  # perf's own clock: seconds since it started
    summary = json.loads((out / "machine" / "summary.json").read_text())
    assert summary["interrupts_before"] and summary["interrupts_after"]
    assert not (out / "INCOMPLETE").exists()
    assert modes(out) == ({0o700}, {0o600})
    assert not our_processes(str(out))


#: memcached's cumulative get + set count for --requests-cmd, as docs/collector.md gives it.
MEMCACHED_REQUESTS = REPO / "collectors" / "memcached-requests"


def test_counters_only_request_counter_follows_a_real_memcached(tmp_path):
    """--requests-cmd with the documented memcached script: requests.txt starts at memcached's
    count before the load, never goes down, and ends with every request the load sent."""
    for tool in ("memcached", "memcaslap", "bash"):
        if shutil.which(tool) is None:
            unavailable(f"needs {tool}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-t", "1", "-U", "0"])
    try:
        time.sleep(0.3)
        out = tmp_path / "b"
        r = record(out, "--counters-only", "--requests-cmd", f"{MEMCACHED_REQUESTS} 127.0.0.1 {port}", "--", "memcaslap",
                   "-s", f"127.0.0.1:{port}", "-x", "3000", "-c", "2", "-T", "1", timeout=120)
    finally:
        server.terminate()
        server.wait()
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["counters_only"]["requests_cmd"] == [str(MEMCACHED_REQUESTS), "127.0.0.1", str(port)]
    lines = [line.split() for line in (out / man["files"]["requests"]).read_text().splitlines()]
    assert len(lines) == man["counters_only"]["samples"] >= 2
    stamps = [int(t) for t, _ in lines]
    assert stamps == sorted(stamps)
    counts = [int(c) for _, c in lines if c != "-"]
    assert len(counts) >= 0.8 * len(lines), lines  # '-' only when a run of the script failed
    assert counts[0] == 0 and counts[-1] == 3000, (counts[0], counts[-1])
    assert counts == sorted(counts)


def test_counters_only_request_command_that_prints_no_count_is_refused(tmp_path):
    out = tmp_path / "b"
    r = record(out, "--counters-only", "--requests-cmd", "echo many", "--duration", "1")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--requests-cmd did not print a count" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--counters-only", "--preset", "light"], "--preset does not apply to --counters-only"),
    (["--counters-only", "--binary"], "--binary does not apply to --counters-only"),
    (["--counters-only", "--interval-ms", "5"], "--interval-ms must be"),
    (["--serving-cpus", "1"], "--serving-cpus goes with --counters-only"),
    (["--counters-only", "--serving-cpus", "one"], "--serving-cpus must look like"),
])
def test_counters_only_bad_options_one_line_error(tmp_path, args, message):
    r = record(tmp_path / "b", *args, "--duration", "1")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------- machine snapshot: network
def test_machine_snapshot_holds_each_nics_polling_settings_and_queue_irqs(short_bundle):
    """summary.json and the text files give, for this machine's NIC, what sysfs and /proc say now:
    NAPI deferral, GRO flush timeout, threaded NAPI, RPS masks, the IRQs of its queues and where
    each may run, and the busy-poll sysctls."""
    nics = [d for d in sorted(glob.glob("/sys/class/net/*")) if os.path.exists(f"{d}/device")]
    if not nics:
        unavailable("no network device with a device link (a physical or virtio NIC)")
    name = os.path.basename(nics[0])
    summary = json.loads((short_bundle / "machine" / "summary.json").read_text())
    [nic] = [n for n in summary["net_devices"] if n["name"] == name]
    for key in ("napi_defer_hard_irqs", "gro_flush_timeout", "threaded"):
        assert nic[key] == int(_read(f"/sys/class/net/{name}/{key}")), key
    rx_queues = glob.glob(f"/sys/class/net/{name}/queues/rx-*")
    assert sorted(nic["rps_cpus"]) == sorted(os.path.basename(q) for q in rx_queues)
    assert summary["net_core_busy_poll"] == int(_read("/proc/sys/net/core/busy_poll"))
    assert summary["net_core_busy_read"] == int(_read("/proc/sys/net/core/busy_read"))
    # the queue IRQs: every /proc/irq/N whose handler is this NIC's (virtioK-input.0, eth0-TxRx-0, ...)
    driver_names = {name, os.path.basename(os.path.realpath(f"/sys/class/net/{name}/device"))}
    expected = sorted(int(d.split("/")[3]) for d in glob.glob("/proc/irq/[0-9]*/*/")
                      if any(os.path.basename(d[:-1]).startswith(f"{n}-") for n in driver_names))
    assert expected, "no IRQ handler named after the NIC"
    assert set(expected) <= {i["irq"] for i in nic["irqs"]}
    for irq in nic["irqs"]:
        assert irq["smp_affinity_list"] == _read(f"/proc/irq/{irq['irq']}/smp_affinity_list").strip()
    text = (short_bundle / "machine" / "nic-irqs.txt").read_text()
    assert all(f"{name} {irq} " in text for irq in expected)
    assert f"{name} " in (short_bundle / "machine" / "net-queues.txt").read_text()
    assert f"threaded={nic['threaded']}" in (short_bundle / "machine" / "net-devices.txt").read_text()
