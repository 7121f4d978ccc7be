"""normalize's repeat count: the same whether the rows come in time order (found among
neighbours) or not (found by hashing); its per-CPU and per-event figures (counted in numpy) equal
a plain Polars group_by of the same rows, nulls, marks and lost events included."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.normalize import _backwards, _duplicates, _figures


def _rows() -> pl.DataFrame:
    return pl.DataFrame({
        "ts": [10, 10, 10, 20, 20, 30, 30, 30],
        "cpu": [0, 0, 1, 0, 0, 1, 1, 1],
        "event": ["a", "a", "a", "a", "b", "c", "c", "c"],
        "seq": list(range(8)),
        "ts_resolution_ns": [1] * 8,
    })


def test_repeats_counted_in_time_order():
    # rows 0-1 repeat each other, and 5-7: row 2 differs by CPU, rows 3-4 by event
    assert _duplicates(_rows()) == 5


def test_repeats_counted_out_of_time_order():
    assert _duplicates(_rows().reverse()) == 5
    assert _duplicates(_rows()[[5, 0, 3, 6, 1, 2, 7, 4]]) == 5


def test_no_repeats_when_times_differ():
    assert _duplicates(_rows().with_columns(ts=pl.int_range(8))) == 0


_ROW = st.tuples(st.integers(0, 50), st.one_of(st.none(), st.integers(-2, 5)),
                 st.sampled_from([None, "irq", "kptrace", "unknown"]),
                 st.sampled_from([None, "a", "b", "lost_events", "buffer_started"]),
                 st.one_of(st.none(), st.integers(-3, 1 << 40)))


def _events(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"ts": pl.Int64, "cpu": pl.Int16, "subsystem": pl.Categorical,
                                      "event": pl.Categorical, "value": pl.Int64}, orient="row")


@settings(max_examples=200, deadline=None)
@given(st.lists(_ROW, max_size=40))
def test_figures_equal_a_group_by(rows):
    events = _events(rows)
    figures = _figures(events, 1, _backwards(events), 0)
    expected = events.group_by("cpu").agg(
        events=(pl.col("subsystem") != "kptrace").sum(),
        lost_events=pl.col("value").filter(pl.col("event") == "lost_events").sum(),
        lost_markers=(pl.col("event") == "lost_events").sum(),
        buffer_wrapped=(pl.col("event") == "buffer_started").any(),
    ).sort("cpu")
    assert figures.per_cpu.equals(expected) and figures.per_cpu.schema == expected.schema
    real = events.filter(pl.col("subsystem") != "kptrace")
    assert figures.event_counts == dict(real.group_by("event").len().select(pl.col("event").cast(pl.String),
                                                                             "len").iter_rows())
    assert figures.backwards == int((events["ts"].diff() < 0).sum())
