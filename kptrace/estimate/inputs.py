"""Runs tables and counters-only bundles, read into one frame: one row per run or window.

Columns of the frame (docs/estimate.md): run, group, seconds, cores, requests, busy_s, cycles,
instructions, irqs, and irqs.SOURCE per source where known. Counts refer to the run's window and
are summed over the serving cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kptrace.counters import cpu_busy, irq_rates
from kptrace.errors import TraceError
from kptrace.read.counters import interval_deltas, is_counters_bundle, read_counters_bundle

REQUIRED = ("run", "group", "seconds", "cores", "requests", "irqs")
COST_COLUMNS = ("busy_s", "cycles")
NUMERIC = ("seconds", "cores", "requests", "busy_s", "cycles", "instructions", "irqs")
#: A counters-only bundle's 100 ms samples are summed into windows this long (docs/estimate.md).
WINDOW_S = 1.0


def read_inputs(paths: list[Path], serving_cpus: list[int] | None = None) -> tuple[pl.DataFrame, list[str]]:
    """All inputs as one runs frame, and the warnings their reading raised (what a bundle lacks).
    `serving_cpus` overrides the serving CPUs a counters-only bundle's manifest names."""
    frames, warnings = [], []
    for path in paths:
        if is_counters_bundle(path):
            frame, missing = read_counters_windows(path, serving_cpus)
            warnings += [f"{path}: {text}" for text in missing]
        elif path.is_dir():
            frame, missing = read_bundle(path)
            warnings += [f"{path}: {text}" for text in missing]
        else:
            frame = read_runs_table(path)
        frames.append(frame)
    runs = pl.concat(frames, how="diagonal_relaxed")
    return runs, warnings


def read_runs_table(path: Path) -> pl.DataFrame:
    """A runs-table CSV, checked: the required columns, a cost column, numbers where numbers go."""
    try:
        table = pl.read_csv(path, infer_schema_length=None)
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as error:
        raise TraceError(path, f"not a CSV runs table ({str(error).splitlines()[0]})") from None
    return _checked(table, path)


def _checked(table: pl.DataFrame, path: Path) -> pl.DataFrame:
    missing = [name for name in REQUIRED if name not in table.columns]
    if missing:
        raise TraceError(path, f"runs table lacks column(s) {', '.join(missing)} "
                               f"(needs {', '.join(REQUIRED)} and busy_s or cycles; docs/estimate.md)")
    if not any(name in table.columns for name in COST_COLUMNS):
        raise TraceError(path, "runs table has neither busy_s nor cycles: nothing to measure cost by")
    numeric = [name for name in table.columns if name in NUMERIC or name.startswith("irqs.")]
    for name in numeric:
        if not table[name].dtype.is_numeric() and table[name].null_count() < table.height:
            raise TraceError(path, f"column {name} holds non-numbers (e.g. {table[name].drop_nulls()[0]!r})")
    table = table.with_columns(pl.col(numeric).cast(pl.Float64), pl.col("run", "group").cast(pl.String))
    bad = table.filter(pl.any_horizontal(pl.col("seconds", "cores", "requests") <= 0))
    if bad.height:
        raise TraceError(path, f"run {bad['run'][0]}: seconds, cores and requests must be positive")
    return table


def read_bundle(bundle: Path) -> tuple[pl.DataFrame, list[str]]:
    """One run from a kptrace-record bundle: its window, the serving cores' IRQs and counters.

    The request count and the serving core come from the lab harness's workload.json; IRQs from
    the /proc/interrupts snapshots; cycles and instructions from perf-stat.csv where it has them.
    Busy time is the server's own CPU time (the bundle has no per-CPU idle counter), said in a warning.
    """
    manifest = _json(bundle / "manifest.json", bundle)
    workload = _json(bundle / "workload.json", bundle, "workload.json (the request count: give a runs table instead)")
    server = workload.get("server") or {}
    ops = (workload.get("load_generator") or {}).get("ops")
    if server.get("cpu") is None or not ops:
        raise TraceError(bundle, "workload.json names no server CPU or request count")
    cpu = int(server["cpu"])
    row = {"run": bundle.name, "group": bundle.parent.name or "bundles", "cores": 1.0,
           "seconds": float((workload.get("load_generator") or {}).get("run_time_s") or manifest["duration_s"]),
           "requests": float(ops), "busy_s": server.get("cpu_time_s")}
    missing = ["busy time: the server process's CPU time stands in for its core's (IRQ time charged "
               "elsewhere is not in it)"]
    row |= _irq_deltas(bundle / "machine", cpu)
    counters = _perf_stat_totals(bundle / "perf-stat.csv", cpu)
    row |= counters
    if "cycles" not in counters:
        missing.append("cycles and instructions: perf-stat.csv has none (no PMU), so no IPC/IPQ")
    return pl.DataFrame([row]).with_columns(pl.col("busy_s").cast(pl.Float64)), missing


def _json(path: Path, bundle: Path, what: str | None = None) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(bundle, f"not a counters bundle: no {what or path.name}") from None
    except json.JSONDecodeError as error:
        raise TraceError(path, f"not JSON ({error})") from None


def _interrupts(path: Path, cpu: int) -> dict[str, float]:
    """Device-IRQ counts on one CPU from a /proc/interrupts snapshot, named by the line's last word.

    Only numbered lines are devices; LOC, RES, CAL and the like are the CPU's own interrupts."""
    lines = path.read_text().splitlines()
    ncpus = len(lines[0].split())
    counts = {}
    for line in lines[1:]:
        label, _, rest = line.partition(":")
        fields = rest.split()
        if label.strip().isdigit() and len(fields) > max(cpu, ncpus) and fields[cpu].isdigit():
            counts[fields[-1]] = float(fields[cpu])
    return counts


def _irq_deltas(machine: Path, cpu: int) -> dict[str, float]:
    before, after = machine / "interrupts-before.txt", machine / "interrupts-after.txt"
    if not (before.exists() and after.exists()):
        raise TraceError(machine, "no /proc/interrupts snapshots (interrupts-before/after.txt): no IRQ count")
    old, new = _interrupts(before, cpu), _interrupts(after, cpu)
    device = {f"irqs.{name}": new[name] - old.get(name, 0.0) for name in new
              if new[name] > old.get(name, 0.0)}
    return device | {"irqs": sum(device.values())}


def _perf_stat_totals(path: Path, cpu: int) -> dict[str, float]:
    """cycles and instructions of the serving CPU summed over perf stat's 100 ms intervals."""
    if not path.exists():
        return {}
    fields = [line.split(",") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    stat = pl.DataFrame([f[1:5:3] + [f[2]] for f in fields if len(f) > 4],
                        schema=["cpu", "event", "count"], orient="row")
    totals = (stat.filter(pl.col("cpu") == f"CPU{cpu}", pl.col("event").is_in(["cycles", "instructions"]))
              .group_by("event").agg(pl.col("count").cast(pl.Float64, strict=False).sum()))
    return dict(totals.iter_rows())


def parse_cpu_list(text: str) -> list[int]:
    """`1,3-5` -> [1, 3, 4, 5] (the kernel's cpulist format); anything else is a one-line error."""
    cpus: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, _, high = part.partition("-")
            cpus += range(int(low), int(high or low) + 1)
    except ValueError:
        raise TraceError("--serving-cpus", f"expected a CPU list like 1 or 0,2-3, got {text!r}") from None
    if not cpus:
        raise TraceError("--serving-cpus", "empty CPU list")
    return sorted(set(cpus))


def read_counters_windows(bundle: Path, serving_cpus: list[int] | None = None) -> tuple[pl.DataFrame, list[str]]:
    """A counters-only bundle as runs: one per WINDOW_S window of its samples.

    Why windows and not the whole bundle as one run: the fit needs several runs whose IRQs per
    request differ, and a long run's IRQ rate wanders; why not the 100 ms samples themselves:
    /proc/stat counts busy time in 10 ms ticks, so a 100 ms window's busy time is only good to
    +-10%, a 1 s window's to +-1%. A window counts only if every interval in it has busy time,
    IRQs and requests for every serving CPU (a partial last window, a reset counter or a failed
    request command drop it, with a warning). Busy time and IRQs (device IRQs: numbered lines of
    /proc/interrupts) are summed over the serving CPUs; cycles and instructions too, where perf
    counted them."""
    data = read_counters_bundle(bundle)
    options = data.manifest.get("counters_only") or {}
    serving = serving_cpus or options.get("serving_cpus")
    if not serving:
        raise TraceError(bundle, "no serving CPUs (the CPUs that run the server): the manifest names none; "
                                 "give them with `kptrace estimate --serving-cpus LIST`")
    if data.requests is None:
        raise TraceError(bundle, "no request count (recorded without --requests-cmd): nothing to divide the "
                                 "cost by, so no estimate")
    known = set(data.stat["cpu"].unique().to_list())
    if not set(serving) <= known:
        raise TraceError(bundle, f"serving CPU(s) {sorted(set(serving) - known)} are not in the bundle "
                                 f"(it has {sorted(known)})")
    warnings = list(data.warnings)
    intervals = _serving_intervals(data, serving, warnings)
    window_ns = int(WINDOW_S * 1e9)
    windows = (intervals.with_columns(window=(pl.col("t1_ns") - pl.col("t0_ns").min()) // window_ns)
               .group_by("window").agg(pl.col("complete").all(), pl.col("t0_ns").min(), pl.col("t1_ns").max(),
                                       pl.col("seconds", "busy_s", "requests", "irqs").sum(),
                                       pl.col("^irqs\\..*$").sum())
               .sort("window"))
    # a window counts when it spans (nearly) WINDOW_S: the collector skips late ticks, so the
    # number of samples in a window varies, its measured length does not
    usable = windows.filter(pl.col("complete"), pl.col("t1_ns") - pl.col("t0_ns") >= 0.9 * window_ns,
                            pl.col("requests") > 0)
    if usable.height < windows.height:
        warnings.append(f"{windows.height - usable.height} of {windows.height} windows of {WINDOW_S:g} s left out "
                        "(partial, or an interval without busy time, IRQs or a request count)")
    runs = usable.select(run=pl.format(f"{bundle.name}#{{}}", "window"), group=pl.lit(bundle.parent.name or "bundles"),
                         seconds=pl.col("seconds") / len(serving), cores=pl.lit(float(len(serving))),
                         requests="requests", busy_s="busy_s", irqs="irqs",
                         t0_ns="t0_ns", t1_ns="t1_ns", *[pl.col(c) for c in usable.columns if c.startswith("irqs.")])
    runs = runs.with_columns(pl.exclude("run", "group", "t0_ns", "t1_ns").cast(pl.Float64))
    counters = _perf_totals(data.perf_stat, runs, serving)
    if counters is None:
        warnings.append("no cycles or instructions (perf counted none on the serving CPUs): cost in busy time, "
                        "no IPC/IPQ")
        return runs.drop("t0_ns", "t1_ns"), warnings
    return runs.join(counters, on="run", how="left").drop("t0_ns", "t1_ns"), warnings


def _serving_intervals(data, serving: list[int], warnings: list[str]) -> pl.DataFrame:
    """Per sample interval: busy seconds, device IRQs (total and per source) and requests, summed
    over the serving CPUs; `complete` when each serving CPU had every count."""
    busy = (cpu_busy(data.stat, warnings).filter(pl.col("cpu").is_in(serving))
            .group_by("t1_ns").agg(pl.col("busy_s", "seconds").sum(), pl.len().alias("busy_cpus")))
    stat_samples = data.stat.select("sample", "t_ns").unique().rename({"t_ns": "t1_ns"})
    busy = busy.join(stat_samples, on="t1_ns").drop("t1_ns")
    irqs = (irq_rates(data.interrupts, []).filter(pl.col("kind") == "device", pl.col("cpu").is_in(serving)))
    irq_samples = data.interrupts.select("sample", "t_ns").unique().rename({"t_ns": "t1_ns"})
    irqs = irqs.join(irq_samples, on="t1_ns")
    irq_total = irqs.group_by("sample").agg(irqs=pl.col("count").sum(), irqs_complete=pl.col("count").is_not_null().all())
    by_source = (irqs.group_by("sample", "source").agg(pl.col("count").sum())
                 .pivot(on="source", index="sample", values="count"))
    by_source = by_source.rename({c: f"irqs.{c}" for c in by_source.columns if c != "sample"})
    requests = interval_deltas(data.requests, (), "requests.txt", warnings).select(
        "sample", "t0_ns", "t1_ns", requests="delta")
    return (requests.join(busy, on="sample", how="left").join(irq_total, on="sample", how="left")
            .join(by_source, on="sample", how="left")
            .with_columns(complete=(pl.col("busy_cpus") == len(serving)).fill_null(False)
                          & pl.col("irqs_complete").fill_null(False) & pl.col("requests").is_not_null()))


def _perf_totals(perf: pl.DataFrame | None, runs: pl.DataFrame, serving: list[int]) -> pl.DataFrame | None:
    """cycles and instructions of the serving CPUs per window (perf's intervals ending inside it)."""
    if perf is None or runs.is_empty():
        return None
    counted = perf.filter(pl.col("cpu").is_in(serving), pl.col("event").is_in(["cycles", "instructions"]),
                          pl.col("value").is_not_null())
    if counted.is_empty():
        return None
    windows = runs.select("run", "t0_ns", "t1_ns").sort("t0_ns")
    placed = (counted.sort("t_ns").join_asof(windows, left_on="t_ns", right_on="t0_ns")
              .filter(pl.col("t_ns") <= pl.col("t1_ns")))
    return placed.pivot(on="event", index="run", values="value", aggregate_function="sum")
