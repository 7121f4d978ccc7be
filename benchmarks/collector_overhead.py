#!/usr/bin/env python3
"""Collector overhead: memcached capacity at saturation with each collector preset, side by side.

One memcached (`-t 1`, pinned to --server-cpu) serves memcaslap on 127.0.0.1 (pinned to the
other CPU) for --seconds per run. Each round runs the baseline (no collector), then every arm in
an order rotated from round to round (so slow drift does not favour one arm):

  control    a second run WITHOUT the collector: the A/A noise floor
  light      kptrace-record --preset light
  requests   kptrace-record --preset requests
  full       kptrace-record --preset full
  counters   kptrace-record --counters-only --serving-cpus <server cpu> (no tracing; not run unless named)
  counters-requests  the same plus --requests-cmd collectors/memcached-requests, asking memcached for its get+set
             count at every sample (docs/collector.md); not run unless named
  NAME       any extra arm given as --arm 'NAME=collector arguments'
             (e.g. --arm 'duty=--preset requests --binary --every 10 --for 1', with --seconds >= 300)

Each collector arm wraps memcaslap in `kptrace-record --pid <memcached> ... -- memcaslap ...`,
writing its bundle to a temporary directory deleted afterwards. Against the same round's
baseline it reports the throughput ratio and the capacity ratio: memcached's CPU time per request
(utime+stime from /proc, less sensitive to other load than throughput) without / with. It also
reports the events recorded per request and the events lost (from the bundle's manifest).
All figures are measured; the spread over rounds (min, max) is their uncertainty, and the
control arm says how far two identical runs differ on this machine.

    sudo python3 benchmarks/collector_overhead.py [--rounds 5] [--seconds 10] [--arms control,light,requests,full]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDER = REPO / "collectors" / "kptrace-record"
PRESET_ARMS = {"light": ["--preset", "light"], "requests": ["--preset", "requests"], "full": ["--preset", "full"]}
COUNTERS_ARMS = ("counters", "counters-requests")
#: memcached's request counter for --requests-cmd (docs/collector.md).
MEMCACHED_REQUESTS = REPO / "collectors" / "memcached-requests"


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"collector_overhead: memcached not listening on 127.0.0.1:{port}")


def ops_tps(out: str) -> tuple[int, int]:
    m = re.search(r"Run time: [\d.]+s Ops: (\d+) TPS: (\d+)", out)
    if not m:
        sys.exit(f"collector_overhead: no TPS line in memcaslap output:\n{out[-500:]}")
    return int(m.group(1)), int(m.group(2))


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, cmd: list[str], timeout: float) -> tuple[int, int, float, subprocess.CompletedProcess]:
    """Run the load (possibly under the collector); return (ops, ops/s, server CPU us per request, process)."""
    c0 = cpu_s(pid)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    c1 = cpu_s(pid)
    if "TPS:" not in r.stdout:
        sys.exit(f"collector_overhead: no TPS line from memcaslap (exit {r.returncode}); is memcached "
                 f"{pid} still alive: {os.path.exists(f'/proc/{pid}')}; stderr: {r.stderr.strip()[-400:]}")
    ops, tps = ops_tps(r.stdout)
    return ops, tps, (c1 - c0) * 1e6 / ops, r


def arms_from(args: argparse.Namespace) -> dict[str, list[str] | None]:
    """Arm name -> collector arguments (None: no collector, the A/A control)."""
    extra = dict(a.split("=", 1) for a in args.arm)
    arms = {}
    for name in args.arms.split(","):
        if name == "control":
            arms[name] = None
        elif name in COUNTERS_ARMS:
            arms[name] = ["--counters-only"]
        elif name in PRESET_ARMS:
            arms[name] = PRESET_ARMS[name]
        elif name in extra:
            arms[name] = shlex.split(extra[name])
        else:
            sys.exit(f"collector_overhead: unknown arm {name!r} (control, light, requests, full, counters, "
                     "counters-requests, or one given by --arm)")
    for name, value in extra.items():
        arms.setdefault(name, shlex.split(value))
    return arms


def recorded_events(manifest: dict) -> int:
    """Events the bundle holds: left in the buffer (text capture) plus handed to the streamer (binary);
    none for a counters-only bundle (per_cpu is empty)."""
    return sum((c.get("entries") or 0) + (c.get("read_events") or 0) for c in manifest["per_cpu"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--arms", default="control,light,requests,full")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=ARGS",
                    help="an extra arm: collector arguments for it (repeatable)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--buffer-kb", type=int, default=65536)
    ap.add_argument("--no-perf", action="store_true", help="pass --no-perf to the collector")
    ap.add_argument("--port", type=int, default=22411)
    ap.add_argument("--collector-args", default="", help="extra kptrace-record arguments for every arm")
    a = ap.parse_args()
    arms = arms_from(a)
    load_cpu = 1 - a.server_cpu
    # SIGTERM/SIGINT: leave through the finally below, which stops memcached
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    mc = subprocess.Popen(["taskset", "-c", str(a.server_cpu), "memcached", "-u", "root", "-l", "127.0.0.1",
                           "-p", str(a.port), "-t", "1", "-U", "0"])
    tmp = Path(tempfile.mkdtemp(prefix="kptrace-overhead."))
    rows: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name in arms}
    try:
        wait_port(a.port)

        def load_cmd(seconds: int) -> list[str]:
            return ["taskset", "-c", str(load_cpu), "memcaslap", "-s", f"127.0.0.1:{a.port}",
                    "-t", f"{seconds}s", "-c", str(a.concurrency), "-T", "1"]
        load = load_cmd(a.seconds)
        # warm-up: fill the cache so every run sees the same hit rate
        subprocess.run(load_cmd(2), capture_output=True, check=True, timeout=60)
        common = ["--pid", str(mc.pid), "--buffer-kb", str(a.buffer_kb)] + (["--no-perf"] if a.no_perf else [])
        common += shlex.split(a.collector_args)
        counters_common = ["--serving-cpus", str(a.server_cpu)] + (["--no-perf"] if a.no_perf else [])
        arms = {name: extra if name not in COUNTERS_ARMS else extra + counters_common + (
            ["--requests-cmd", f"{MEMCACHED_REQUESTS} 127.0.0.1 {a.port}"] if name == "counters-requests" else [])
            for name, extra in arms.items()}
        print(f"memcached -t 1 on CPU{a.server_cpu}, memcaslap -c {a.concurrency} -T 1 on CPU{load_cpu}, "
              f"{a.seconds} s per run, {a.rounds} rounds; every traced arm: kptrace-record {' '.join(common)}")
        for name, extra in arms.items():
            print(f"  arm {name:<10} {'no collector (A/A control)' if extra is None else ' '.join(extra)}")
        print(f"{'round':>5} {'arm':<10} {'ops/s':>8} {'base ops/s':>10} {'ratio':>6} {'us/req':>7} "
              f"{'base us/req':>11} {'capacity':>8} {'events/req':>10} {'lost':>9}")
        names = list(arms)
        for i in range(a.rounds):
            _, base_tps, base_us, _ = measured(mc.pid, load, a.seconds + 60)
            for name in names[i % len(names):] + names[:i % len(names)]:
                extra = arms[name]
                if extra is None:
                    ops, tps, us, _ = measured(mc.pid, load, a.seconds + 60)
                    lost, per_req = 0, 0.0
                else:
                    bundle = tmp / f"{name}-{i}"
                    traced = "--counters-only" not in extra
                    cmd = [sys.executable, str(RECORDER), "-q", "-o", str(bundle), *(common if traced else []), *extra,
                           "--", *load]
                    ops, tps, us, r = measured(mc.pid, cmd, a.seconds + 600)
                    if r.returncode != 0:
                        sys.exit(f"collector_overhead: kptrace-record failed ({r.returncode}): {r.stderr.strip()}")
                    manifest = json.loads((bundle / "manifest.json").read_text())
                    lost, per_req = manifest["lost_events_total"], recorded_events(manifest) / ops
                    shutil.rmtree(bundle)
                rows[name].append((tps / base_tps, base_us / us, lost, per_req))
                print(f"{i + 1:>5} {name:<10} {tps:>8} {base_tps:>10} {tps / base_tps:>6.3f} {us:>7.2f} "
                      f"{base_us:>11.2f} {base_us / us:>8.3f} {per_req:>10.1f} {lost:>9}", flush=True)
    finally:
        mc.send_signal(signal.SIGTERM)
        mc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nper arm, against the same round's baseline (median [min, max] over {a.rounds} rounds; measured):")
    print(f"{'arm':<10} {'throughput ratio':>24} {'capacity ratio (CPU/req)':>26} {'events/req':>10} {'lost (sum)':>10}")
    for name, r in rows.items():
        def spread(k: int) -> str:
            values = [x[k] for x in r]
            return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        print(f"{name:<10} {spread(0):>24} {spread(1):>26} {statistics.median(x[3] for x in r):>10.1f} "
              f"{sum(x[2] for x in r):>10}")
    print("target: the default preset's capacity ratio >= 0.90 with 0 lost events; "
          "the control's spread is the noise floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
