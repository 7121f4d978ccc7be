"""charged_work (and so the disruptions) built from the windowed interval table equals
requests.charged_work of the whole table row for row, whatever the window edges cut through:
a softirq with a hard IRQ nested in it, a softirq charged by adjacency to the IRQ before it,
a softirq raised inside an IRQ of an earlier window."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_interval_windows import DATA, SAMPLES, _cut, _events, _every, _whole

from kptrace.windowed.disruptions import charged_work_of_windows
from kptrace.windowed.intervals import interval_windows
from kptrace.requests import _chains, charged_work, disruptions, softirq_charging


def _windowed(windows: list[pl.DataFrame]) -> pl.DataFrame:
    return charged_work_of_windows(interval_windows(windows))


@pytest.mark.parametrize(("name", "rows"), [("binary/raw", 200), ("binary/v6.dat.zst", 200),
                                            ("binary/v7-none.dat.zst", 200), ("tracefs.txt.zst", 300),
                                            ("tracecmd-ns.txt.zst", 5000), ("perf.txt.zst", 1000)])
def test_windowed_charged_work_and_disruptions_equal_the_whole_ones(name, rows):
    whole = _whole(DATA / name)
    work = _windowed(_every(_events(DATA / name), rows))
    assert work.equals(charged_work(whole.lazy()).collect())
    assert _chains(work.lazy()).collect().equals(disruptions(whole.lazy()).collect())


def test_the_sample_trace_with_disk_irqs_in_100000_row_windows():
    name = SAMPLES / "memcached-diskirq-same-core"
    assert _windowed(_every(_events(name), 100_000)).equals(charged_work(_whole(name).lazy()).collect())


def test_both_charging_rules_are_covered():
    """The equality above covers softirqs charged by their raise and by adjacency."""
    assert softirq_charging(_events(DATA / "binary/raw")) == "adjacency"
    assert softirq_charging(_events(DATA / "tracefs.txt.zst")) == "raise"


def _edges_between(events: pl.DataFrame, pairs: list[tuple[int, int]]) -> list[int]:
    """A row after `a` and at or before `b` where the time changes, for each (a, b) seq pair."""
    ts = events["ts"].to_numpy()
    edges = []
    for a, b in pairs:
        row = int(np.searchsorted(ts, ts[a], side="right"))
        if row <= b:
            edges.append(row)
    return edges


@pytest.mark.parametrize("name", ["tracefs.txt.zst", "perf.txt.zst"])
def test_an_edge_between_a_softirq_and_a_hard_irq_nested_in_it(name):
    """The hard IRQ's time is taken from the softirq's own time windows later."""
    events, whole = _events(DATA / name), _whole(DATA / name)
    soft = whole.filter((pl.col("kind") == "softirq") & pl.col("complete")).select("cpu", "seq", "end_seq", soft="id")
    hard = whole.filter(pl.col("kind") == "hardirq").select("cpu", hard_seq="seq")
    nested = soft.join(hard, on="cpu").filter(pl.col("hard_seq").is_between(pl.col("seq"), pl.col("end_seq"), closed="left"))
    edges = _edges_between(events, nested.select("seq", "hard_seq").rows())[:40]
    assert len(edges) >= 3
    assert _windowed(_cut(events, edges)).equals(charged_work(whole.lazy()).collect())


def test_an_edge_between_a_hard_irq_and_the_softirq_that_follows_it():
    """Adjacency (no raise traced): the softirq joins the IRQ of the window before, with its gap."""
    events, whole = _events(DATA / "binary/raw"), _whole(DATA / "binary/raw")
    work = charged_work(whole.lazy()).collect()
    glued = work.filter(pl.col("glue_ns") > 0).join(whole.select("id", "seq"), on="id")
    before = whole.select(root="id", root_seq="seq")
    pairs = glued.join(before, on="root").filter(pl.col("root") != pl.col("id")).select("root_seq", "seq").rows()
    edges = _edges_between(events, pairs)[:40]
    assert len(edges) >= 3
    assert _windowed(_cut(events, edges)).equals(work)
