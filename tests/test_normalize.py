"""normalize's repeat count: the same whether the rows come in time order (found among
neighbours) or not (found by hashing)."""

import polars as pl

from kptrace.normalize import _duplicates


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
