"""Tracing overhead: take out of a replay's inputs the time the trace's own events cost.

A traced run is slower than an untraced one: every ftrace event costs the code that emits it
time, and every counter sample (perf record's sample groups) more. Interrupt handlers emit few
events for their length and a request many, so a traced run understates the interrupts' share
of the time, and a policy that takes interrupts away is predicted to win too little.

The correction subtracts, from each measured time the replay rests on, the events recorded
inside it times their cost: a request's demand loses its task-context events and samples; the
loop work between requests loses the serving thread's events there; an interrupt chain loses
the events inside it. Costs are per event and per sample, measured on the machine
(collectors/lab/tracepoint-cost, or the bundle's manifest `tracing_cost`); without a measured
cost nothing is corrected and the prediction says so, with the events per request it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from kptrace.analysis import Analysis
from kptrace.whatif.replay import CoreInput

#: A corrected time keeps at least this share of its measured length: event counts that exceed a
#: time's length mean the cost per event is wrong for it, not that the work was free.
FLOOR = 0.5


@dataclass(frozen=True)
class TracingCost:
    """What one recorded item costs the code that emits it (ns), and where the figures come from."""

    event_ns: float
    sample_ns: float
    source: str


def tracing_cost(meta: dict, event_ns: float | None = None, sample_ns: float | None = None) -> TracingCost | None:
    """The cost to correct with: given explicitly (CLI), else the bundle manifest's `tracing_cost`
    (measured at record time), else None."""
    if event_ns is not None:
        return TracingCost(float(event_ns), float(sample_ns or 0.0), "given (--event-cost-ns / --sample-cost-ns)")
    recorded = (meta.get("bundle") or {}).get("tracing_cost")
    if recorded and recorded.get("event_ns") is not None:
        return TracingCost(float(recorded["event_ns"]), float(recorded.get("sample_ns") or 0.0),
                           f"measured at record time ({recorded.get('method', 'manifest tracing_cost')})")
    return None


@dataclass(frozen=True)
class CoreLoad:
    """Per serving core, what the trace recorded inside each replayed time (counts)."""

    cpu: int
    request_events: np.ndarray   # ftrace events in each request's window, outside arrivals' chains
    request_samples: np.ndarray  # counter samples there
    loop_events: np.ndarray      # events of the loop work before each request (not idle, outside chains)
    loop_samples: np.ndarray
    chain_events: np.ndarray     # events inside each arrival's chain, in the core's arrival order


def _count(ts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the sorted timestamps `ts` fall in each [lo, hi)."""
    return np.searchsorted(ts, hi, "left") - np.searchsorted(ts, lo, "left")


def _at_or_before(edges: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per sorted timestamp, how many of `edges` are at or before it: np.searchsorted(sorted
    edges, ts, "right"), but searching the edges (requests, chains) in the timestamps (events,
    many more) and counting up, which costs less."""
    return np.cumsum(np.bincount(np.searchsorted(ts, edges, "left"), minlength=len(ts) + 1)[:len(ts)])


def _per_window(ts: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """How many of the sorted timestamps `ts` each [begin, end) window holds, an event counting
    only for the innermost window around it: a request switched out for another serving thread's
    request holds that one's window, whose events are the other's."""
    if len(begin) == 0:
        return np.zeros(0, np.int64)
    if np.all(end[:-1] <= begin[1:]):  # none switched out for another: a search per window, not per event
        return _count(ts, begin, end)
    k = _at_or_before(begin, ts) - 1
    latest = np.maximum(k, 0)
    owner = np.where((k >= 0) & (end[latest] > ts), k, -1)
    reach = np.maximum.accumulate(end)
    # Rare: the latest window to start has ended, an earlier one still holds the event.
    for i in np.flatnonzero((owner < 0) & (k >= 0) & (reach[latest] > ts)):
        j = k[i] - 1
        while end[j] <= ts[i]:
            j -= 1
        owner[i] = j
    return np.bincount(owner[owner >= 0], minlength=len(begin))


def _outside(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mask of the sorted timestamps `ts` outside every [start, end] span (spans sorted, disjoint)."""
    if len(starts) == 0:
        return np.ones(len(ts), bool)
    k = _at_or_before(starts, ts) - 1
    return ~((k >= 0) & (ts <= ends[np.maximum(k, 0)]))


#: A core's events are counted this many at a time (about, in slices of its time): the core's
#: events of a 64 M-event trace (41 M) held at once cost 2 GB; the counts add up over slices.
SLICE_EVENTS = 1_000_000


def _time_slices(events: pl.LazyFrame, cpu: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of time that split a core's events into parts of about SLICE_EVENTS
    (evenly in time: one streamed pass reads the count and the span)."""
    n, lo, hi = (events.filter(pl.col("cpu") == cpu).select(pl.len(), lo=pl.col("ts").min(), hi=pl.col("ts").max())
                 .collect(engine="streaming").row(0))
    if not n:
        return []
    parts = -(-n // SLICE_EVENTS)
    edges = [lo + (hi + 1 - lo) * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _core_counts(events: pl.LazyFrame, core: CoreInput, begin: np.ndarray, end: np.ndarray) -> CoreLoad:
    """One core's counts (core_loads), read a time slice of its events at a time: every count is
    a sum over events, and a counter sample's rows share one timestamp, so one slice."""
    arrival_ts = core.arrivals.ts
    arrival_end = arrival_ts + core.arrivals.span_ns
    reach = np.maximum.accumulate(arrival_end) if len(arrival_end) else arrival_end
    gap_lo = np.minimum(np.concatenate([[core.start_ns], np.maximum.accumulate(end)[:-1]]), begin)
    counts = [np.zeros(len(begin), np.int64) for _ in range(4)] + [np.zeros(len(arrival_ts), np.int64)]
    for lo, hi in _time_slices(events, core.cpu):
        here = (events.filter((pl.col("cpu") == core.cpu) & pl.col("ts").is_between(lo, hi, closed="left"))
                .select("ts", counter=pl.col("subsystem") == "counter", idle=(pl.col("tid") == 0).fill_null(False))
                .collect())
        # (the counts below do not depend on the order of rows that share a timestamp)
        here = here if here["ts"].is_sorted() else here.sort("ts")
        ts, counter, idle = here["ts"].to_numpy(), here["counter"].to_numpy(), here["idle"].to_numpy()
        free = _outside(ts, arrival_ts, reach)
        traced = ts[free & ~counter]
        # One counter sample writes one row per counter of its group, all at one timestamp.
        samples = np.unique(ts[free & counter])
        loop, loop_samples = ts[free & ~counter & ~idle], np.unique(ts[free & counter & ~idle])
        for total, part in zip(counts, (
                _per_window(traced, begin, end), _per_window(samples, begin, end), _count(loop, gap_lo, begin),
                _count(loop_samples, gap_lo, begin), _count(ts[~counter], arrival_ts, arrival_end + 1))):
            total += part
    return CoreLoad(core.cpu, *counts)


def core_loads(analysis: Analysis, tids: list[int], cores: list[CoreInput]) -> list[CoreLoad]:
    """Counts per replayed time of each core (order as kptrace.whatif.predict.core_inputs). An
    event inside an arrival's chain belongs to that arrival; every other one to the request or
    the loop work whose window holds it (softirqs a request raised itself are part of its time)."""
    if analysis.events is None:   # an analysis of intervals alone: nothing to count
        return []
    requests = (analysis.requests.lazy().filter(pl.col("tid").is_in(tids)).select("cpu", "ts", "dur", "request_id")
                .sort("cpu", "ts", "request_id").collect())
    loads = []
    for core in cores:
        mine = requests.filter(pl.col("cpu") == core.cpu)
        begin, end = mine["ts"].to_numpy(), (mine["ts"] + mine["dur"]).to_numpy()
        loads.append(_core_counts(analysis.events.lazy(), core, begin, end))
    return loads


def _less(times: np.ndarray, cost: np.ndarray) -> np.ndarray:
    return np.maximum(times - np.round(cost).astype(np.int64), np.round(times * FLOOR).astype(np.int64))


def untraced(cores: list[CoreInput], loads: list[CoreLoad], cost: TracingCost) -> list[CoreInput]:
    """The replay inputs with the recorded items' cost taken out (module docstring); as they
    are when there was nothing to count."""
    if not loads:
        return cores
    out = []
    for core, load in zip(cores, loads):
        loop = load.loop_events * cost.event_ns + load.loop_samples * cost.sample_ns
        work = core.pre_ns + core.post_ns
        share = np.where(work > 0, core.pre_ns / np.maximum(work, 1), 1.0)
        span = core.arrivals.span_ns
        traced_share = load.chain_events * cost.event_ns / np.where(span != 0, span, 1)
        keep = np.where(span != 0, np.maximum(FLOOR, 1 - traced_share), 1.0)
        chains = core.arrivals.with_costs(np.round(core.arrivals.handler_ns * keep).astype(np.int64),
                                          np.round(core.arrivals.softirq_ns * keep).astype(np.int64))
        out.append(replace(
            core,
            demand_ns=_less(core.demand_ns, load.request_events * cost.event_ns + load.request_samples * cost.sample_ns),
            pre_ns=_less(core.pre_ns, loop * share), post_ns=_less(core.post_ns, loop * (1 - share)),
            arrivals=chains,
        ))
    return out


def summary(cores: list[CoreInput], loads: list[CoreLoad], cost: TracingCost | None,
            corrected: list[CoreInput]) -> dict:
    """What the correction rests on and what it took out, per request (the JSON's `tracing`)."""
    if not loads:
        return {"corrected": False, "events_per_request": None, "samples_per_request": None,
                "note": "not corrected for tracing overhead: the analysis has no event table to count events in"}
    n = sum(len(core.demand_ns) for core in cores)
    events = sum(int(l.request_events.sum() + l.loop_events.sum() + l.chain_events.sum()) for l in loads)
    samples = sum(int(l.request_samples.sum() + l.loop_samples.sum()) for l in loads)
    entry = {"events_per_request": events / n if n else None, "samples_per_request": samples / n if n else None,
             "corrected": cost is not None}
    if cost is None:
        entry["note"] = ("not corrected for tracing overhead: no measured cost per event (pass --event-cost-ns and "
                         "--sample-cost-ns, measured with collectors/lab/tracepoint-cost); the traced run is slower "
                         "than an untraced one, so gains from taking interrupts away are understated")
        return entry
    taken = sum(int((c.demand_ns - u.demand_ns).sum() + (c.pre_ns - u.pre_ns).sum() + (c.post_ns - u.post_ns).sum())
                + int((c.arrivals.span_ns - u.arrivals.span_ns).sum())
                for c, u in zip(cores, corrected))
    entry.update(event_ns=cost.event_ns, sample_ns=cost.sample_ns, source=cost.source,
                 removed_us_per_request=taken / n / 1e3 if n else None)
    return entry
