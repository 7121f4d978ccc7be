"""Full `kptrace analyze` (Perfetto export included) vs `trace-cmd report` printing the same trace.

Uses the recording of benchmarks/ingest.py (a tracefs instance buffer saved as text and, via
`trace-cmd extract`, as trace.dat), alternates the two commands --repeats times, and prints
wall time, events/s and peak RSS of each, and the ratio. Usage (root, to record):

    python benchmarks/analyze.py [--events 1250000] [--repeats 3]
    python benchmarks/analyze.py --text trace.txt --dat trace.dat
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _ingest_benchmark():
    """benchmarks/ingest.py, whose recorder this benchmark shares."""
    spec = importlib.util.spec_from_file_location("ingest_benchmark", Path(__file__).with_name("ingest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wall_and_peak(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, GNU time) of one run, output discarded."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, check=True)
    return time.perf_counter() - start, int(result.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_250_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--dat", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kptrace-bench-analyze-"))
    try:
        text, dat = (args.text, args.dat) if args.text else _ingest_benchmark().record(work, args.events)
        commands = {
            "kptrace analyze (tracefs text)": [sys.executable, "-m", "kptrace.cli", "analyze", str(text),
                                               "-o", str(work / "out"), "--quiet"],
            "trace-cmd report (trace.dat)": ["trace-cmd", "report", "-i", str(dat)],
        }
        runs = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                runs[name].append(wall_and_peak(command))
        import kptrace

        events = kptrace.load(work / "out").meta["event_count"]
        timeline = work / "out" / "timeline.perfetto-trace.gz"
        print(f"trace: {events} events; {args.repeats} alternating runs each; wall time, peak RSS; "
              f"timeline {timeline.stat().st_size / 1e6:.1f} MB")
        medians = {}
        for name, samples in runs.items():
            seconds = [s for s, _ in samples]
            medians[name] = statistics.median(seconds)
            print(f"  {name:<32} median {medians[name]:6.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f})  "
                  f"{events / medians[name] / 1e6:5.2f} M events/s  peak RSS {max(p for _, p in samples) / 1024:6.0f} MiB")
        analyze_s, report_s = medians.values()
        print(f"ratio trace-cmd report / kptrace analyze wall time: {report_s / analyze_s:.2f}x (target > 1)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
