"""Ingest speed: `kptrace ingest` of tracefs text vs `trace-cmd report` of the same buffer.

Records one tracefs instance buffer of >= --events events while memcached serves a loopback
load (root, trace-cmd, memcached, memcaslap), saves it both as tracefs text and, through
`trace-cmd extract`, as trace.dat; then alternates the two tools --repeats times and prints
events/s for each, the ratio, and peak memory. Usage (root):

    python benchmarks/ingest.py [--events 1000000] [--repeats 3] [--keep DIR]

or, with an existing pair: python benchmarks/ingest.py --text trace.txt --dat trace.dat
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTANCE = Path("/sys/kernel/tracing/instances/kptrace-bench")
EVENTS = ("irq", "irq_vectors", "napi", "net", "sched")
SYSCALLS = ("read", "sendmsg", "epoll_wait")


def record(directory: Path, target_events: int) -> tuple[Path, Path]:
    """A loopback memcached load traced into one instance buffer, until it holds target_events."""
    mounted_here = not INSTANCE.parent.exists()
    if mounted_here:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    server = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", "11398", "-t", "1", "-U", "0"])
    try:
        INSTANCE.mkdir()
        (INSTANCE / "tracing_on").write_text("0")
        (INSTANCE / "buffer_size_kb").write_text(str(max(65536, target_events // 8)))
        (INSTANCE / "options" / "record-tgid").write_text("1")
        for system in EVENTS:
            (INSTANCE / "events" / system / "enable").write_text("1")
        for name in SYSCALLS:
            for edge in ("enter", "exit"):
                (INSTANCE / "events" / "syscalls" / f"sys_{edge}_{name}" / "enable").write_text("1")
        time.sleep(0.2)
        (INSTANCE / "tracing_on").write_text("1")
        load = subprocess.Popen(["memcaslap", "-s", "127.0.0.1:11398", "-t", "60s", "-c", "4", "-T", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while sum(int(line.split()[1]) for line in _stats_lines("entries")) < target_events and load.poll() is None:
            time.sleep(0.2)
        (INSTANCE / "tracing_on").write_text("0")
        load.terminate()
        load.wait()
        text = directory / "trace.txt"
        text.write_text((INSTANCE / "trace").read_text())
        dat = directory / "trace.dat"
        subprocess.run(["trace-cmd", "extract", "-B", INSTANCE.name, "-o", str(dat)], check=True, capture_output=True)
        return text, dat
    finally:
        server.terminate()
        server.wait()
        if INSTANCE.exists():
            (INSTANCE / "tracing_on").write_text("0")
            (INSTANCE / "events" / "enable").write_text("0")
            INSTANCE.rmdir()
        if mounted_here:
            subprocess.run(["umount", "/sys/kernel/tracing"], check=False)


def _stats_lines(field: str) -> list[str]:
    lines = []
    for stats in sorted((INSTANCE / "per_cpu").glob("cpu*/stats")):
        lines += [line for line in stats.read_text().splitlines() if line.startswith(field + ":")]
    return lines


def timed(command: list[str]) -> float:
    """Wall seconds of one run, output discarded."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--dat", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the recorded trace.txt and trace.dat here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kptrace-bench-"))
    try:
        text, dat = (args.text, args.dat) if args.text else record(args.keep or work, args.events)
        out = work / "ingested"
        kptrace_cmd = [sys.executable, "-m", "kptrace.cli", "ingest", str(text), "-o", str(out)]
        report_cmd = ["trace-cmd", "report", "-i", str(dat)]
        subprocess.run(kptrace_cmd, check=True, capture_output=True)
        import kptrace

        events = kptrace.load(out).meta["event_count"]
        runs: dict[str, list[float]] = {"kptrace ingest (tracefs text)": [], "trace-cmd report (trace.dat)": []}
        peaks: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, command in zip(runs, (kptrace_cmd, report_cmd)):
                runs[name].append(timed(command))
        for name, command in zip(runs, (kptrace_cmd, report_cmd)):
            peaks[name] = _peak_rss(command)
        print(f"trace: {events} events, {text.stat().st_size / 1e6:.1f} MB text, {dat.stat().st_size / 1e6:.1f} MB trace.dat; "
              f"{args.repeats} alternating runs each, wall time")
        rates = {}
        for name, times in runs.items():
            rates[name] = events / statistics.median(times)
            print(f"  {name:<32} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})"
                  f"  {rates[name] / 1e6:5.2f} M events/s  peak RSS {peaks[name] / 1024:6.0f} MiB")
        kp, tc = rates.values()
        print(f"ratio kptrace/trace-cmd events/s: {kp / tc:.2f}x (target >= 4x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peak_rss(command: list[str]) -> int:
    """Peak RSS (KiB) of one more run, measured by GNU time (Debian package `time`)."""
    if not Path("/usr/bin/time").exists():
        return 0
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True)
    return int(result.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
