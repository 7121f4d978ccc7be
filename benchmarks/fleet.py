"""`kptrace analyze` of 12 inputs one after another vs `kptrace fleet` of the same 12 on a local
Dask cluster, side by side in one run.

The 12 inputs are the three sample bundles and nine simulated traces (`kptrace simulate`, seeds
1-9); `analyze DIR` walks them sequentially in one process, `fleet DIR --workers N` runs one task
per input. Each command runs --repeats times, alternating; the table shows the median wall time
and the speed-up. Meant for a quiet machine (other load distorts both sides). Usage:

    python benchmarks/fleet.py [--workers 2] [--sim-duration 1.0] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = sorted(p for p in (ROOT / "sample_traces").iterdir() if (p / "manifest.json").exists())
SEEDS = range(1, 10)


def make_inputs(work: Path, duration: float) -> Path:
    """A directory of the sample bundles (symlinked) and the simulated traces."""
    from kptrace.simulate import Scenario, write_simulation

    inputs = work / "inputs"
    inputs.mkdir()
    for bundle in BUNDLES:
        os.symlink(bundle, inputs / bundle.name)
    for seed in SEEDS:
        trace = write_simulation(work / f"sim-{seed}", Scenario(duration_s=duration, seed=seed))
        shutil.copy(trace, inputs / f"sim{seed}.txt")
    return inputs


def wall(command: list[str]) -> float:
    """Wall seconds of one run, output discarded; a failed run stops the benchmark."""
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sim-duration", type=float, default=1.0, help="seconds of each simulated trace")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kptrace-bench-fleet-"))
    try:
        inputs = make_inputs(work, args.sim_duration)
        count = len(list(inputs.iterdir()))
        kptrace = [sys.executable, "-m", "kptrace.cli"]
        commands = {
            "analyze, sequential": [*kptrace, "analyze", str(inputs), "-o", str(work / "seq"), "--quiet"],
            f"fleet, {args.workers} local workers": [*kptrace, "fleet", str(inputs), "-o", str(work / "fleet"),
                                                     "--workers", str(args.workers), "--json"],
        }
        runs = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                runs[name].append(wall(command))
        sequential, fleet = (statistics.median(times) for times in runs.values())
        print(f"{count} inputs ({len(BUNDLES)} sample bundles, {len(SEEDS)} simulated traces of "
              f"{args.sim_duration} s) on {os.cpu_count()} cores; median of {args.repeats} run(s), wall time (measured)")
        print(f"{'command':<28} {'wall s':>8} {'s/input':>8}")
        for name, value in zip(commands, (sequential, fleet)):
            print(f"{name:<28} {value:>8.1f} {value / count:>8.2f}")
        print(f"speed-up (sequential / fleet): {sequential / fleet:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
