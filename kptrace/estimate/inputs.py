"""Runs tables and counters-only bundles, read into one frame: one row per run or window.

Columns of the frame (docs/estimate.md): run, group, seconds, cores, requests, busy_s, cycles,
instructions, irqs, and irqs.SOURCE per source where known. Counts refer to the run's window and
are summed over the serving cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kptrace.errors import TraceError

REQUIRED = ("run", "group", "seconds", "cores", "requests", "irqs")
COST_COLUMNS = ("busy_s", "cycles")
NUMERIC = ("seconds", "cores", "requests", "busy_s", "cycles", "instructions", "irqs")


def read_inputs(paths: list[Path]) -> tuple[pl.DataFrame, list[str]]:
    """All inputs as one runs frame, and the warnings their reading raised (what a bundle lacks)."""
    frames, warnings = [], []
    for path in paths:
        if path.is_dir():
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
