"""A core's arrivals held as columns (kptrace.whatif.arrivals) give back the Arrival objects the
walker takes, in their order, and select and re-cost them as the policies and bootstrap ask."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.walker import Arrival
from kptrace.whatif.arrivals import Arrivals

rows = st.lists(st.tuples(st.integers(0, 10**12), st.sampled_from(["local_timer", "eth0", "nvme0q1", "reschedule"]),
                          st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**5)), max_size=60)


@settings(max_examples=100, deadline=None)
@given(rows)
def test_columns_give_back_the_arrivals_in_their_order(raw):
    given_arrivals = [Arrival(*row) for row in raw]
    frame = pl.DataFrame(raw, schema=["ts", "source", "handler_ns", "softirq_ns", "indirect_ns"], orient="row")
    for columns in (Arrivals.of(given_arrivals), Arrivals.from_frame(frame)):
        assert list(columns) == given_arrivals and len(columns) == len(raw)
        assert columns.span_ns.tolist() == [a.handler_ns + a.softirq_ns for a in given_arrivals]
        assert columns.sources() == {a.source for a in given_arrivals}
    assert Arrivals.of(given_arrivals) == Arrivals.from_frame(frame)


@settings(max_examples=100, deadline=None)
@given(rows, st.sets(st.sampled_from(["local_timer", "eth0", "absent"])))
def test_selecting_by_source_keeps_the_others_in_order(raw, sources):
    columns = Arrivals.of(Arrival(*row) for row in raw)
    kept = columns.where(~columns.of_sources(sources))
    assert list(kept) == [Arrival(*row) for row in raw if row[1] not in sources]
    assert kept.sources() == {row[1] for row in raw} - sources


def test_new_costs_keep_times_and_sources_and_differ_from_the_old():
    columns = Arrivals.of([Arrival(100, "eth0", 5, 1, 2), Arrival(50, "local_timer", 7, 0, 0)])
    costly = columns.with_costs(np.array([9, 8]), np.array([0, 3]))
    assert list(costly) == [Arrival(100, "eth0", 9, 0, 2), Arrival(50, "local_timer", 8, 3, 0)]
    assert costly != columns and costly.where(np.array([True, True])) == costly
