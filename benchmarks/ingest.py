"""Ingest speed: `kptrace ingest` of tracefs text vs `trace-cmd report` of the same buffer.

Records one tracefs instance buffer of >= --events events while memcached serves a loopback
load (root, trace-cmd, memcached, memcaslap), saves it both as tracefs text and, through
`trace-cmd extract`, as trace.dat; then alternates the two tools --repeats times and prints
events/s for each, the ratio, and peak memory. Usage (root):

    python benchmarks/ingest.py [--events 1000000] [--repeats 3] [--keep DIR]

or, with an existing pair: python benchmarks/ingest.py --text trace.txt --dat trace.dat

--native times kptrace's native binary readers instead: reading the trace.dat (and, with --raw
DIR, the same kind of pages saved in the collector's raw/ layout) against `trace-cmd report >
/dev/null` of that trace.dat, and prints events/s, the ratio (target >= 10x) and the bytes per
event of the reader's table and of the normalized event table (target <= 100 B/event):

    python benchmarks/ingest.py --native [--dat trace.dat] [--raw DIR] [--repeats 3]

--baseline DIR also times `kptrace ingest` from another kptrace source tree (e.g. `git archive`
of an older commit unpacked in DIR) in the same alternation, so before and after are measured
side by side under the same load. --stages adds, for each tree, the in-process time of each
ingest stage (read, split_lines, type_fields, normalize, write; median of --repeats runs).
"""

from __future__ import annotations

import argparse
import json
import os
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


def timed(command: list[str], tree: Path | None = None) -> float:
    """Wall seconds of one run (kptrace from `tree` if given), output discarded."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **in_tree(tree))
    return time.perf_counter() - start


#: One ingest, stage by stage, in a fresh interpreter; prints {stage: seconds} as JSON.
STAGES = """
import json, sys, time
import polars as pl
from kptrace.export.parquet import write_tables
from kptrace.normalize import normalize
from kptrace.read import RawTrace
from kptrace.read.fields import type_fields
from kptrace.read.lines import detect_format, split_lines
from kptrace.read.source import read_source
seconds, last = {}, time.perf_counter()
def done(stage):
    global last
    now = time.perf_counter()
    seconds[stage] = now - last
    last = now
source = read_source(sys.argv[1]); done("read")
fmt = detect_format(source.text)
split = split_lines(source.text, fmt); done("split_lines")
rows = type_fields(split.rows); done("type_fields")
events = normalize(RawTrace(rows=rows, source_format=fmt, files=[])); done("normalize")
write_tables(sys.argv[2], {"events": events.events}, events.meta); done("write")
print(json.dumps(seconds))
"""


#: Native read of a binary trace in a fresh interpreter; prints seconds and table sizes as JSON.
NATIVE = """
import json, sys, time
start = time.perf_counter()
from kptrace.normalize import normalize
from kptrace.read import read_any
imported = time.perf_counter()
raw = read_any(sys.argv[1])
read = time.perf_counter()
events = normalize(raw)
done = time.perf_counter()
print(json.dumps({"import": imported - start, "read": read - imported, "normalize": done - read,
                  "events": events.meta["event_count"], "rows_bytes": raw.rows.estimated_size(),
                  "table_bytes": events.events.estimated_size()}))
"""


def native_run(path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", NATIVE, str(path.resolve())], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def native(dat: Path, raw: Path | None, repeats: int) -> None:
    """Native readers vs `trace-cmd report > /dev/null`, alternating, medians of `repeats`."""
    inputs = {"kptrace native (trace.dat)": dat, **({"kptrace native (raw pages)": raw} if raw else {})}
    runs: dict[str, list] = {name: [] for name in [*inputs, "trace-cmd report (trace.dat)"]}
    for _ in range(repeats):
        for name, path in inputs.items():
            runs[name].append(native_run(path))
        runs["trace-cmd report (trace.dat)"].append(timed(["trace-cmd", "report", "-i", str(dat)]))
    report = statistics.median(runs["trace-cmd report (trace.dat)"])
    first = runs["kptrace native (trace.dat)"][0]
    events = first["events"]
    print(f"trace: {events} events, {dat.stat().st_size / 1e6:.1f} MB trace.dat; {repeats} alternating runs each")
    print(f"  trace-cmd report > /dev/null          median {report:6.2f} s wall  {events / report / 1e6:6.2f} M events/s")
    for name in inputs:
        read = statistics.median(r["read"] for r in runs[name])
        norm = statistics.median(r["normalize"] for r in runs[name])
        imp = statistics.median(r["import"] for r in runs[name])
        r = runs[name][0]
        print(f"  {name:<36} read {read:6.2f} s  {r['events'] / read / 1e6:6.2f} M events/s  "
              f"({r['events'] / read / (events / report):5.1f}x trace-cmd); normalize {norm:.2f} s, "
              f"import {imp:.2f} s; reader table {r['rows_bytes'] / r['events']:.0f} B/event, "
              f"event table {r['table_bytes'] / r['events']:.0f} B/event (Polars estimated_size)")


def in_tree(tree: Path | None) -> dict:
    """subprocess.run arguments that make `python` import kptrace from `tree` (None: as installed).

    `python -m` and `-c` put the working directory first on sys.path, so both are set.
    """
    if tree is None:
        return {}
    return {"cwd": tree, "env": {**os.environ, "PYTHONPATH": str(tree.resolve())}}


def stage_seconds(text: Path, out: Path, tree: Path | None) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", STAGES, str(text.resolve()), str(out)], check=True,
                            capture_output=True, text=True, **in_tree(tree))
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--dat", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the recorded trace.txt and trace.dat here")
    parser.add_argument("--baseline", type=Path, help="another kptrace source tree to time side by side")
    parser.add_argument("--stages", action="store_true", help="also time each ingest stage in-process")
    parser.add_argument("--native", action="store_true", help="time the native binary readers instead")
    parser.add_argument("--raw", type=Path, help="with --native: a raw/ pages directory to time too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kptrace-bench-"))
    try:
        if args.native:
            native(args.dat or record(args.keep or work, args.events)[1], args.raw, args.repeats)
            return
        text, dat = (args.text, args.dat) if args.text else record(args.keep or work, args.events)
        out = work / "ingested"
        kptrace_cmd = [sys.executable, "-m", "kptrace.cli", "ingest", str(text.resolve()), "-o", str(out)]
        subprocess.run(kptrace_cmd, check=True, capture_output=True)
        import kptrace

        events = kptrace.load(out).meta["event_count"]
        contenders = {"kptrace ingest (tracefs text)": (kptrace_cmd, None)}
        if args.baseline:
            contenders["baseline kptrace ingest"] = (kptrace_cmd, args.baseline)
        contenders["trace-cmd report (trace.dat)"] = (["trace-cmd", "report", "-i", str(dat)], None)
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        stages: dict[str, list[dict[str, float]]] = {name: [] for name in contenders
                                                     if args.stages and "kptrace" in name}
        for _ in range(args.repeats):
            for name, (command, tree) in contenders.items():
                runs[name].append(timed(command, tree))
                if name in stages:
                    stages[name].append(stage_seconds(text, work / "stages", tree))
        peaks = {name: _peak_rss(command, tree) for name, (command, tree) in contenders.items()}
        print(f"trace: {events} events, {text.stat().st_size / 1e6:.1f} MB text, {dat.stat().st_size / 1e6:.1f} MB trace.dat; "
              f"{args.repeats} alternating runs each, wall time")
        rates = {}
        for name, times in runs.items():
            rates[name] = events / statistics.median(times)
            print(f"  {name:<32} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})"
                  f"  {rates[name] / 1e6:5.2f} M events/s  peak RSS {peaks[name] / 1024:6.0f} MiB")
        for name, samples in stages.items():
            print(f"  stages of {name} (median s): " + ", ".join(
                f"{stage} {statistics.median(s[stage] for s in samples):.2f}" for stage in samples[0]))
        kp, tc = rates["kptrace ingest (tracefs text)"], rates["trace-cmd report (trace.dat)"]
        print(f"ratio kptrace/trace-cmd events/s: {kp / tc:.2f}x (target >= 4x)")
        if args.baseline:
            print(f"speed-up over baseline: {kp / rates['baseline kptrace ingest']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peak_rss(command: list[str], tree: Path | None = None) -> int:
    """Peak RSS (KiB) of one more run, measured by GNU time (Debian package `time`)."""
    if not Path("/usr/bin/time").exists():
        return 0
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, **in_tree(tree))
    return int(result.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
