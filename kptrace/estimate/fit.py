"""The counters-only estimate of one group: cost per request against IRQs per request across runs.

Model (docs/estimate.md): a run's cost per request is `a + b * x`, with x its IRQs per request,
b the cost of one IRQ to the serving cores (direct and indirect together) and a the cost of a
request without IRQs. Theil-Sen fits it (the median of pairwise slopes: a few runs with a noisy
neighbour or a long tail do not move it) and a bootstrap over runs gives the 95% intervals.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
from scipy import stats

SATURATED = 0.95          # serving cores at least this busy: the run is at capacity
MIN_RUNS = 5
MIN_SPREAD = 0.2          # (p90 - p10) / median of IRQs per request below this: no slope to fit
REPLICATES = 2000
SEED = 20241129
_PAIRS_PER_BATCH = 4_000_000


def per_run(runs: pl.DataFrame, unit: str) -> pl.DataFrame:
    """Each run's cost per request (in `unit`), IRQs per request, busy fraction, IPC and IPQ."""
    cost = pl.col("cycles") if unit == "cycles" else pl.col("busy_s") * 1e9
    columns = [(cost / pl.col("requests")).alias("cost_per_request"),
               (pl.col("irqs") / pl.col("requests")).alias("irqs_per_request"),
               (pl.col("busy_s") / (pl.col("seconds") * pl.col("cores")) if "busy_s" in runs.columns
                else pl.lit(None, pl.Float64)).alias("busy_fraction"),
               (pl.col("requests") / (pl.col("seconds") * pl.col("cores"))).alias("requests_per_core_s")]
    if {"cycles", "instructions"} <= set(runs.columns):
        columns += [(pl.col("instructions") / pl.col("cycles")).alias("ipc"),
                    (pl.col("instructions") / pl.col("requests")).alias("ipq")]
    return runs.select("run", *columns)


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Theil-Sen slope and intercept of each row of x, y (shape: replicates x runs), vectorised."""
    n = x.shape[1]
    upper = np.triu_indices(n, 1)
    slopes, intercepts = [], []
    batch = max(1, _PAIRS_PER_BATCH // max(1, len(upper[0])))
    for start in range(0, x.shape[0], batch):
        xs, ys = x[start:start + batch], y[start:start + batch]
        dx = xs[:, upper[1]] - xs[:, upper[0]]
        dy = ys[:, upper[1]] - ys[:, upper[0]]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # a resample with one distinct x has no slope
            slope = np.nanmedian(np.where(dx != 0, dy / dx, np.nan), axis=1)
        slopes.append(slope)
        intercepts.append(np.median(ys - slope[:, None] * xs, axis=1))
    return np.concatenate(slopes), np.concatenate(intercepts)


def saturated(rows: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """The runs at capacity (>= 95% busy) or, where none is, the busiest quarter of them."""
    if rows["busy_fraction"].null_count() == 0:
        at_capacity = rows.filter(pl.col("busy_fraction") >= SATURATED)
        if at_capacity.height:
            return at_capacity, f"serving cores >= {SATURATED:.0%} busy"
        by, label = "busy_fraction", f"busiest quarter of the runs (none >= {SATURATED:.0%} busy)"
    else:
        by, label = "requests_per_core_s", "highest request rate quarter of the runs (no busy_s)"
    return rows.sort(by, descending=True, nulls_last=True).head(max(1, rows.height // 4)), label


def _interval(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(finite, [2.5, 97.5])] if finite.size else [None, None]


def _median(values: pl.Series) -> float | None:
    median = values.median()
    return None if median is None else float(median)


def estimate_group(group: str, runs: pl.DataFrame, replicates: int = REPLICATES, seed: int = SEED) -> dict:
    """The issue-12 figures of one group, or nulls with a message saying why the data cannot give them."""
    has_cycles = "cycles" in runs.columns and (runs["cycles"].null_count() == 0 or "busy_s" not in runs.columns)
    unit = "cycles" if has_cycles else "busy_ns"
    rows = per_run(runs, unit)
    result = {"group": group, "runs": rows.height, "unit": unit, "cost_per_irq": None, "cost_per_irq_ci": [None, None],
              "cost_per_request_without_irqs": None, "cost_per_request_without_irqs_ci": [None, None],
              "irq_share": None, "capacity_gain_without_irqs": None, "capacity_gain_without_irqs_ci": [None, None],
              "ipc": None, "ipq": None, "ipc_part_of_gain": None, "messages": [], "saturated_runs": 0,
              "saturated_by": None, "irqs_per_request_saturated": None, "cost_per_request_saturated": None,
              "per_run": rows.to_dicts()}
    complete = rows.filter(pl.col("irqs_per_request").is_finite(), pl.col("cost_per_request").is_finite())
    if complete.height < rows.height:
        result["messages"].append(f"{rows.height - complete.height} run(s) lack IRQs or cost: left out of the fit")
    if complete.height == 0:
        return result
    top, chosen = saturated(complete)
    x_sat = float(top["irqs_per_request"].median())
    result |= {"saturated_runs": top.height, "saturated_by": chosen, "irqs_per_request_saturated": x_sat,
               "cost_per_request_saturated": float(top["cost_per_request"].median())}
    if "ipc" in rows.columns:
        result |= {"ipc": _median(top["ipc"]), "ipq": _median(top["ipq"])}
    x, y = complete["irqs_per_request"].to_numpy(), complete["cost_per_request"].to_numpy()
    problem = _unsupported(x, y)
    if problem:
        result["messages"].append(problem)
        return result
    fit = _fit(x, y, x_sat, replicates, seed)
    result |= fit
    result["messages"] += _doubts(x, y, fit, complete["busy_fraction"].to_numpy())
    if "ipc" in complete.columns and complete["ipq"].is_finite().all():
        result["ipc_part_of_gain"] = _ipc_part(x, complete["ipq"].to_numpy(), x_sat, fit["capacity_gain_without_irqs"])
    return result


def _unsupported(x: np.ndarray, y: np.ndarray) -> str | None:
    if len(x) < MIN_RUNS:
        return f"too few runs ({len(x)} < {MIN_RUNS}): no estimate"
    low, median, high = np.percentile(x, [10, 50, 90])
    if median <= 0 or (high - low) / median < MIN_SPREAD:
        return (f"too little spread in IRQs per request (p10 {low:.3g}, p90 {high:.3g}): the runs do not "
                "vary the interrupt load enough to fit a cost per IRQ; add runs at other IRQ rates")
    return None


def _fit(x: np.ndarray, y: np.ndarray, x_sat: float, replicates: int, seed: int) -> dict:
    """Point fit on all runs, intervals from refits on runs drawn with replacement (seeded)."""
    slope, intercept = (float(v[0]) for v in theil_sen(x[None, :], y[None, :]))
    draws = np.random.default_rng(seed).integers(0, len(x), size=(replicates, len(x)))
    slopes, intercepts = theil_sen(x[draws], y[draws])
    with np.errstate(invalid="ignore", divide="ignore"):
        gains = np.where(intercepts > 0, slopes * x_sat / intercepts, np.nan)
    return {"cost_per_irq": slope, "cost_per_irq_ci": _interval(slopes),
            "cost_per_request_without_irqs": intercept, "cost_per_request_without_irqs_ci": _interval(intercepts),
            "irq_share": slope * x_sat / (intercept + slope * x_sat),
            "capacity_gain_without_irqs": slope * x_sat / intercept if intercept > 0 else None,
            "capacity_gain_without_irqs_ci": _interval(gains)}


def _doubts(x: np.ndarray, y: np.ndarray, fit: dict, busy: np.ndarray) -> list[str]:
    """What makes the figures doubtful though they could be computed."""
    doubts = []
    rho_load = stats.spearmanr(x, busy)[0] if np.all(np.isfinite(busy)) and np.ptp(busy) > 0.05 else 0.0
    if abs(rho_load) >= 0.8:
        doubts.append(f"IRQs per request move with the load (Spearman rho {rho_load:.2f} against busy share): "
                      "what else changes with load (batching, polling while idle) is taken for IRQ cost; "
                      "vary the IRQ rate at a fixed load to separate them")
    rho, p_value = stats.spearmanr(x, y)
    if not p_value < 0.05:
        doubts.append(f"bad fit: cost per request hardly follows IRQs per request (Spearman rho {rho:.2f}, "
                      f"p {p_value:.2g}); the figures are weak")
    low, _ = fit["cost_per_irq_ci"]
    if low is not None and low <= 0:
        doubts.append("the cost per IRQ's interval includes zero: the runs cannot tell it from no cost")
    gain = fit["capacity_gain_without_irqs"]
    if gain is not None and gain > 1:
        doubts.append(f"a gain of {gain:+.0%} is not credible: the fit puts nearly all cost on IRQs, so something "
                      "else (polling, batching) must change with the IRQ rate")
    if fit["cost_per_request_without_irqs"] <= 0:
        doubts.append("cost per request without IRQs fitted <= 0: extrapolation to zero IRQs fails (something "
                      "else changes with the IRQ rate)")
    return doubts


def _ipc_part(x: np.ndarray, ipq: np.ndarray, x_sat: float, gain: float | None) -> float | None:
    """The share of the predicted gain (in log terms) that comes from IPC rather than fewer instructions.

    Capacity is cores x clock x IPC / IPQ: the gain factor is the IPC factor over the IPQ factor; the
    IPQ factor comes from the same fit applied to instructions per request."""
    if gain is None or gain <= 0:
        return None
    slope, intercept = (float(v[0]) for v in theil_sen(x[None, :], ipq[None, :]))
    if intercept <= 0:
        return None
    ipq_factor = (intercept + slope * x_sat) / intercept
    return float(1 - np.log(ipq_factor) / np.log1p(gain))
