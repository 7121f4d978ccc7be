#!/usr/bin/env python3
"""Collector overhead: memcached throughput at saturation with and without kptrace-record.

One memcached (`-t 1`, pinned to --server-cpu) serves memcaslap on 127.0.0.1 (pinned to the
other CPU) for --seconds per run. Runs alternate without/with the collector, --pairs times;
each "with" run wraps memcaslap in `kptrace-record --pid <memcached> -- memcaslap ...` (the
default event set, perf counters included unless --no-perf), writing its bundle to a temporary
directory that is deleted afterwards. Prints every run, then the with/without ratio of each
pair as min / median / max, for throughput and for memcached's CPU time per request
(utime+stime from /proc, less sensitive to other load on a shared machine than throughput).

    sudo python3 benchmarks/collector_overhead.py [--pairs 5] [--seconds 5] [--no-perf]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"collector_overhead: memcached not listening on 127.0.0.1:{port}")


def tps(out: str) -> int:
    return ops_tps(out)[1]


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


def measured(pid: int, run) -> tuple[int, float, subprocess.CompletedProcess]:
    """Run the load; return (ops/s, server CPU us per request, process)."""
    c0 = cpu_s(pid)
    r = run()
    c1 = cpu_s(pid)
    if "TPS:" not in r.stdout:
        sys.exit(f"collector_overhead: no TPS line from memcaslap (exit {r.returncode}); is memcached "
                 f"{pid} still alive: {os.path.exists(f'/proc/{pid}')}; stderr: {r.stderr.strip()[-400:]}")
    ops, t = ops_tps(r.stdout)
    return t, (c1 - c0) * 1e6 / ops, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--buffer-kb", type=int, default=65536)
    ap.add_argument("--no-perf", action="store_true", help="pass --no-perf to the collector")
    ap.add_argument("--port", type=int, default=22411)
    ap.add_argument("--control", action="store_true",
                    help="A/A control: run without the collector in both slots (the noise floor)")
    ap.add_argument("--collector-args", default="",
                    help="extra kptrace-record arguments, space separated (e.g. '--events irq:*')")
    a = ap.parse_args()
    load_cpu = 1 - a.server_cpu
    # SIGTERM/SIGINT: leave through the finally below, which stops memcached
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    mc = subprocess.Popen(["taskset", "-c", str(a.server_cpu), "memcached", "-u", "root", "-l", "127.0.0.1",
                           "-p", str(a.port), "-t", "1", "-U", "0"])
    tmp = Path(tempfile.mkdtemp(prefix="kptrace-overhead."))
    rows = []
    try:
        wait_port(a.port)
        def load_cmd(seconds: int) -> list[str]:
            return ["taskset", "-c", str(load_cpu), "memcaslap", "-s", f"127.0.0.1:{a.port}",
                    "-t", f"{seconds}s", "-c", str(a.concurrency), "-T", "1"]
        load = load_cmd(a.seconds)
        # warm-up: fill the cache so every run sees the same hit rate
        subprocess.run(load_cmd(2), capture_output=True, check=True, timeout=60)
        if a.control:
            print("A/A CONTROL: the 'with' column is a second run WITHOUT the collector")
        print(f"memcached -t 1 on CPU{a.server_cpu}, memcaslap -c {a.concurrency} -T 1 on CPU{load_cpu}, "
              f"{a.seconds} s per run, {a.pairs} pairs, collector: kptrace-record --pid {mc.pid} "
              f"--buffer-kb {a.buffer_kb}{' --no-perf' if a.no_perf else ''} {a.collector_args}".rstrip())
        print(f"{'pair':>4} {'without ops/s':>14} {'with ops/s':>12} {'ratio':>7} "
              f"{'without us/req':>15} {'with us/req':>12} {'ratio':>7} {'lost events':>12}")
        for i in range(a.pairs):
            t0, u0, _ = measured(mc.pid, lambda: subprocess.run(load, capture_output=True, text=True, check=True,
                                                                 timeout=a.seconds + 60))
            bundle = tmp / f"b{i}"
            cmd = [str(RECORDER), "-q", "-o", str(bundle), "--pid", str(mc.pid), "--buffer-kb", str(a.buffer_kb)]
            if a.no_perf:
                cmd.append("--no-perf")
            cmd += a.collector_args.split()
            if a.control:
                t1, u1, _ = measured(mc.pid, lambda: subprocess.run(load, capture_output=True, text=True,
                                                                     check=True, timeout=a.seconds + 60))
                lost = 0
            else:
                t1, u1, r1 = measured(mc.pid, lambda: subprocess.run(cmd + ["--"] + load, capture_output=True,
                                                                      text=True, timeout=a.seconds + 300))
                if r1.returncode != 0:
                    sys.exit(f"collector_overhead: kptrace-record failed ({r1.returncode}): {r1.stderr.strip()}")
                lost = json.loads((bundle / "manifest.json").read_text())["lost_events_total"]
                shutil.rmtree(bundle)
            rows.append((t0, t1, lost, u0, u1))
            print(f"{i + 1:>4} {t0:>14} {t1:>12} {t1 / t0:>7.3f} {u0:>15.2f} {u1:>12.2f} {u0 / u1:>7.3f} "
                  f"{lost:>12}", flush=True)
    finally:
        mc.send_signal(signal.SIGTERM)
        mc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    ratios = [r[1] / r[0] for r in rows]
    cost = [r[3] / r[4] for r in rows]
    print(f"without: median {statistics.median(r[0] for r in rows):.0f} ops/s, "
          f"{statistics.median(r[3] for r in rows):.2f} server-CPU us/request; "
          f"with: median {statistics.median(r[1] for r in rows):.0f} ops/s, "
          f"{statistics.median(r[4] for r in rows):.2f} us/request")
    print(f"throughput ratio with/without: min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  "
          f"max {max(ratios):.3f}  (target >= 0.95)")
    print(f"server CPU per request, without/with (capacity ratio): min {min(cost):.3f}  "
          f"median {statistics.median(cost):.3f}  max {max(cost):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
