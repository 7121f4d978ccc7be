"""Tracing overhead (kptrace.whatif.overhead): what the trace's own events cost is counted where
it fell and taken out of the replay's inputs, and the prediction says whether it was."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.simulate import analyzed_seed
from kptrace.whatif import Policy, servers, whatif
from kptrace.whatif import overhead
from kptrace.whatif.overhead import TracingCost, core_loads, tracing_cost, untraced
from kptrace.whatif.predict import core_inputs
from kptrace.whatif.render import render_whatif


@pytest.fixture(scope="module")
def simulated():
    analysis, _ = analyzed_seed(3, "tracefs", duration_s=0.15)
    tids = [tid for server in servers(analysis) for tid in server["tids"]]
    cores = core_inputs(analysis, tids)
    return analysis, tids, cores, core_loads(analysis, tids, cores)


def test_every_event_on_a_serving_core_is_counted_once(simulated):
    """Each event between the first request and the last lies in exactly one place: a request, the
    loop work before one, an arrival's chain, or time the idle task held (not counted)."""
    analysis, tids, cores, loads = simulated
    for core, load in zip(cores, loads):
        mine = analysis.requests.filter(pl.col("tid").is_in(tids) & (pl.col("cpu") == core.cpu))
        end = int((mine["ts"] + mine["dur"]).max())
        events = (analysis.events.lazy().filter((pl.col("cpu") == core.cpu)
                                                & pl.col("ts").is_between(core.start_ns, end - 1)
                                                & (pl.col("subsystem") != "counter")).collect())
        chains = pl.DataFrame({"ts": [a.ts for a in core.arrivals],
                               "end": [a.ts + a.handler_ns + a.softirq_ns for a in core.arrivals]})
        in_chain = events.join_where(chains, pl.col("ts") >= pl.col("ts_right"), pl.col("ts") <= pl.col("end"))
        in_chain_ids = in_chain.select("ts").unique().height
        outside = events.filter(~pl.col("ts").is_in(in_chain["ts"].implode()))
        idle_outside_requests = outside.filter(pl.col("tid") == 0).join_where(
            mine.select(r_ts="ts", r_end=pl.col("ts") + pl.col("dur")),
            pl.col("ts") >= pl.col("r_ts"), pl.col("ts") < pl.col("r_end")).height
        idle = outside.filter(pl.col("tid") == 0).height - idle_outside_requests
        counted = int(load.request_events.sum() + load.loop_events.sum())
        assert counted + idle == outside.height, core.cpu
        # Chains may nest (an IRQ inside a softirq); an event counts once per chain window holding it.
        assert load.chain_events.sum() >= in_chain_ids


def test_counting_a_core_in_many_time_slices_gives_the_counts_of_one_pass(simulated, monkeypatch):
    analysis, tids, cores, loads = simulated
    monkeypatch.setattr(overhead, "SLICE_EVENTS", 97)  # hundreds of slices, edges anywhere
    for sliced, whole in zip(core_loads(analysis, tids, cores), loads, strict=True):
        for field in ("request_events", "request_samples", "loop_events", "loop_samples", "chain_events"):
            assert np.array_equal(getattr(sliced, field), getattr(whole, field)), field
    assert len(overhead._time_slices(analysis.events.lazy(), cores[0].cpu)) > 10
    assert all(load.request_events.sum() and load.chain_events.sum() for load in loads)


def test_zero_cost_leaves_the_inputs_as_traced(simulated):
    _, _, cores, loads = simulated
    for before, after in zip(cores, untraced(cores, loads, TracingCost(0.0, 0.0, "test"))):
        assert np.array_equal(before.demand_ns, after.demand_ns)
        assert np.array_equal(before.pre_ns + before.post_ns, after.pre_ns + after.post_ns)
        assert before.arrivals == after.arrivals


def test_each_request_loses_its_events_cost(simulated):
    _, _, cores, loads = simulated
    cost = TracingCost(50.0, 0.0, "test")
    for before, after, load in zip(cores, untraced(cores, loads, cost), loads):
        expected = np.maximum(before.demand_ns - load.request_events * 50, np.round(before.demand_ns * 0.5))
        assert np.array_equal(after.demand_ns, expected)
        assert (load.request_events > 0).mean() > 0.9   # a request records its own syscalls


def test_an_absurd_cost_never_takes_a_time_below_half(simulated):
    _, _, cores, loads = simulated
    for before, after in zip(cores, untraced(cores, loads, TracingCost(1e9, 1e9, "test"))):
        assert (after.demand_ns >= before.demand_ns // 2).all()
        assert all(a.handler_ns >= b.handler_ns // 2 for a, b in zip(after.arrivals, before.arrivals))


def test_prediction_says_whether_and_how_it_corrected(simulated):
    analysis = simulated[0]
    asked = [Policy("vanilla"), Policy("remove", {"source": ["sim-disk"]})]
    (plain,) = whatif(analysis, asked, replicates=0)
    assert plain["tracing"]["corrected"] is False
    assert "not corrected" in plain["tracing"]["note"] and plain["tracing"]["events_per_request"] > 1
    (fixed,) = whatif(analysis, asked, replicates=0, event_cost_ns=200, sample_cost_ns=1000)
    assert fixed["tracing"]["corrected"] and fixed["tracing"]["removed_us_per_request"] > 0
    # Untraced, the same requests need less time: the vanilla replay's capacity rises; the
    # calibration still compares the trace with its own replay.
    assert fixed["policies"][0]["predicted"]["capacity_rps"] > plain["policies"][0]["predicted"]["capacity_rps"]
    assert fixed["calibration"] == plain["calibration"]
    assert "tracing overhead: not corrected" in render_whatif(plain)
    assert "tracing overhead: corrected" in render_whatif(fixed) and "200 ns per event" in render_whatif(fixed)


def test_a_cost_recorded_in_the_bundle_is_used_and_cited():
    meta = {"bundle": {"tracing_cost": {"event_ns": 400, "sample_ns": 1900, "method": "tracepoint-cost"}}}
    cost = tracing_cost(meta)
    assert (cost.event_ns, cost.sample_ns) == (400.0, 1900.0) and "record time" in cost.source
    assert tracing_cost(meta, event_ns=100).event_ns == 100.0   # the command line wins
    assert tracing_cost({}) is None and tracing_cost({"bundle": {"tracing_cost": None}}) is None


def test_an_analysis_without_events_is_not_corrected_and_says_why(simulated):
    analysis = replace(simulated[0], events=None)
    (result,) = whatif(analysis, [Policy("vanilla")], replicates=0, event_cost_ns=100)
    assert result["tracing"]["corrected"] is False and "no event table" in result["tracing"]["note"]
    assert "no event table" in render_whatif(result)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 30)), max_size=30),
       st.lists(st.integers(0, 600), max_size=200), st.booleans())
def test_events_are_counted_for_the_innermost_window_around_them(windows, events, disjoint):
    """Disjoint windows (the common case: no request switched out) take a shortcut; it must count
    what the event by event search counts, and so must overlapping ones."""
    begin = np.cumsum([gap for gap, _ in windows]).astype(np.int64)
    if disjoint:
        begin = begin + np.cumsum([0] + [length for _, length in windows[:-1]]).astype(np.int64)
    end = begin + np.array([length for _, length in windows], np.int64)
    ts = np.sort(np.array(events, np.int64))
    innermost = np.zeros(len(begin), np.int64)
    for t in ts:
        holding = [i for i in range(len(begin)) if begin[i] <= t < end[i]]
        if holding:
            innermost[max(holding, key=lambda i: (begin[i], i))] += 1
    assert overhead._per_window(ts, begin, end).tolist() == innermost.tolist()
