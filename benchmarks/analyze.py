"""Full `kptrace analyze` of a trace.dat (tables, summary, report, Perfetto timeline: everything)
vs `trace-cmd report > /dev/null` of the same file (issue 9, item 5: analyze must finish first).

Uses the recording of benchmarks/ingest.py (a tracefs instance buffer saved, via `trace-cmd
extract`, as trace.dat), alternates the two commands --repeats times, and prints wall time,
events/s and peak RSS of each, and the ratio. Usage (root, to record):

    python benchmarks/analyze.py [--events 1250000] [--repeats 3]
    python benchmarks/analyze.py --dat trace.dat        # an existing recording
    python benchmarks/analyze.py --dat trace.dat --text trace.txt   # also analyze its text
    python benchmarks/analyze.py --dat trace.dat --stages           # where analyze's time goes
    python benchmarks/analyze.py --dat trace.dat --serial           # each part alone: wall and CPU
    python benchmarks/analyze.py --dat trace.dat --main-chain       # what every output waits for, alone
    python benchmarks/analyze.py --dat trace.dat --before /tmp/old  # also the kptrace of another checkout
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
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


def wall_and_peak(command: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, GNU time) of one run, output discarded."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, check=True, env=env, cwd=cwd)
    return time.perf_counter() - start, int(result.stderr.strip().splitlines()[-1])


def stage_times(dat: Path, out: Path) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Seconds of each stage of one in-process analyze of `dat`, run as `kptrace analyze` runs it
    (a chart process started before the imports; analyze with stored=out while the early outputs
    start on their threads, as the CLI's do; then write_all building the summary): the
    main thread's stages as the analysis's progress reports them, one after another, so they add
    up to the total. And the output parts, which run side by side (events.parquet and the
    Perfetto timeline started early, summary and what-if, the other Parquet tables, the report's
    charts; then the page): each as its (start, end) seconds from the end of the imports, timed
    by wrapping the functions that make them; they overlap the stages and each other."""
    times: dict[str, float] = {}
    mark = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - mark[0]
        mark[0] = now

    from kptrace.export.chart_process import ChartProcess
    charts = ChartProcess()  # as the CLI does, before its imports: altair in a process of its own
    from kptrace import summary
    from kptrace.analysis import analyze
    from kptrace.export import outputs, parquet
    gc.freeze()  # as the CLI does once its imports are done (kptrace.cli._freeze_imports)
    lap("imports (kptrace, polars, pyarrow)")
    origin = mark[0]
    parts: dict[str, tuple[float, float]] = {}

    def timed(module, name: str, part, when=lambda *args: True):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter() - origin
            try:
                return original(*args, **kwargs)
            finally:
                if when(*args):
                    parts[part] = (start, time.perf_counter() - origin)
        setattr(module, name, wrapper)

    timed(parquet, "write_table", "events.parquet (early)", lambda target, table: Path(target).name == "events.parquet")
    timed(outputs, "_draw_measured", "Perfetto timeline (early)")
    timed(summary, "build_summary", "summary and what-if (build_summary)")
    timed(outputs, "write_tables_of", "the other Parquet tables")
    timed(outputs, "measured_chart_specs", "report's charts of measured figures (data here, specs in the chart process)")
    timed(outputs, "chart_specs", "report's charts: the what-if's")
    timed(outputs, "write_report", "report.html (from the built charts)")
    with charts, outputs.EarlyOutputs(out, draw_charts=charts.specs) as early:
        analysis = analyze(dat, lambda stage: lap(f"analysis: {stage}"), stored=out, built=early.built)
        lap("analysis: rest")
        outputs.write_all(analysis, out, early=early)
    lap("write_all: summary, tables, charts; waits for the early parts; report")
    return times, parts


def serial_parts(dat: Path, out: Path) -> list[tuple[str, float, float]]:
    """(part, wall s, CPU s) of each part of one in-process analyze of `dat`, run one after
    another on this thread (no early outputs, no output beside another; only the analysis's own
    damaged-windows thread runs beside its attribution, as it always does): what each part costs
    alone. CPU is the process's (Polars' own threads included)."""
    rows = []
    mark = [time.perf_counter(), time.process_time()]

    def lap(part: str) -> None:
        now = [time.perf_counter(), time.process_time()]
        rows.append((part, now[0] - mark[0], now[1] - mark[1]))
        mark[:] = now

    from kptrace import summary
    from kptrace.analysis import analyze
    from kptrace.export import outputs
    gc.freeze()
    lap("imports (kptrace, polars, pyarrow)")
    analysis = analyze(dat, lambda stage: lap(f"analysis: {stage}"), stored=out)
    lap("analysis: rest (attribution, faults)")
    built = summary.build_summary(analysis)
    lap("summary and what-if (build_summary)")
    outputs.write_tables_of(analysis, out, dict(analysis.tables()))
    lap("Parquet tables")
    outputs._write_timeline(analysis, out, "measured", None, None)
    lap("Perfetto timeline")
    outputs.chart_specs(analysis, built)
    lap("report's charts (altair imported and run in this process)")
    return rows


def main_chain(dat: Path, out: Path) -> dict[str, float]:
    """Seconds from the start of this function to the end of each step of the chain every output
    waits for, with nothing else run: the imports, the analysis (events.parquet written early on
    its thread, as the CLI does; no timeline) and the summary (the what-if). No other table,
    no timeline, no chart: a lower bound on `kptrace analyze` in one process."""
    start = time.perf_counter()
    from kptrace import summary
    from kptrace.analysis import analyze
    from kptrace.export import outputs
    gc.freeze()
    marks = {"imports": time.perf_counter() - start}
    with outputs.EarlyOutputs(out, draw_timeline=False) as early:
        analysis = analyze(dat, stored=out, built=early.built)
        marks["analysis"] = time.perf_counter() - start
        summary.build_summary(analysis)
        marks["summary and what-if"] = time.perf_counter() - start
    return marks


def cli_wall(dat: Path, out: Path) -> float:
    """Wall seconds of one `kptrace analyze` of `dat` (a fresh interpreter: startup and exit included)."""
    return wall_and_peak([sys.executable, "-m", "kptrace.cli", "analyze", str(dat), "-o", str(out), "--quiet"])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_250_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dat", type=Path, help="an existing trace.dat instead of a new recording")
    parser.add_argument("--text", type=Path, help="also time `kptrace analyze` of this text of the same trace")
    parser.add_argument("--stages", action="store_true", help="only time each stage of one in-process analyze of --dat")
    parser.add_argument("--serial", action="store_true", help="only time each part of one in-process analyze of --dat, "
                                                              "one after another: wall and CPU")
    parser.add_argument("--main-chain", action="store_true", help="only time, in a fresh interpreter per run, the "
                                                                  "chain every output waits for (--repeats runs)")
    parser.add_argument("--before", type=Path, help="also time `kptrace analyze` with the kptrace of this checkout "
                                                    "(e.g. a `git archive` of the base commit), alternating")
    args = parser.parse_args()
    args.dat = args.dat and args.dat.resolve()  # --before runs from its checkout
    work = Path(tempfile.mkdtemp(prefix="kptrace-bench-analyze-"))
    try:
        if args.main_chain:
            if args.dat is None:
                parser.error("--main-chain needs --dat")
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import analyze, json; "
                    f"print(json.dumps(analyze.main_chain(analyze.Path({str(args.dat)!r}), "
                    f"analyze.Path({str(work / 'chain')!r}))))")
            for _ in range(args.repeats):
                marks = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True).stdout)
                print("  " + ", ".join(f"{step} done at {seconds:.2f} s" for step, seconds in marks.items()))
            return
        if args.serial:
            if args.dat is None:
                parser.error("--serial needs --dat")
            rows = serial_parts(args.dat, work / "out")
            for part, wall, cpu in rows + [("total", sum(r[1] for r in rows), sum(r[2] for r in rows))]:
                print(f"  {part:<60} wall {wall:5.2f} s  CPU {cpu:5.2f} s")
            return
        if args.stages:
            if args.dat is None:
                parser.error("--stages needs --dat")
            times, parts = stage_times(args.dat, work / "out")
            for stage, seconds in times.items():
                print(f"  {stage:<60} {seconds:6.2f} s")
            print("    the output parts, each from its start to its end after the imports (they overlap):")
            for part, (start, end) in parts.items():
                print(f"      {part:<56} {end - start:6.2f} s  ({start:5.2f} -> {end:5.2f})")
            print(f"  {'total in process':<60} {sum(times.values()):6.2f} s")
            wall = cli_wall(args.dat, work / "out-cli")
            print(f"  {'kptrace analyze, a fresh process (same work)':<60} {wall:6.2f} s")
            print(f"  {'  of which outside the stages (startup, exit)':<60} {wall - sum(times.values()):6.2f} s")
            return
        text, dat = (args.text, args.dat) if args.dat else _ingest_benchmark().record(work, args.events)
        commands = {
            "kptrace analyze (trace.dat)": [sys.executable, "-m", "kptrace.cli", "analyze", str(dat),
                                            "-o", str(work / "out"), "--quiet"],
            "trace-cmd report (trace.dat)": ["trace-cmd", "report", "-i", str(dat)],
        }
        if text is not None:
            commands["kptrace analyze (tracefs text)"] = [sys.executable, "-m", "kptrace.cli", "analyze", str(text),
                                                          "-o", str(work / "out-text"), "--quiet"]
        envs = {name: None for name in commands}
        if args.before is not None:
            name = f"kptrace analyze before ({args.before})"
            commands[name] = [*commands["kptrace analyze (trace.dat)"][:-2], str(work / "out-before"), "--quiet"]
            # run from there: `python -m` puts the working directory first on the import path
            envs[name] = dict(os.environ, PYTHONPATH=str(args.before.resolve()))
        runs = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                runs[name].append(wall_and_peak(command, envs[name], args.before if envs[name] else None))
        import kptrace

        events = kptrace.load(work / "out").meta["event_count"]
        timeline = work / "out" / "timeline.perfetto-trace.gz"
        print(f"trace: {events} events; {args.repeats} alternating runs each; wall time, peak RSS; "
              f"timeline {timeline.stat().st_size / 1e6:.1f} MB")
        medians = {}
        for name, samples in runs.items():
            seconds = [s for s, _ in samples]
            medians[name] = statistics.median(seconds)
            print(f"  {name:<40} median {medians[name]:6.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f})  "
                  f"{events / medians[name] / 1e6:5.2f} M events/s  peak RSS {max(p for _, p in samples) / 1024:6.0f} MiB")
        analyze_s, report_s = medians["kptrace analyze (trace.dat)"], medians["trace-cmd report (trace.dat)"]
        print(f"ratio trace-cmd report / kptrace analyze wall time: {report_s / analyze_s:.2f}x (target > 1)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
