"""Time and peak RSS of `write_timeline` alone (issue 9, items 4 and 5: the timeline was the peak
of `kptrace analyze` and its largest write stage), old vs new in one run.

Input: an analysis directory (the Parquet tables `kptrace analyze -o DIR` writes: events,
intervals, requests) or a trace/capture, which is analysed once first (`kptrace analyze -o TMP`)
so that only the timeline is measured. Each implementation runs in its own process over the same
scanned tables, as write_all calls it (counters from kptrace.summary.counter_samples); a process
reports the RSS it had before the call, its peak RSS after it (ru_maxrss: the call's high-water
mark, as loading the scans costs next to nothing), the call's wall and CPU time (all threads; the
steadier figure on a loaded machine), and the sha256 of the decompressed timeline, so that old
and new are shown to write the same bytes. "old" is kptrace/export/perfetto.py at git revision
--baseline (default: main). Usage:

    python benchmarks/timeline.py /tmp/s7/out5m [--baseline main] [--repeats 1]
    python benchmarks/timeline.py /tmp/kptbin-bench/trace.dat
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: One measured call, run in a fresh process: argv = module file ("" = this checkout's), tables dir, output.
_RUN = r"""
import gzip, hashlib, importlib.util, json, resource, sys, time
import polars as pl
from kptrace.summary import counter_samples
module_file, tables, out = sys.argv[1:4]
if module_file:
    spec = importlib.util.spec_from_file_location("perfetto_baseline", module_file)
    perfetto = sys.modules["perfetto_baseline"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(perfetto)
else:
    from kptrace.export import perfetto
def scan(name):
    path = f"{tables}/{name}.parquet"
    try:
        return pl.scan_parquet(path) if __import__("os").path.exists(path) else None
    except Exception:
        return None
events, intervals, requests = scan("events"), scan("intervals"), scan("requests")
counters = None if events is None else counter_samples(events)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
started, cpu_started = time.perf_counter(), time.process_time()
written = perfetto.write_timeline(out, events, intervals, requests, counters)
wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
digest = hashlib.sha256(gzip.open(out).read()).hexdigest()
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_before": before, "peak": peak, "sha256": digest,
                  "packets": written["packets"], "slices": sum(written["slices"].values())}))
"""


def tables_of(source: Path, scratch: Path) -> Path:
    """The directory of Parquet tables to draw: `source` itself, or a fresh analysis of it."""
    if (source / "intervals.parquet").exists():
        return source
    out = scratch / "analysis"
    subprocess.run([sys.executable, "-m", "kptrace.cli", "analyze", str(source), "-o", str(out), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def baseline_module(revision: str, scratch: Path) -> Path:
    """kptrace/export/perfetto.py as it is at `revision`, saved as a standalone file."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:kptrace/export/perfetto.py"],
                          check=True, capture_output=True, text=True).stdout
    path = scratch / "perfetto_baseline.py"
    path.write_text(text)
    return path


def measure(module_file: str, tables: Path, out: Path) -> dict:
    """One write_timeline call in its own process."""
    result = subprocess.run([sys.executable, "-c", _RUN, module_file, str(tables), str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"timeline.py: the {'old' if module_file else 'new'} writer failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an analysis directory, or a trace/capture to analyse first")
    parser.add_argument("--baseline", default="main", help="git revision of the old perfetto.py (default main)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--new-only", action="store_true", help="measure this checkout's writer alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kptrace-timeline-") as tmp:
        scratch = Path(tmp)
        tables = tables_of(args.source, scratch)
        variants = {"new": ""} if args.new_only else {"old": str(baseline_module(args.baseline, scratch)), "new": ""}
        print(f"write_timeline of {tables} (baseline {args.baseline})")
        print(f"{'':4} {'run':>3} {'wall s':>8} {'CPU s':>7} {'RSS before GB':>14} {'peak GB':>8} {'growth GB':>10} "
              f"{'packets':>10}  sha256 of the decompressed timeline")
        digests = set()
        for run in range(args.repeats):
            for name, module_file in variants.items():
                r = measure(module_file, tables, scratch / f"{name}.perfetto-trace.gz")
                digests.add(r["sha256"])
                print(f"{name:4} {run + 1:>3} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['rss_before'] / 1e9:14.2f} {r['peak'] / 1e9:8.2f} "
                      f"{(r['peak'] - r['rss_before']) / 1e9:10.2f} {r['packets']:>10}  {r['sha256'][:16]}")
        if not args.new_only:
            print("identical output" if len(digests) == 1 else "OUTPUTS DIFFER")


if __name__ == "__main__":
    main()
