"""What follows the windows holds a bounded part at a time (issue 9, item 4): the disruptions are
grouped a range of roots at a time, the requests and hits numbered a range of requests at a
time from their stored parts; each way gives the whole tables row for row, ids included."""

from __future__ import annotations

from functools import partial

import numpy as np
import polars as pl
from test_interval_windows import DATA, _events, _every, _whole
from test_windowed_analyze import _analysed_in_windows, _assert_same

import kptrace.windowed.analyze as windowed_analyze
from kptrace.requests import DISRUPTION_SCHEMA, _chains, build_requests, charged_work
from kptrace.windowed.disruptions import chains_in_parts
from kptrace.windowed.intervals import interval_windows
from kptrace.windowed.requests import numbered_in_parts, request_parts


def test_disruptions_grouped_a_few_roots_at_a_time_equal_the_whole_group_by():
    work = charged_work(_whole(DATA / "tracefs.txt.zst").lazy()).collect()
    roots = np.sort(work.filter(pl.col("root") == pl.col("id"))["id"].to_numpy())
    parts = []
    chains_in_parts(work.lazy(), roots, parts.append, roots_per_part=97)
    assert len(parts) == -(-len(roots) // 97) > 5 and max(p.height for p in parts) == 97
    assert pl.concat(parts).equals(_chains(work.lazy()).collect())


def test_no_charged_work_gives_an_empty_typed_disruption_table():
    parts = []
    chains_in_parts(pl.LazyFrame(), np.zeros(0, np.uint32), parts.append)
    assert len(parts) == 1 and parts[0].height == 0 and parts[0].schema == DISRUPTION_SCHEMA


def test_requests_numbered_a_few_at_a_time_from_stored_parts_equal_the_whole_ones(tmp_path):
    path = DATA / "tracefs.txt.zst"
    stored: dict[str, list[pl.DataFrame]] = {"requests": [], "hits": []}
    roots = request_parts(interval_windows(_every(_events(path), 2_000)),
                          lambda r, h: (stored["requests"].append(r), stored["hits"].append(h)))
    assert len(stored["requests"]) > 5, "the windows give several parts"
    for name, frames in stored.items():
        pl.concat(frames).write_parquet(tmp_path / f"{name}.parquet")
    numbered = {"requests": [], "hits": []}

    def append(requests: pl.DataFrame, hits: pl.DataFrame) -> None:
        numbered["requests"].append(requests)
        numbered["hits"].append(hits)
    scans = (pl.scan_parquet(tmp_path / f"{name}.parquet") for name in ("requests", "hits"))
    count = numbered_in_parts(*scans, roots, append, rows_per_part=101)
    requests, hits = (frame.collect() for frame in build_requests(_whole(path).lazy()))
    assert count == requests.height and len(numbered["requests"]) == -(-count // 101) > 5
    assert max(part.height for part in numbered["requests"]) == 101
    assert pl.concat(numbered["requests"]).equals(requests)
    assert pl.concat(numbered["hits"]).equals(hits) and hits.height > 50


def test_a_windowed_analysis_with_small_parts_after_the_windows_equals_the_whole_one(tmp_path, data, monkeypatch):
    monkeypatch.setattr(windowed_analyze, "chains_in_parts", partial(chains_in_parts, roots_per_part=53))
    monkeypatch.setattr(windowed_analyze, "numbered_in_parts", partial(numbered_in_parts, rows_per_part=61))
    whole, windowed, count = _analysed_in_windows(data / "tracefs.txt.zst", 6_000, 16, tmp_path)
    assert count > 25 and whole.requests.height > 10 * 61 and whole.disruptions.height > 10 * 53
    _assert_same(whole, windowed, tmp_path)
