"""The timeline is encoded and written a block of packets at a time (bounded memory): whatever
the block size, the file is the one a single block writes, byte for byte, including packets
with flows, annotations or interned names that fall on a block's first or last row."""

from __future__ import annotations

import functools
from pathlib import Path

import polars as pl
import pytest

import kptrace.export.perfetto as perfetto
from kptrace.analysis import analyze
from kptrace.summary import counter_samples

BUNDLE = Path(__file__).resolve().parent.parent / "sample_traces" / "memcached-diskirq-same-core"


@functools.cache
def _analysis():
    return analyze(BUNDLE)


def _write(path: Path, where: str) -> dict:
    """20 ms of the capture (a few thousand packets): where its requests run (flows and
    annotations), or around its first incomplete interval (drawn as an instant)."""
    a = _analysis()
    start = (a.requests.lazy().select(pl.col("ts").median()) if where == "requests" else
             a.intervals.lazy().filter(~pl.col("complete")).select(pl.col("ts").min() - 10_000_000)).collect().item()
    return perfetto.write_timeline(path, a.events, a.intervals, a.requests, counter_samples(a.events),
                                   window=(start, start + 20_000_000))


@pytest.mark.parametrize("where", ["requests", "incomplete"])
@pytest.mark.parametrize("block", [1, 7])
def test_a_timeline_written_in_small_blocks_equals_one_written_whole(block, where, tmp_path, monkeypatch):
    whole = _write(tmp_path / "whole.pftrace", where)
    monkeypatch.setattr(perfetto, "_BLOCK", block)
    blocks = _write(tmp_path / "blocks.pftrace", where)
    assert whole["packets"] > 100 * block and whole["counter_samples"]  # many block edges are crossed
    assert whole["flows"] > 0 if where == "requests" else sum(whole["incomplete"].values()) > 0
    assert blocks == {**whole, "path": blocks["path"]}
    assert (tmp_path / "blocks.pftrace").read_bytes() == (tmp_path / "whole.pftrace").read_bytes()


def test_small_blocks_equal_the_protobuf_classes_packets_when_only_counters_are_drawn(tmp_path, monkeypatch):
    """With no slice in the window, the first counter sample carries the interned names."""
    a = _analysis()
    args = (a.events, a.intervals.lazy().filter(False), None, counter_samples(a.events))
    start = a.requests.lazy().select(pl.col("ts").median()).collect().item()
    window = (start, start + 200_000_000)
    fast = perfetto.write_timeline(tmp_path / "fast.pftrace", *args, window=window)
    monkeypatch.setattr(perfetto, "_BLOCK", 3)
    monkeypatch.setattr(perfetto, "COMPILED", False)
    slow = perfetto.write_timeline(tmp_path / "slow.pftrace", *args, window=window)
    assert fast["packets"] > 3 and not fast["slices"]
    assert (tmp_path / "fast.pftrace").read_bytes() == (tmp_path / "slow.pftrace").read_bytes()
