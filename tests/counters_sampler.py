"""A small stand-in for `kptrace-record --counters-only`, for tests and the lab: it samples this
machine's real /proc/interrupts, /proc/softirqs and /proc/stat every 100 ms (and runs
`perf stat -a -A -I 100 -x,` where perf works), writing the bundle layout of docs/counters.md.
It records real counts; it is not the collector (which checks, locks and restores far more)."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROC = {"interrupts": "/proc/interrupts", "softirqs": "/proc/softirqs", "stat": "/proc/stat"}


def record_counters(out: Path, seconds: float, serving_cpus: list[int] | None = None,
                    requests_cmd: list[str] | None = None, interval_s: float = 0.1, perf: bool = True,
                    count_requests: Callable[[], int | None] | None = None) -> Path:
    """Sample /proc for `seconds` into the bundle `out`; return it. The request count comes from
    running `requests_cmd` each sample, or from `count_requests` in-process (a command costs a
    process start per sample, too slow for 100 ms on a busy 2-core machine)."""
    (out / "counters").mkdir(parents=True, exist_ok=True)
    files = {name: (out / "counters" / f"{name}.txt").open("w") for name in PROC}
    requests = (out / "counters" / "requests.txt").open("w") if requests_cmd or count_requests else None
    perf_proc, perf_start = None, None
    if perf and shutil.which("perf"):
        perf_start = time.monotonic_ns()
        perf_proc = subprocess.Popen(["perf", "stat", "-a", "-A", "-I", str(int(interval_s * 1000)), "-x,",
                                      "-e", "cycles,instructions,task-clock", "-o", str(out / "perf-stat.csv")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    samples = 0
    while True:
        for name, handle in files.items():
            t_ns = time.monotonic_ns()
            handle.write(f"@ {t_ns}\n{Path(PROC[name]).read_text()}")
        if requests:
            t_ns = time.monotonic_ns()
            requests.write(f"{t_ns} {_request_count(requests_cmd, count_requests)}\n")
        samples += 1
        if time.monotonic() - start >= seconds:
            break
        time.sleep(max(0.0, start + samples * interval_s - time.monotonic()))
    for handle in [*files.values(), *([requests] if requests else [])]:
        handle.close()
    if perf_proc:
        perf_proc.send_signal(2)
        perf_proc.wait(timeout=10)
    events = ["cycles", "instructions", "task-clock"] if perf_proc else []
    manifest = {
        "kptrace_bundle": 1, "schema_version": 1, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(), "kernel": platform.release(), "recorder": "tests/counters_sampler.py",
        "command": requests_cmd, "duration_s": round(time.monotonic() - start, 3), "interrupted_by": None,
        "capture": "counters", "lost_events_total": 0, "per_cpu": [],
        "counters_only": {"interval_ms": int(interval_s * 1000), "samples": samples, "clock": "CLOCK_MONOTONIC",
                          "serving_cpus": serving_cpus, "requests_cmd": requests_cmd,
                          "perf_stat_start_ns": perf_start,
                          "counters": {"source": "software-only" if perf_proc else "none", "events": events}},
        "files": {"interrupts": "counters/interrupts.txt", "softirqs": "counters/softirqs.txt",
                  "stat": "counters/stat.txt", "requests": "counters/requests.txt" if requests else None,
                  "perf_stat": "perf-stat.csv" if perf_proc else None, "machine": "machine",
                  "machine_summary": "machine/summary.json"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _request_count(command: list[str] | None, count: Callable[[], int | None] | None) -> str:
    if count is not None:
        value = count()
        return "-" if value is None else str(value)
    done = subprocess.run(command, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip().isdigit() else "-"


# --------------------------------------------------------------------------- the memcached lab run

PACED_WRITER = r"""
import mmap, os, sys, time
path, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT | os.O_DSYNC, 0o600)
buf = mmap.mmap(-1, 4096)
buf.write(b"k" * 4096)
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    os.pwrite(fd, buf, (n % 256) * 4096)
    n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
os.close(fd)
os.unlink(path)
"""



def memcached_requests(port: int) -> int | None:
    """memcached's cmd_get + cmd_set (`stats` over its text protocol), or None when it does not answer."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    stats = dict(line.split()[1:3] for line in data.decode().splitlines() if line.startswith("STAT "))
    return int(stats["cmd_get"]) + int(stats["cmd_set"])


def record_memcached_lab(out: Path, phase_s: float, rates: list[float], port: int = 11999,
                         server_cpu: int = 1, load_cpu: int = 0) -> Path:
    """memcached (1 thread) pinned to `server_cpu`, memcaslap at full speed on `load_cpu`, and a
    paced O_DIRECT disk writer whose rate changes every `phase_s` through `rates` (0: no writer),
    all sampled by `record_counters`; the request count is memcached's cmd_get + cmd_set."""
    import tempfile
    import threading

    seconds = phase_s * len(rates)
    server = subprocess.Popen(["taskset", "-c", str(server_cpu), "memcached", "-u", "root", "-l", "127.0.0.1",
                               "-p", str(port), "-t", "1", "-U", "0"])
    procs = [server]
    try:
        time.sleep(0.5)
        procs.append(subprocess.Popen(["taskset", "-c", str(load_cpu), "memcaslap", "-s", f"127.0.0.1:{port}",
                                       "-t", f"{int(seconds + 3)}s", "-S", f"{int(seconds + 3)}s", "-c", "16", "-T", "1"],
                                      stdout=subprocess.DEVNULL))
        time.sleep(1.0)

        def writers() -> None:
            for rate in rates:
                if rate:
                    path = tempfile.mktemp(prefix="kptrace-ctr-disk.", dir="/var/tmp")
                    subprocess.run(["taskset", "-c", str(load_cpu), sys.executable, "-c", PACED_WRITER, path,
                                    str(rate), str(phase_s)])
                else:
                    time.sleep(phase_s)

        thread = threading.Thread(target=writers)
        thread.start()
        record_counters(out, seconds, [server_cpu], ["memcached stats: cmd_get + cmd_set (in-process)"],
                        count_requests=lambda: memcached_requests(port))
        thread.join()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=10)
    return out


if __name__ == "__main__":
    record_memcached_lab(Path(sys.argv[1]), float(sys.argv[2]), [float(r) for r in sys.argv[3].split(",")])
