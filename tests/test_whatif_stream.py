"""The request stream built a slice of a core's requests at a time (kptrace.whatif.stream) is the
stream built from all of them at once, whatever the slice size: slicing bounds the memory of a
64 M-event what-if and must never change a figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.analysis import analyze
from kptrace.simulate import Scenario, write_simulation
from kptrace.whatif.stream import REQUEST_COLUMNS, _slice_ends, core_stream, serving_spans

SAMPLES = Path(__file__).parent.parent / "sample_traces"
#: Requests of the busiest core taken (the first in time): each slice costs a few joins.
REQUESTS = 600


def _core(analysis) -> tuple[pl.DataFrame, dict]:
    requests = analysis.requests.lazy().select(REQUEST_COLUMNS).collect()
    cpu = requests["cpu"].mode().sort()[0]
    mine = requests.filter(pl.col("cpu") == cpu).sort("ts").head(REQUESTS)
    return mine, serving_spans(analysis.intervals, cpu, requests["tid"].unique().to_list())


@pytest.fixture(scope="module")
def real_core():
    """A real capture: one serving thread on its core, a disk IRQ on the same core."""
    return _core(analyze(SAMPLES / "memcached-diskirq-same-core"))


@pytest.fixture(scope="module")
def shared_core(tmp_path_factory):
    """A simulated one: four serving threads on two cores, so requests overlap (one thread's
    request switched out for another's) and several start in the same gap."""
    path = write_simulation(tmp_path_factory.mktemp("sim") / "sim", Scenario(duration_s=0.3, seed=5), "perf")
    return _core(analyze(path))


def _whole(requests, spans) -> pl.DataFrame:
    (stream,) = core_stream(requests, spans, size=len(requests) + 1)
    return stream


@settings(max_examples=12, deadline=None)
@given(size=st.integers(1, REQUESTS))
def test_a_real_cores_stream_built_in_slices_equals_the_whole(real_core, size):
    requests, spans = real_core
    whole = _whole(requests, spans)
    assert whole.height == requests.height and whole["ready_ts"].is_not_null().any()
    assert pl.concat(core_stream(requests, spans, size=size)).equals(whole)


@settings(max_examples=12, deadline=None)
@given(size=st.integers(1, REQUESTS))
def test_a_shared_cores_stream_built_in_slices_equals_the_whole(shared_core, size):
    requests, spans = shared_core
    whole = _whole(requests, spans)
    assert requests["tid"].n_unique() > 1 and whole.height == requests.height
    assert pl.concat(core_stream(requests, spans, size=size)).equals(whole)


@given(st.lists(st.integers(0, 30), min_size=1, max_size=200).map(sorted), st.integers(1, 50))
def test_slices_hold_at_most_size_requests_and_never_split_requests_that_start_together(starts, size):
    starts = np.array(starts)
    ends = _slice_ends(starts, size)
    assert ends[-1] == len(starts) and all(a < b for a, b in zip([0, *ends], ends))
    assert all(starts[end - 1] != starts[end] for end in ends[:-1])
    # longer only when every request in it starts at the same instant
    assert all(end - first <= size or len(set(starts[first:end])) == 1 for first, end in zip([0, *ends], ends))


# Any requests on one core (overlapping, several starting at one instant) and any intervals of
# each role (overlapping, straddling gap edges): times on a coarse grid, so that they often meet.
_times = st.integers(0, 60).map(lambda t: 25 * t)
_lengths = st.integers(0, 16).map(lambda t: 25 * t)
_requests = st.lists(st.tuples(_times, _lengths, _lengths, st.sampled_from([1, 2])), min_size=1, max_size=30)
_spans = st.lists(st.tuples(_times, _lengths), max_size=25)


def _synthetic(rows: list, spans: dict) -> tuple[pl.DataFrame, dict]:
    ts, dur, own, tid = zip(*rows)
    requests = pl.DataFrame({"request_id": np.arange(len(rows))[::-1], "cpu": 0, "tid": tid, "ts": ts, "dur": dur,
                             "own_ns": np.minimum(own, dur)},
                            schema={"request_id": pl.UInt32, "cpu": pl.Int16, "tid": pl.Int32, "ts": pl.Int64,
                                    "dur": pl.Int64, "own_ns": pl.Int64})
    frames = {role: pl.DataFrame({"cpu": [0] * len(items), "ts": [t for t, _ in items],
                                  "end": [t + n for t, n in items]},
                                 schema={"cpu": pl.Int16, "ts": pl.Int64, "end": pl.Int64}).sort("ts", maintain_order=True)
              for role, items in spans.items()}
    return requests, frames


@settings(max_examples=150, deadline=None)
@given(_requests, st.fixed_dictionaries({role: _spans for role in ("idle", "irq", "wake", "other")}),
       st.integers(1, 30))
def test_any_cores_stream_built_in_slices_equals_the_whole(rows, spans, size):
    requests, frames = _synthetic(rows, spans)
    assert pl.concat(core_stream(requests, frames, size=size)).equals(_whole(requests, frames))
