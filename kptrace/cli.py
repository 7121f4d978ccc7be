"""The `kptrace` command. Thin: each command calls the stages in order and prints their result.

Exit codes: 0 success (warnings may be printed), 1 unusable input (one line on stderr),
2 usage error (typer's own).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

# kptrace's linear algebra is two small least-squares fits: OpenBLAS's helper threads only spin
# (~0.15 s of CPU at numpy's import, measured in docs/performance.md). Before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from kptrace.errors import SetupError, TraceError  # noqa: E402

if TYPE_CHECKING:
    from kptrace.export.chart_process import ChartProcess

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Measure what interrupts cost a server, from its own kernel traces.")

COLLECTOR = Path(__file__).resolve().parent.parent / "collectors" / "kptrace-record"


# The network policies' knobs, named like the kernel's (whatif and simulate --policy).
Defer = Annotated[int | None, typer.Option("--defer", help="napi_defer_hard_irqs")]
GroFlushTimeout = Annotated[int | None, typer.Option("--gro-flush-timeout", help="ns")]
BusyPollUsecs = Annotated[int | None, typer.Option("--usecs", help="busy_poll_usecs")]
BusyPollBudget = Annotated[int | None, typer.Option("--budget", help="busy_poll_budget")]
PreferBusyPoll = Annotated[bool | None, typer.Option("--prefer", help="prefer_busy_poll")]
IrqSuspendTimeout = Annotated[int | None, typer.Option("--timeout", help="irq-suspend-timeout, ns")]


def _echo(text: str, err: bool = False) -> None:
    """Print, with a trace's escape sequences and control characters shown as escapes: names and
    fields come from whoever ran the traced programs (kptrace.export.text.terminal_safe)."""
    from kptrace.export.text import terminal_safe

    typer.echo(terminal_safe(str(text)), err=err)


def _fail(error: Exception) -> None:
    _echo(f"kptrace: error: {error}", err=True)
    raise typer.Exit(1)


def _warn(meta: dict) -> None:
    for warning in meta["warnings"]:
        _echo(f"kptrace: warning: {warning}", err=True)


def _freeze_imports() -> None:
    """Exclude every object that exists now from the garbage collector's scans (gc.freeze), and
    collect again from here on (main paused it). Called by every command once its heavy imports
    are done: numpy, polars and pyarrow leave about 50k tracked objects that live as long as the
    process; collections while they pile up, and every full one after, would scan them again.
    Only the CLI does this, because it owns the process; the library leaves the collector alone."""
    gc.freeze()
    gc.enable()


def _ingest(trace: Path, out: Path) -> dict:
    from kptrace.archive import opened
    from kptrace.export.parquet import write_tables
    from kptrace.normalize import normalize
    from kptrace.read import read_any
    from kptrace.windowed.events import write_event_windows

    _freeze_imports()

    with opened(trace, out) as readable:  # a bundle archive is unpacked safely into out, then removed
        if (meta := write_event_windows(readable, out)) is not None:  # a binary capture, in bounded memory
            return meta
        normalized = normalize(read_any(readable))
    write_tables(out, {"events": normalized.events}, normalized.meta)
    return normalized.meta


@app.command()
def ingest(
    trace: Annotated[Path, typer.Argument(help="bundle directory or archive (.tar.zst), or tracefs / trace-cmd report / perf script text (.gz .zst .xz too)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory for events.parquet and meta.json")],
) -> None:
    """Parse a trace into the typed event table (Parquet, zstd) and meta.json."""
    try:
        meta = _ingest(trace, out)
    except TraceError as error:
        _fail(error)
    _warn(meta)
    _echo(
        f"{meta['event_count']} events (measured) from {meta['source_format']} over "
        f"{meta['duration_s']:.3f} s on {len(meta['per_cpu'])} CPUs; "
        f"{meta['unparsed_lines']} lines skipped -> {out}/events.parquet, {out}/meta.json"
    )


def _analyze_one(trace: Path, out: Path, quiet: bool, charts: ChartProcess, predicted: str | None = None,
                 timeline_window: tuple[float, float] | None = None) -> dict:
    """Analyze one input into `out`, what-if predictions included (and the `predicted` policy's
    replay as a timeline group), the report's charts built by `charts`; return its summary.
    Stage progress goes to stderr."""
    from kptrace.analysis import analyze as run_analysis
    from kptrace.archive import opened
    from kptrace.export.outputs import EarlyOutputs, write_all

    _freeze_imports()
    # events.parquet and the timeline are written on threads as soon as their tables are built.
    with (_stages(trace.name, quiet) as progress,
          EarlyOutputs(out, timeline_window is None, charts.specs) as early):
        with opened(trace, out) as readable:  # a bundle archive is unpacked safely into out, then removed
            # A large binary capture is analysed in windows, which store their own tables.
            analysis = run_analysis(readable, progress, stored=out, built=early.built)
        _warn(analysis.meta)

        def replayed(summary: dict) -> None:
            servers = len(summary["whatif"])
            progress(f"replayed the what-if policies for {servers} server{'s' * (servers != 1)}")
        # The summary (what-if) is built inside write_all, beside the tables and the timeline.
        summary = write_all(analysis, out, predicted=predicted, timeline_window=timeline_window, summarized=replayed,
                            early=early)
        progress(f"wrote tables, report and timeline ({summary['outputs']['timeline_slices']:,} slices)")
    return summary


#: What `kptrace analyze` does after each progress line, in order (the bar names the running one).
ANALYZE_STAGES = ("reading the trace", "rebuilding intervals and interrupt chains", "finding requests",
                  "attributing costs and replaying the what-if policies", "writing tables, report and timeline")


@contextlib.contextmanager
def _stages(name: str, quiet: bool):
    """A `progress(stage)` for `_analyze_one`: each finished stage as one line on stderr and, when
    stderr is a terminal, a bar under them naming the running stage with the time so far (rich)."""
    started = time.monotonic()

    def line(stage: str) -> str:
        return f"kptrace: [{time.monotonic() - started:5.1f} s] {name}: {stage}"

    if quiet or not sys.stderr.isatty():
        yield (lambda stage: None) if quiet else (lambda stage: _echo(line(stage), err=True))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from kptrace.export.text import terminal_safe

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"{name}: {ANALYZE_STAGES[0]}", total=len(ANALYZE_STAGES))

        def progress(stage: str) -> None:
            bar.console.print(terminal_safe(line(stage)), markup=False, highlight=False, soft_wrap=True)
            done = min(int(bar.tasks[0].completed) + 1, len(ANALYZE_STAGES))
            running = ANALYZE_STAGES[done] if done < len(ANALYZE_STAGES) else "done"
            # Drawn now, not at the next tick: a stage can end before rich refreshes (10/s).
            bar.update(task, completed=done, description=f"{name}: {running}", refresh=True)
        yield progress


def _seconds_window(text: str) -> tuple[float, float]:
    """--timeline-window START:END (seconds from the trace's start); exit 2 with one line if not."""
    try:
        start, end = (float(part) for part in text.split(":"))
    except ValueError:
        start = end = math.nan
    if not 0 <= start < end < math.inf:
        _echo(f"kptrace: error: --timeline-window {text!r}: give START:END in seconds from the trace's start, "
              "0 <= START < END (for example 2:4)", err=True)
        raise typer.Exit(2)
    return start, end


COMPRESSED = (".gz", ".zst", ".xz")


def _inputs(trace: Path) -> list[Path]:
    """A bundle or a file is one input; a directory of them is each of its entries."""
    if trace.is_dir() and not (trace / "manifest.json").exists():
        return sorted(p for p in trace.iterdir() if not p.name.startswith("."))
    return [trace]


def _short_name(item: Path) -> str:
    if item.is_dir():
        return item.name
    return Path(item.name.removesuffix(item.suffix) if item.suffix in COMPRESSED else item.name).stem


def _output_dirs(inputs: list[Path], out: Path) -> dict[Path, Path]:
    """Each input's own output folder: a file's name without its compression and format suffixes
    (`a.1.txt.zst` -> `a.1`), a bundle's name, or the full name where that would collide (`a.txt`
    beside `a.txt.zst`); a single input writes to `out` itself."""
    if len(inputs) == 1:
        return {inputs[0]: out}
    short = {item: _short_name(item) for item in inputs}
    taken = list(short.values())
    return {item: out / (name if taken.count(name) == 1 else item.name) for item, name in short.items()}


@app.command()
def analyze(
    trace: Annotated[Path, typer.Argument(help="bundle (or its .tar.zst), trace text file, or a directory of them")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory")] = Path("kptrace-out"),
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress lines on stderr")] = False,
    predicted: Annotated[str | None, typer.Option("--whatif", metavar="POLICY", help=(
        "also draw this what-if policy's replay (default parameters) in the timeline, as the group "
        "'predicted: POLICY' beside 'measured'"))] = None,
    timeline_window: Annotated[str | None, typer.Option("--timeline-window", metavar="START:END", help=(
        "draw only these seconds (from the trace's start) in the timeline; default: all of a trace of up to "
        "2 M slices, else its busiest whole seconds. The tables always hold everything"))] = None,
) -> None:
    """Attribute interrupt costs per CPU and source; predict every what-if policy (modelled); write
    Parquet tables, summary.json, report.html and a Perfetto timeline. A directory of inputs is
    analyzed entry by entry, each into its own folder of OUT; when some fail, the others are
    still analyzed and the exit code is 1. Exit 0 on
    success, 1 when an input cannot be used, 2 on bad usage."""
    from kptrace.export.chart_process import ChartProcess

    # Started first: the report's charts process imports altair on the other core meanwhile.
    with ChartProcess() as charts:
        from kptrace.read.counters import is_counters_bundle
        from kptrace.summary import render_summary
        from kptrace.whatif import POLICIES

        if is_counters_bundle(trace):  # counters only, no trace: rates and busy time (docs/counters.md)
            from kptrace.export.counters import analyze_command
            raise typer.Exit(analyze_command(trace, out, as_json))
        if predicted is not None and predicted not in POLICIES:
            _echo(f"kptrace: error: --whatif must be one of {', '.join(POLICIES)}", err=True)
            raise typer.Exit(2)
        window = _seconds_window(timeline_window) if timeline_window is not None else None
        inputs = _inputs(trace)
        if not inputs:
            _fail(TraceError(trace, "empty directory: no bundle or trace file in it"))
        summaries, failed = {}, []
        for item, target in _output_dirs(inputs, out).items():
            try:
                summaries[str(item)] = _analyze_one(item, target, quiet or as_json, charts, predicted, window)
            except TraceError as error:
                _echo(f"kptrace: error: {error}", err=True)
                failed.append(item)
        if as_json and summaries:
            only = next(iter(summaries.values())) if len(inputs) == 1 else summaries
            _echo(json.dumps(only, indent=2, default=str))
        elif summaries:
            for item, summary in summaries.items():
                if len(inputs) > 1:
                    _echo(f"\n=== {item}")
                _echo(render_summary(summary))
                outputs = summary["outputs"]
                _echo(f"\ntables: {outputs['directory']}/*.parquet, summary: {outputs['summary']}, "
                           f"report: {outputs['report']}, timeline (open in ui.perfetto.dev): {outputs['timeline']}")
        if failed:
            if len(inputs) > 1:
                _echo(f"kptrace: error: {len(failed)} of {len(inputs)} inputs could not be analyzed: "
                           + ", ".join(item.name for item in failed), err=True)
            raise typer.Exit(1)


@app.command()
def fleet(
    inputs: Annotated[list[Path], typer.Argument(help="bundles, trace files, or directories of them (paths the workers can read)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory: OUT/<input>/ per input, OUT/fleet/, fleet.json, fleet.html")],
    scheduler: Annotated[str | None, typer.Option("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, tcp://HOST:PORT (default: a local cluster)")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="local cluster worker processes (default: one per core)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print fleet.json instead of the rankings")] = False,
) -> None:
    """Analyze many inputs in parallel on Dask, each as `analyze` would, and rank hosts, sources and
    policies across them (docs/fleet.md). Exit 1 when some input failed (the others still run)."""
    from kptrace.fleet import main

    _freeze_imports()
    raise typer.Exit(main(inputs, out, scheduler, workers, as_json))


def _policy_params(policy: str, source: str | None, to_cpu: int | None, knobs: dict) -> dict:
    """The parameters a policy takes, from the command line (named like the kernel's knobs)."""
    sources = [name for name in (source or "").split(",") if name]
    if policy in ("move-irqs", "remove"):
        return ({"source": sources} if sources else {}) | ({"to_cpu": to_cpu} if policy == "move-irqs" else {})
    return {k: v for k, v in knobs.items() if v is not None}


@app.command()
def whatif(
    trace: Annotated[Path, typer.Argument(help="bundle or trace file of the unmodified system")],
    policy: Annotated[str, typer.Option("--policy", help="vanilla | move-irqs | remove | coalesce | busy-poll | "
                                        "irq-suspend | kernel-polling | all")] = "all",
    source: Annotated[str | None, typer.Option("--source", help="interrupt source(s), NAME[,NAME] (move-irqs, remove)")] = None,
    to_cpu: Annotated[int | None, typer.Option("--to-cpu", help="move-irqs: the CPU that takes them")] = None,
    defer: Defer = None,
    gro_flush_timeout: GroFlushTimeout = None,
    usecs: BusyPollUsecs = None,
    budget: BusyPollBudget = None,
    prefer: PreferBusyPoll = None,
    timeout: IrqSuspendTimeout = None,
    server: Annotated[str | None, typer.Option("--server", help="thread or process name, tid or pid (default: every epoll server)")] = None,
    replicates: Annotated[int, typer.Option("--replicates", help="bootstrap replicates for the 95% intervals")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the prediction as JSON (docs/whatif.md)")] = False,
    event_cost_ns: Annotated[float | None, typer.Option("--event-cost-ns", help=(
        "what one trace event cost the traced code, ns (collectors/lab/tracepoint-cost measures it): the "
        "prediction takes the trace's own overhead out; default: the bundle's recorded cost, else none"))] = None,
    sample_cost_ns: Annotated[float | None, typer.Option("--sample-cost-ns", help=(
        "what one counter sample (perf record sample group) cost, ns; with --event-cost-ns"))] = None,
) -> None:
    """Predict what an interrupt policy would win, from a trace of the unmodified system (modelled)."""
    from kptrace.analysis import analyze as run_analysis
    from kptrace.whatif import POLICIES, Policy, PolicyError, whatif as predict
    from kptrace.whatif.render import render_whatif

    _freeze_imports()

    if policy != "all" and policy not in POLICIES:
        _echo(f"kptrace: error: --policy must be one of {', '.join(POLICIES)}, all", err=True)
        raise typer.Exit(2)
    knobs = {"defer": defer, "gro_flush_timeout": gro_flush_timeout, "usecs": usecs, "budget": budget,
             "prefer": prefer, "timeout": timeout}
    asked = None if policy == "all" else ([] if policy == "vanilla" else [Policy("vanilla")]) + [
        Policy(policy, _policy_params(policy, source, to_cpu, knobs))]
    started = time.monotonic()
    try:
        analysis = run_analysis(trace)
        _warn(analysis.meta)
        analysed = time.monotonic()
        results = predict(analysis, asked, server=server, replicates=replicates, event_cost_ns=event_cost_ns,
                          sample_cost_ns=sample_cost_ns)
    except (TraceError, PolicyError) as error:
        _fail(error)
    if as_json:
        _echo(json.dumps(results[0] if len(results) == 1 else results, indent=2, default=str))
    else:
        _echo("\n\n".join(render_whatif(result) for result in results))
    _echo(f"kptrace: analysis {analysed - started:.1f} s, replay {time.monotonic() - analysed:.1f} s "
               f"({replicates} bootstrap replicates)", err=True)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("-o", "--out", help="directory for trace.txt and truth.json")],
    fmt: Annotated[str, typer.Option("--format", help="tracefs | trace-cmd | perf")] = "tracefs",
    duration: Annotated[float, typer.Option("--duration", help="seconds of simulated time")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 1,
    policy: Annotated[str | None, typer.Option("--policy", help="add a NIC on every CPU, its queue under vanilla | "
                                               "coalesce | busy-poll | irq-suspend | kernel-polling")] = None,
    defer: Defer = None,
    gro_flush_timeout: GroFlushTimeout = None,
    usecs: BusyPollUsecs = None,
    budget: BusyPollBudget = None,
    prefer: PreferBusyPoll = None,
    timeout: IrqSuspendTimeout = None,
) -> None:
    """Write a synthetic epoll-server trace with known interrupt costs (truth.json) for tests and demos."""
    from kptrace.export.text import FORMATTERS
    from kptrace.simulate import Scenario, scenario_with_nic, write_simulation
    from kptrace.whatif import PolicyError

    _freeze_imports()

    if fmt not in FORMATTERS:
        _echo(f"kptrace: error: --format must be one of {', '.join(FORMATTERS)}", err=True)
        raise typer.Exit(2)
    scenario = Scenario(duration_s=duration, seed=seed)
    if policy is not None:
        knobs = {"defer": defer, "gro_flush_timeout": gro_flush_timeout, "usecs": usecs, "budget": budget,
                 "prefer": prefer, "timeout": timeout}
        try:
            scenario = scenario_with_nic(scenario, policy, {k: v for k, v in knobs.items() if v is not None})
        except PolicyError as error:
            _fail(error)
    path = write_simulation(out, scenario, fmt)
    _echo(f"wrote {path} ({fmt}) and {out / 'truth.json'} (modelled ground truth)")


@app.command()
def estimate(
    inputs: Annotated[list[Path], typer.Argument(help="runs tables (CSV) and/or counters bundles (docs/estimate.md)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the estimate as JSON (docs/estimate.md)")] = False,
    serving_cpus: Annotated[str | None, typer.Option("--serving-cpus", metavar="LIST", help=(
        "CPUs that run the server, e.g. 1 or 0,2-3: overrides a counters-only bundle's manifest"))] = None,
) -> None:
    """Estimate what an interrupt costs and what removing them would win, from counters of several runs."""
    from kptrace.estimate import estimate as run_estimate
    from kptrace.estimate.inputs import parse_cpu_list
    from kptrace.estimate.render import render_estimate

    _freeze_imports()

    try:
        result = run_estimate(inputs, parse_cpu_list(serving_cpus) if serving_cpus else None)
    except TraceError as error:
        _fail(error)
    _echo(json.dumps(result, indent=2) if as_json else render_estimate(result))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def record(ctx: typer.Context) -> None:
    """Record a capture bundle (runs collectors/kptrace-record, a stdlib-only Python script; see
    `kptrace record --help`)."""
    if not COLLECTOR.exists():
        _fail(TraceError(COLLECTOR, "collector script not found (install kptrace from its source tree)"))
    # Click drops the `--` that separates the workload command: hand the collector our own
    # arguments exactly as given.
    arguments = sys.argv[sys.argv.index("record") + 1:] if "record" in sys.argv else ctx.args
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, str(COLLECTOR), *arguments])


def main() -> None:
    """The `kptrace` command: the app, with an incomplete kptrace (SetupError, from any command)
    told in one line rather than a traceback."""
    gc.disable()  # until the command's imports are done (_freeze_imports)
    try:
        app()
    except SetupError as error:
        _echo(f"kptrace: error: {error}", err=True)
        sys.exit(1)
    finally:
        gc.enable()  # a command that stopped before its imports were done


if __name__ == "__main__":
    main()
