"""Figures per policy for one server: replays of its cores, with bootstrap intervals, against the
vanilla replay (ratios) and the measured trace (calibration).

Intervals: each bootstrap replicate resamples, per core, the requests' demands (in blocks of
consecutive requests) and each source's measured interrupt costs (with replacement), and draws
each indirect cost from its estimate's interval; vanilla and every policy replay the same replicate, so ratios carry only the
uncertainty of the difference. 95% intervals are the replicates' 2.5 and 97.5 percentiles (see
_interval).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl

from kptrace.analysis import Analysis
from kptrace.attribute import Z95
from kptrace.intervals import serving_load
from kptrace.whatif.arrivals import Arrivals
from kptrace.whatif.inputs import arrivals, hit_indirect, indirect_per_hit, nic_inputs
from kptrace.whatif.overhead import TracingCost, core_loads, summary, untraced
from kptrace.whatif.policies import Policy, PolicyError, apply
from kptrace.whatif.replay import CoreInput, CoreRun, replay_core
from kptrace.whatif.stream import REQUEST_COLUMNS, core_stream, serving_spans

FIGURES = ("capacity_rps", "throughput_rps", "p50_us", "p99_us", "cpu_util", "irq_per_s")
#: Ratios against vanilla, each with its interval: name -> the figure it compares.
RATIOS = {"capacity_ratio": "capacity_rps", "throughput_ratio": "throughput_rps", "p99_ratio": "p99_us"}
PROVENANCE = ("modelled: a per-core replay of the measured request demands, loop work, idle periods and "
              "interrupt arrivals with their measured direct and estimated indirect costs")


def core_inputs(analysis: Analysis, tids: list[int], nic_sources: set[str] = frozenset()) -> list[CoreInput]:
    """The replay input of each core on which the given threads served requests, with its NIC
    queue where one of `nic_sources` polled a device there (inputs.nic_inputs). Built a core at
    a time and its request stream a slice at a time (kptrace.whatif.stream), from the tables as
    given (scans of a windowed analysis: only what a core needs is read)."""
    requests = analysis.requests.lazy().filter(pl.col("tid").is_in(tids)).select(REQUEST_COLUMNS)
    serving = requests.select(pl.col("tid").unique().sort()).collect()["tid"].to_list()
    cpus = requests.select(pl.col("cpu").unique().sort()).collect()["cpu"].to_list()
    slowdowns = hit_indirect(analysis)
    cores = [_core_input(analysis, requests.filter(pl.col("cpu") == cpu).collect(), cpu, serving, slowdowns)
             for cpu in cpus]
    return nic_inputs(analysis, tids, cores, nic_sources)


#: The stream's columns a replay holds, as arrays.
_STREAM_ARRAYS = ("request_id", "ts", "end", "ready_ts", "pre_ns", "wake_ns", "post_ns", "demand_ns")


def _core_input(analysis: Analysis, requests: pl.DataFrame, cpu: int, serving: list[int],
                slowdowns: pl.DataFrame) -> CoreInput:
    """One core's replay input from its requests: its stream read a slice at a time into arrays."""
    parts = [part.select("request_id", "ts", *_STREAM_ARRAYS[4:], end=pl.col("ts") + pl.col("dur"),
                         ready_ts=pl.col("ready_ts").fill_null(-1))
             for part in core_stream(requests, serving_spans(analysis.intervals, cpu, serving))]
    mine = {name: np.concatenate([part[name].to_numpy() for part in parts]) for name in _STREAM_ARRAYS}
    del parts
    position = pl.DataFrame({"request_id": mine["request_id"], "position": np.arange(len(mine["ts"]))})
    hits = slowdowns.join(position, on="request_id")
    start, end = int(mine["ts"].min()), int(mine["end"].max())
    return CoreInput(
        cpu=cpu, start_ns=start, period_ns=max(end - start, 1), ready_ts=mine["ready_ts"], pre_ns=mine["pre_ns"],
        wake_ns=mine["wake_ns"], post_ns=mine["post_ns"], demand_ns=mine["demand_ns"],
        arrivals=Arrivals.from_frame(arrivals(analysis, [cpu]).filter(pl.col("ts") >= start)),
        hit_indirect={source: _scatter(part, len(position)) for (source,), part in hits.group_by("source")},
    )


def _scatter(hits: pl.DataFrame, n: int) -> np.ndarray:
    """A dense per-request array (position order) from sparse (position, indirect_ns) rows."""
    dense = np.zeros(n, np.int64)
    dense[hits["position"].to_numpy()] = hits["indirect_ns"].to_numpy()
    return dense


def _figures(recorded: list[CoreRun], saturated: list[CoreRun]) -> dict:
    """The figures of one replay of every core of a server."""
    n = sum(len(run.starts) for run in recorded)
    durations = np.concatenate([run.ends - run.starts for run in recorded])
    window = sum(run.window_ns for run in recorded)
    p50, p99 = np.percentile(durations, [50, 99])  # (one partition of the durations for both)
    return {
        "capacity_rps": n / (sum(run.busy_ns for run in recorded) / 1e9),
        "throughput_rps": sum(len(run.starts) / (run.window_ns / 1e9) for run in saturated),
        "recorded_rps": sum(len(run.starts) / (run.window_ns / 1e9) for run in recorded),
        "p50_us": float(p50) / 1e3,
        "p99_us": float(p99) / 1e3,
        "cpu_util": sum(run.busy_ns for run in recorded) / window,
        "irq_per_s": sum(run.interrupts for run in recorded) / (window / len(recorded) / 1e9),
    }


def replay(cores: list[CoreInput]) -> dict:
    return _figures([replay_core(core, False) for core in cores], [replay_core(core, True) for core in cores])


def measured(analysis: Analysis, tids: list[int]) -> dict:
    """The same figures read off the trace, for calibration (measured). Of the intervals and
    chains only the serving cores' are read."""
    requests = analysis.requests.lazy().filter(pl.col("tid").is_in(tids)).select("cpu", "ts", "dur").collect()
    on_cores = pl.col("cpu").is_in(requests["cpu"].unique().implode())
    busy = serving_load(analysis.intervals.lazy().filter(on_cores), analysis.disruptions.lazy().filter(on_cores),
                        requests.lazy()).collect()
    busy = busy.group_by("cpu").agg(pl.col("busy_ns").first())
    window = requests.group_by("cpu").agg(n=pl.len(), w=(pl.col("ts") + pl.col("dur")).max() - pl.col("ts").min())
    return {
        "capacity_rps": requests.height / (busy["busy_ns"].sum() / 1e9),
        "recorded_rps": (window["n"] / (window["w"] / 1e9)).sum(),
        "p50_us": float(requests["dur"].quantile(0.5, "linear")) / 1e3,
        "p99_us": float(requests["dur"].quantile(0.99, "linear")) / 1e3,
        "cpu_util": busy["busy_ns"].sum() / window["w"].sum(),
    }


#: Requests are resampled in blocks of this many consecutive ones: neighbours share cache state
#: and load (a request after an idle period runs colder), which an i.i.d. resample would break.
BLOCK = 256


def _block_resample(n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of a moving-block bootstrap resample of n requests."""
    if n <= BLOCK:
        return rng.integers(0, n, n)
    starts = rng.integers(0, n - BLOCK + 1, -(-n // BLOCK))
    return (starts[:, None] + np.arange(BLOCK)).ravel()[:n]


def _resampled(cores: list[CoreInput], rng: np.random.Generator, indirect: dict) -> list[CoreInput]:
    """One bootstrap replicate of the inputs (module docstring). `indirect` maps (cpu, source) to
    the indirect estimate and its 95% half-width; each source's slowdowns are scaled together by
    one draw from that interval."""
    out = []
    for core in cores:
        rows = _block_resample(len(core.demand_ns), rng)
        arrivals = core.arrivals
        # Sources in the order they first arrive: the order of their draws below.
        codes, first = np.unique(arrivals.code, return_index=True)
        codes = codes[np.argsort(first)]
        scale = {}
        for source in sorted({arrivals.names[c] for c in codes} | core.hit_indirect.keys()):  # one draw order
            estimate, half_width = indirect.get((core.cpu, source), (0.0, 0.0))
            scale[source] = max(0.0, 1 + rng.normal(0, half_width / Z95) / estimate) if estimate > 0 else 1.0
        drawn = np.arange(len(arrivals))   # per arrival, the one of its source whose measured costs it takes
        scales = np.ones(len(arrivals))
        for c in codes:
            mine = np.flatnonzero(arrivals.code == c)
            drawn[mine] = mine[rng.integers(0, len(mine), len(mine))]
            scales[mine] = scale[arrivals.names[c]]
        resampled = arrivals.with_costs(arrivals.handler_ns[drawn], arrivals.softirq_ns[drawn],
                                        np.round(arrivals.indirect_ns * scales).astype(np.int64))
        out.append(replace(core, demand_ns=core.demand_ns[rows], arrivals=resampled,
                           hit_indirect={s: np.round(v[rows] * scale[s]).astype(np.int64)
                                         for s, v in core.hit_indirect.items()}))
    return out


def _replay_each(cores: list[CoreInput], policies: list[Policy], nic_sources: set[str]) -> dict:
    """Figures of vanilla and of each distinct policy input (by Applied.key), each replayed once."""
    figures = {frozenset(): replay(cores)}
    for policy in policies:
        applied = apply(policy, cores, nic_sources)
        if applied.key not in figures:
            figures[applied.key] = replay(applied.cores)
    return figures


def _interval(point: float, replicates: list[float]) -> list[float]:
    """The replicates' 2.5-97.5 percentile interval, widened to hold the replay of the measured
    inputs itself: quantiles in a sparse region of the request-time distribution (p99 between
    the clean tail and the requests an interrupt hit) move with the replay's exact timing, which
    a resample perturbs."""
    lo, hi = np.percentile(replicates, [2.5, 97.5]) if replicates else (point, point)
    return [float(min(lo, point)), float(max(hi, point))]


def applicable(policies: list[Policy], cores: list[CoreInput], nic_sources: set[str]) -> tuple[list, list]:
    """The policies that apply to these cores, and {policy, reason} for those that do not."""
    kept, skipped = [], []
    for policy in policies:
        try:
            apply(policy, cores, nic_sources)
            kept.append(policy)
        except PolicyError as error:
            skipped.append({"policy": policy.name, "params": policy.params, "reason": str(error)})
    return kept, skipped


def predict(analysis: Analysis, tids: list[int], policies: list[Policy], nic_sources: set[str],
            replicates: int = 20, seed: int = 0, strict: bool = True, cost: TracingCost | None = None) -> dict:
    """Per policy: predicted figures with 95% intervals and ratios against vanilla; and the
    calibration of vanilla against the measured trace. A policy that cannot be applied raises
    PolicyError when `strict`, else is listed under `skipped` with the reason. With a tracing
    `cost`, the policies replay the inputs with the trace's own overhead taken out
    (kptrace.whatif.overhead); the calibration always replays them as traced."""
    traced = core_inputs(analysis, tids, nic_sources)
    loads = core_loads(analysis, tids, traced)
    cores = untraced(traced, loads, cost) if cost else traced
    policies, skipped = applicable(policies, cores, nic_sources)
    if strict and skipped:
        raise PolicyError(skipped[0]["reason"])
    applied = {p.name: apply(p, cores, nic_sources) for p in policies}
    point = _replay_each(cores, policies, nic_sources)
    base = point[frozenset()]
    indirect = {(row["cpu"], row["source"]): (row["indirect_ns"], row["indirect_ci_ns"])
                for row in indirect_per_hit(analysis.attribution).iter_rows(named=True)}
    rng = np.random.default_rng(seed)
    drawn = [_replay_each(_resampled(cores, rng, indirect), policies, nic_sources) for _ in range(replicates)]
    samples = {p.name: [d[applied[p.name].key] for d in drawn] for p in policies}
    base_samples = [d[frozenset()] for d in drawn]
    observed = measured(analysis, tids)
    as_traced = replay(traced) if cost else base
    results = []
    for policy in policies:
        figures = point[applied[policy.name].key]
        entry = {"policy": policy.name, "params": policy.params, "predicted": {}, "notes": applied[policy.name].notes}
        for key in FIGURES:
            entry["predicted"][key] = figures[key]
            entry["predicted"][f"{key}_ci"] = _interval(figures[key], [s[key] for s in samples[policy.name]])
        for ratio, key in RATIOS.items():
            entry[ratio] = figures[key] / base[key]
            entry[f"{ratio}_ci"] = _interval(entry[ratio], [
                s[key] / b[key] for s, b in zip(samples[policy.name], base_samples)])
        if moved := applied[policy.name].moved_ns:
            seconds = sum(core.period_ns for core in cores) / len(cores) / 1e9
            entry["moved_load"] = {str(cpu): ns / 1e9 / seconds for cpu, ns in moved.items()}
        results.append(entry)
    return {
        "calibration": {
            "measured": observed, "replayed": {k: as_traced[k] for k in observed},
            "capacity_error": as_traced["capacity_rps"] / observed["capacity_rps"] - 1,
            "throughput_error": as_traced["recorded_rps"] / observed["recorded_rps"] - 1,
            "p50_error": as_traced["p50_us"] / observed["p50_us"] - 1,
            "p99_error": as_traced["p99_us"] / observed["p99_us"] - 1,
        },
        "tracing": summary(traced, loads, cost, cores),
        "policies": results,
        "skipped": skipped,
        "provenance": PROVENANCE,
    }
