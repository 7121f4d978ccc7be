"""Peak memory of `kptrace analyze` on binary captures of growing size (issue 9, item 4: <= 4 GB
at >= 50 M events, and peak RSS growing < 1.5x from 5 M to 50 M events).

Each capture is analysed in its own process under GNU time (peak RSS = "Maximum resident set
size", measured); the events are meta.json's event_count. Prints events, wall time, peak RSS,
bytes per event, and the growth of the peak from the smallest capture to the largest. Usage:

    python benchmarks/memory.py CAPTURE [CAPTURE ...]                 # the full `kptrace analyze`
    python benchmarks/memory.py --analysis-only CAPTURE [CAPTURE ...]  # analysis.analyze(path, stored=tmp)
    python benchmarks/memory.py --window-rows 500000 CAPTURE ...

--analysis-only runs the windowed analysis alone (tables written, no summary, what-if, report or
timeline). Each run's output directory is removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ANALYSIS = ("import sys; from pathlib import Path; from kptrace.analysis import analyze; "
             "analyze(sys.argv[1], stored=Path(sys.argv[2]), window_rows=int(sys.argv[3]))")


def _command(capture: Path, out: Path, analysis_only: bool, window_rows: int) -> list[str]:
    if analysis_only:
        return [sys.executable, "-c", _ANALYSIS, str(capture), str(out), str(window_rows)]
    return [sys.executable, "-m", "kptrace.cli", "analyze", str(capture), "-o", str(out), "--quiet"]


def measure(capture: Path, analysis_only: bool, window_rows: int, keep: bool) -> dict:
    """One run: events, wall seconds, peak RSS in bytes."""
    out = Path(tempfile.mkdtemp(prefix=f"kptrace-memory-{capture.name}-"))
    command = _command(capture, out, analysis_only, window_rows)
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "peak_kib=%M", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"memory.py: {capture}: exit {result.returncode}: {result.stderr.strip()[-2000:]}")
    peak = int(result.stderr.strip().rsplit("peak_kib=", 1)[1].split()[0]) * 1024
    events = json.loads((out / "meta.json").read_text())["event_count"]
    if keep:
        print(f"kept {out}", file=sys.stderr)
    else:
        shutil.rmtree(out)
    return {"capture": str(capture), "events": events, "wall_s": wall, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("captures", nargs="+", type=Path)
    parser.add_argument("--analysis-only", action="store_true", help="analysis.analyze(path, stored=tmp) alone")
    parser.add_argument("--window-rows", type=int, default=None, help="events per window (default: the library's)")
    parser.add_argument("--keep", action="store_true", help="keep each run's output directory")
    args = parser.parse_args()
    if args.window_rows is not None and not args.analysis_only:
        parser.error("--window-rows applies to --analysis-only (the CLI uses the default)")
    from kptrace.windowed.events import DEFAULT_WINDOW_ROWS

    rows = args.window_rows or DEFAULT_WINDOW_ROWS
    what = "analysis.analyze(path, stored=tmp)" if args.analysis_only else "kptrace analyze"
    print(f"{what}, windows of {rows:,} events; peak RSS measured by /usr/bin/time")
    print(f"{'capture':<40} {'events':>12} {'wall s':>8} {'peak RSS GB':>12} {'B/event':>9}")
    runs = []
    for capture in args.captures:
        run = measure(capture, args.analysis_only, rows, args.keep)
        runs.append(run)
        print(f"{capture.name:<40} {run['events']:>12,} {run['wall_s']:>8.1f} {run['peak_bytes'] / 1e9:>12.2f} "
              f"{run['peak_bytes'] / run['events']:>9.0f}", flush=True)
    if len(runs) > 1:
        small, large = min(runs, key=lambda r: r["events"]), max(runs, key=lambda r: r["events"])
        print(f"peak RSS growth {large['peak_bytes'] / small['peak_bytes']:.2f}x for "
              f"{large['events'] / small['events']:.1f}x the events (goal: < 1.5x from 5 M to 50 M; "
              f"<= 4 GB at >= 50 M: {large['peak_bytes'] / 1e9:.2f} GB at {large['events']:,})")


if __name__ == "__main__":
    main()
