"""Requests and hits built from the windowed interval table (kptrace.windowed.requests) equal
requests.build_requests of the whole table row for row (request and disruption ids included),
with window edges inside requests, and the work is really cut into parts as it goes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_interval_windows import DATA, SAMPLES, _cut, _events, _every, _whole

import kptrace.windowed.requests as request_windows
from kptrace.windowed.intervals import interval_windows
from kptrace.windowed.requests import requests_of_windows
from kptrace.requests import build_requests


def _expected(path) -> tuple[pl.DataFrame, pl.DataFrame]:
    requests, hits = build_requests(_whole(path).lazy())
    return requests.collect(), hits.collect()


def _same(windows: list[pl.DataFrame], path) -> tuple[pl.DataFrame, pl.DataFrame]:
    requests, hits = requests_of_windows(interval_windows(windows))
    expected_requests, expected_hits = _expected(path)
    assert requests.equals(expected_requests)
    assert hits.equals(expected_hits)
    return requests, hits


@pytest.mark.parametrize(("name", "rows"), [("tracefs.txt.zst", 300), ("tracecmd.txt.zst", 5000),
                                            ("perf.txt.zst", 1000), ("perf-counters.txt.zst", 1000),
                                            ("binary/raw", 200), ("binary/v6.dat.zst", 200)])
def test_windowed_requests_and_hits_equal_the_whole_ones(name, rows):
    _same(_every(_events(DATA / name), rows), DATA / name)


@pytest.mark.parametrize("name", ["memcached-baseline", "memcached-diskirq-same-core", "memcached-diskirq-other-core"])
def test_sample_traces_in_100000_row_windows(name):
    requests, hits = _same(_every(_events(SAMPLES / name), 100_000), SAMPLES / name)
    assert requests.height > 10_000 and hits.height > 100  # the proof covers many requests and hits


def test_window_edges_inside_requests():
    """An edge between a request's first read and its last send, for 60 requests (the disk
    IRQ trace: most of them are hit)."""
    path = SAMPLES / "memcached-diskirq-same-core"
    events = _events(path)
    requests, hits = _expected(path)
    ts = events["ts"].to_numpy()
    hit = requests.join(hits.select("request_id").unique(), on="request_id").filter(pl.col("dur") > 1_000)
    starts = np.searchsorted(ts, hit["ts"].to_numpy(), side="right")
    ends = (hit["ts"] + hit["dur"]).to_numpy()
    edges = [int(row) for row, end in zip(starts, ends) if row < len(ts) and ts[row] < end][::max(1, hit.height // 60)]
    assert len(edges) >= 30
    _same(_cut(events, edges), path)


def test_the_epoll_threads_are_cut_into_parts_as_the_windows_go(monkeypatch):
    """Requests are built part by part (a thread cut at its epoll calls), not all at the end; a
    thread with no epoll loop (here the load generator: most of the syscalls) waits to the end."""
    parts = []
    real = request_windows._part

    def counted(calls, work, gaps):
        parts.append(calls.select("tid", "name"))
        return real(calls, work, gaps)

    monkeypatch.setattr(request_windows, "_part", counted)
    _same(_every(_events(DATA / "tracefs.txt.zst"), 2000), DATA / "tracefs.txt.zst")
    every = pl.concat(parts)
    looping = every.filter(pl.col("name").is_in(request_windows.EPOLL))["tid"].unique()
    per_part = [p.filter(pl.col("tid").is_in(looping.implode())).height for p in parts]
    assert sum(1 for n in per_part if n) > 10
    assert max(per_part) < sum(per_part) / 5  # no part holds most of the epoll threads' calls
    waiting = parts[-1].filter(~pl.col("tid").is_in(looping.implode()))
    assert waiting.height > every.height / 2  # the limit: the load generator's calls, held to the end
