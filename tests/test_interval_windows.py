"""The interval table built window by window (kptrace.windowed.intervals) equals build_intervals
of the whole event table row for row, ids and raised_in included, whatever the window edges cut
through: an IRQ, a softirq, a syscall, a task's run, a raise and the run it raised."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kptrace.windowed.intervals import interval_windows
from kptrace.intervals import build_intervals
from kptrace.normalize import normalize
from kptrace.read import read_any

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).parent.parent / "sample_traces"
SMALL = ["binary/raw", "binary/v6.dat.zst", "binary/v6-extend.dat.zst", "binary/v7-drops.dat.zst",
         "binary/v7-none.dat.zst", "binary/v7-zstd.dat"]
TEXT = [("tracefs.txt.zst", 5000), ("tracecmd.txt.zst", 5000), ("tracecmd-ns.txt.zst", 5000),
        ("tracecmd-raw.txt.zst", 5000), ("perf.txt.zst", 5000), ("perf-counters.txt.zst", 1000)]


@cache
def _events(path: Path) -> pl.DataFrame:
    return normalize(read_any(path)).events


@cache
def _whole(path: Path) -> pl.DataFrame:
    return build_intervals(_events(path).lazy()).collect()


def _cut(events: pl.DataFrame, rows: list[int]) -> list[pl.DataFrame]:
    """The table cut before each of `rows`, each cut moved forward to where the time changes."""
    ts = events["ts"].to_numpy()
    changes = np.flatnonzero(np.diff(ts)) + 1
    cuts = sorted({int(changes[np.searchsorted(changes, r)]) for r in rows if r <= changes[-1]} - {0})
    bounds = [0, *cuts, events.height]
    return [events.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]


def _every(events: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    return _cut(events, list(range(n, events.height, n)))


def _windowed(windows: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(list(interval_windows(windows)))


@pytest.mark.parametrize("name", SMALL)
def test_binary_recordings_in_200_row_windows_give_the_whole_interval_table(name):
    windows = _every(_events(DATA / name), 200)
    assert len(windows) > 1 or name == "binary/v6-extend.dat.zst"  # 4 events: one window
    assert _windowed(windows).equals(_whole(DATA / name))


@pytest.mark.parametrize(("name", "rows"), TEXT)
def test_text_recordings_in_thousands_of_rows_windows_give_the_whole_interval_table(name, rows):
    windows = _every(_events(DATA / name), rows)
    assert len(windows) > 5
    assert _windowed(windows).equals(_whole(DATA / name))


@pytest.mark.parametrize("name", ["memcached-baseline", "memcached-diskirq-same-core", "memcached-diskirq-other-core"])
def test_sample_traces_in_windows_give_the_whole_interval_table(name):
    events = _events(SAMPLES / name)
    assert _windowed(_every(events, 100_000)).equals(_whole(SAMPLES / name))


def _inside(whole: pl.DataFrame, kind: str, events: pl.DataFrame) -> int:
    """The first row after the start of a complete `kind` interval, where the time changes,
    when that row is still inside the interval: a window edge there cuts it in two."""
    ts = events["ts"].to_numpy()
    for start, dur in whole.filter((pl.col("kind") == kind) & pl.col("complete")).select("ts", "dur").iter_rows():
        row = int(np.searchsorted(ts, start, side="right"))
        if row < len(ts) and ts[row] <= start + dur:
            return row
    raise AssertionError(f"no {kind} interval spans a time change")


@pytest.mark.parametrize("kind", ["hardirq", "softirq", "syscall", "running", "napi"])
def test_a_window_edge_inside_an_interval_keeps_it_whole(kind):
    events, whole = _events(DATA / "tracefs.txt.zst"), _whole(DATA / "tracefs.txt.zst")
    row = _inside(whole, kind, events)
    windows = _cut(events, [row])
    assert windows[0].height == row  # the edge is where it was put: inside the interval
    assert _windowed(windows).equals(whole)


@pytest.mark.parametrize("edge", ["after the raise", "after the raising IRQ"])
def test_a_raise_and_the_softirq_run_it_raised_in_different_windows(edge):
    """raised_in cites the hard IRQ of an earlier window (or one still open at the edge),
    numbered across the cut."""
    events, whole = _events(DATA / "tracefs.txt.zst"), _whole(DATA / "tracefs.txt.zst")
    raises = events.with_row_index("row").filter(pl.col("event") == "softirq_raise")
    raised = (whole.filter(pl.col("raised_in").is_not_null())
              .join(raises.select("row", raise_ts="ts"), on="raise_ts")
              .join(whole.select(raised_in="id", irq_end="end_seq"), on="raised_in")
              .filter((pl.col("row") < pl.col("seq")) & (pl.col("irq_end") < pl.col("seq"))))
    ts = events["ts"].to_numpy()
    first = raised["row" if edge == "after the raise" else "irq_end"] + 1
    edges = [row for row, seq in zip(first.to_list(), raised["seq"]) if ts[row] != ts[row - 1] and row < seq][:40]
    assert len(edges) >= 10
    windows = _cut(events, edges)
    assert len(windows) > 10
    assert _windowed(windows).equals(whole)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_window_edges_give_the_whole_interval_table(seed):
    events = _events(DATA / "perf.txt.zst")
    rows = np.random.default_rng(seed).integers(1, events.height, 60).tolist()
    assert _windowed(_cut(events, rows)).equals(_whole(DATA / "perf.txt.zst"))


def test_lost_events_in_a_later_window_break_a_syscall_opened_earlier():
    """A lost-event mark on the syscall's CPU, windows after its enter, leaves it incomplete
    in both builds (the recording with drops loses none inside a syscall: one is put there)."""
    events = _events(DATA / "tracefs.txt.zst")
    syscall = _whole(DATA / "tracefs.txt.zst").filter(
        (pl.col("kind") == "syscall") & pl.col("complete") & (pl.col("end_seq") - pl.col("seq") > 50)).row(0, named=True)
    at = syscall["seq"] + 40  # the mark goes before this row, at its time
    mark = events.clear(1).with_columns(
        ts=pl.lit(events["ts"][at], pl.Int64), cpu=pl.lit(syscall["cpu"]).cast(events.schema["cpu"]),
        subsystem=pl.lit("kptrace").cast(events.schema["subsystem"]), event=pl.lit("lost_events").cast(events.schema["event"]),
        value=pl.lit(3).cast(events.schema["value"]))
    marked = pl.concat([events.slice(0, at), mark, events.slice(at)])
    whole = build_intervals(marked.lazy()).collect()
    broken = whole.filter((pl.col("seq") == syscall["seq"]) & (pl.col("kind") == "syscall"))
    assert broken["complete"].to_list() == [False] and broken["dur"].to_list() == [None]
    windows = _cut(marked, [syscall["seq"] + 5, syscall["seq"] + 20, at + 10])
    assert len(windows) == 4
    assert _windowed(windows).equals(whole)


def test_windows_that_split_a_timestamp_are_refused():
    events = _events(DATA / "tracefs.txt.zst")
    ts = events["ts"].to_numpy()
    row = int(np.flatnonzero(ts[1:] == ts[:-1])[0]) + 1
    with pytest.raises(ValueError, match="where the time changes"):
        _windowed([events.slice(0, row), events.slice(row)])
