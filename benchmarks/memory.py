"""Peak memory of `kptrace analyze` on binary captures of growing size (issue 9, item 4: <= 4 GB
at >= 50 M events, and peak RSS growing < 1.5x from 5 M to 50 M events).

Each capture is analysed in its own process under GNU time (peak RSS = "Maximum resident set
size", measured); the events are meta.json's event_count. Prints events, wall time, peak RSS,
bytes per event, and the growth of the peak from the smallest capture to the largest. Usage:

    python benchmarks/memory.py CAPTURE [CAPTURE ...]                 # the full `kptrace analyze`
    python benchmarks/memory.py --analysis-only CAPTURE [CAPTURE ...]  # analysis.analyze(path, stored=tmp)
    python benchmarks/memory.py --window-rows 500000 CAPTURE ...
    python benchmarks/memory.py --whatif OUT [OUT ...]                # the what-if step alone

--analysis-only runs the windowed analysis alone (tables written, no summary, what-if, report or
timeline). Each run's output directory is removed afterwards unless --keep. --whatif takes the
output directories of earlier `kptrace analyze` runs and runs summary.predict_policies on their
stored tables (read as scans, as the windowed analysis hands them on), and says whether its
results equal the stored summary.json's "whatif" (they should when the same code wrote it).
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


def stored_analysis(out: Path):
    """The Analysis of a `kptrace analyze` output directory, its per-event tables as scans."""
    import polars as pl

    from kptrace.analysis import Analysis

    summary = json.loads((out / "summary.json").read_text())
    scan = {name: pl.scan_parquet(out / f"{name}.parquet") for name in
            ("events", "intervals", "disruptions", "requests", "request_hits", "request_counters")
            if (out / f"{name}.parquet").exists()}
    return Analysis(meta=json.loads((out / "meta.json").read_text()), events=scan.get("events"),
                    intervals=scan["intervals"], disruptions=scan["disruptions"], requests=scan.get("requests"),
                    hits=scan.get("request_hits"), attribution=pl.read_parquet(out / "attribution.parquet"),
                    notes=summary["notes"], request_counters=scan.get("request_counters"),
                    damaged_windows=pl.read_parquet(out / "damaged_windows.parquet"), stored=out), summary


def run_whatif(out: Path) -> None:
    """The what-if step on a stored analysis (in this process: the one measured)."""
    from kptrace.summary import predict_policies

    analysis, summary = stored_analysis(out)
    results, _ = predict_policies(analysis)
    same = json.dumps(results, sort_keys=True) == json.dumps(summary["whatif"], sort_keys=True)
    print(f"whatif equal to the stored summary.json's: {'yes' if same else 'NO'}", file=sys.stderr)


def _command(capture: Path, out: Path, analysis_only: bool, window_rows: int, whatif: bool = False) -> list[str]:
    if whatif:
        return [sys.executable, __file__, "--run-whatif", str(capture)]
    if analysis_only:
        return [sys.executable, "-c", _ANALYSIS, str(capture), str(out), str(window_rows)]
    return [sys.executable, "-m", "kptrace.cli", "analyze", str(capture), "-o", str(out), "--quiet"]


def measure(capture: Path, analysis_only: bool, window_rows: int, keep: bool, whatif: bool = False) -> dict:
    """One run: events, wall seconds, peak RSS in bytes."""
    out = capture if whatif else Path(tempfile.mkdtemp(prefix=f"kptrace-memory-{capture.name}-"))
    command = _command(capture, out, analysis_only, window_rows, whatif)
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "peak_kib=%M", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"memory.py: {capture}: exit {result.returncode}: {result.stderr.strip()[-2000:]}")
    peak = int(result.stderr.strip().rsplit("peak_kib=", 1)[1].split()[0]) * 1024
    events = json.loads((out / "meta.json").read_text())["event_count"]
    if whatif:
        print(f"{capture}: {result.stderr.strip().splitlines()[-2]}", file=sys.stderr)
    elif keep:
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
    parser.add_argument("--whatif", action="store_true", help="the what-if step alone on stored analyses (OUT dirs)")
    parser.add_argument("--run-whatif", action="store_true", help=argparse.SUPPRESS)  # (the measured process)
    args = parser.parse_args()
    if args.run_whatif:
        return run_whatif(args.captures[0])
    if args.window_rows is not None and not args.analysis_only:
        parser.error("--window-rows applies to --analysis-only (the CLI uses the default)")
    from kptrace.windowed.events import DEFAULT_WINDOW_ROWS

    rows = args.window_rows or DEFAULT_WINDOW_ROWS
    what = ("summary.predict_policies on the stored tables" if args.whatif else
            "analysis.analyze(path, stored=tmp)" if args.analysis_only else "kptrace analyze")
    windows = "" if args.whatif else f", windows of {rows:,} events"
    print(f"{what}{windows}; peak RSS measured by /usr/bin/time")
    print(f"{'capture':<40} {'events':>12} {'wall s':>8} {'peak RSS GB':>12} {'B/event':>9}")
    runs = []
    for capture in args.captures:
        run = measure(capture, args.analysis_only, rows, args.keep, args.whatif)
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
