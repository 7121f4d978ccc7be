"""Duty-cycled bundles: the gaps between tracing windows break what spans them, and rates are
per traced second.

The bundle here is derived from a real one (sample_traces/memcached-baseline): the events of a
150 ms stretch are taken out, as if tracing had been off, and the manifest lists the two windows
the way `kptrace-record --every/--for` does (start_ts/end_ts in seconds on the trace clock).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import zstandard

from kptrace.analysis import analyze_events
from kptrace.normalize import normalize
from kptrace.read import read_any

SOURCE = Path(__file__).resolve().parent.parent / "sample_traces" / "memcached-baseline"
TS = re.compile(rb"\s(\d+\.\d{6}):\s")
GAP_AFTER_S, GAP_S = 0.25, 0.15


def _line_ts(line: bytes) -> float | None:
    m = TS.search(line)
    return float(m.group(1)) if m else None


def _bundle(tmp_path: Path, windows: bool, *, keep=lambda ts: True) -> Path:
    """The sample bundle's trace with only the lines `keep` accepts (header lines always kept),
    without its perf counters, and with two windows in the manifest when `windows`."""
    out = tmp_path / ("duty" if windows else "plain")
    shutil.copytree(SOURCE, out)
    lines = zstandard.ZstdDecompressor().stream_reader((SOURCE / "trace.txt.zst").open("rb")).read().splitlines(True)
    stamps = [t for t in map(_line_ts, lines) if t is not None]
    first, last = min(stamps), max(stamps)
    gap_start, gap_end = first + GAP_AFTER_S, first + GAP_AFTER_S + GAP_S
    kept = [line for line in lines if (t := _line_ts(line)) is None or keep(t, gap_start, gap_end)]
    (out / "trace.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(kept)))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["perf_counters"] = None
    if windows:
        manifest["windows"] = [
            {"index": 0, "start_ts": round(first - 1e-6, 6), "end_ts": round(gap_start, 6), "duration_s": GAP_AFTER_S},
            {"index": 1, "start_ts": round(gap_end, 6), "end_ts": round(last + 1e-6, 6),
             "duration_s": round(last - gap_end, 3)},
        ]
        manifest["duty_cycle"] = {"every_s": GAP_AFTER_S + GAP_S, "for_s": GAP_AFTER_S}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _outside_gap(ts: float, gap_start: float, gap_end: float) -> bool:
    return not gap_start <= ts < gap_end


@pytest.fixture(scope="module")
def duty(tmp_path_factory):
    path = _bundle(tmp_path_factory.mktemp("duty"), True, keep=_outside_gap)
    normalized = normalize(read_any(path))
    return normalized, analyze_events(normalized.events, normalized.meta)


def _gap_ns(meta: dict) -> tuple[int, int]:
    first, second = meta["windows"]
    return first["end_ns"], second["start_ns"]


def test_duty_cycled_bundle_counts_only_traced_time(duty):
    normalized, _ = duty
    meta = normalized.meta
    traced = sum(w["end_ns"] - w["start_ns"] for w in meta["windows"]) / 1e9
    span = (meta["end_ns"] - meta["start_ns"]) / 1e9
    assert meta["duration_s"] == pytest.approx(traced)
    assert meta["duration_s"] == pytest.approx(span - GAP_S, abs=1e-5)
    assert any(w.startswith("duty-cycled recording: 2 windows") for w in meta["warnings"])
    # The gap is not a loss: no lost-event warning or count comes from it, and its marks stand
    # for no input line (every line is still accounted for).
    assert all(c["lost_markers"] == 0 for c in meta["per_cpu"])
    acc = meta["input_accounting"]
    assert acc["input"] == acc["events"] + acc["markers"] + acc["unreadable"] + acc["ignored"] + acc["repeated"]


def test_no_complete_interval_spans_a_gap_between_windows(duty, tmp_path):
    _, analysis = duty
    gap_start, gap_end = _gap_ns(analysis.meta)
    spanning = analysis.intervals.filter(pl.col("complete") & (pl.col("ts") < gap_start)
                                         & (pl.col("ts") + pl.col("dur") > gap_end))
    assert spanning.height == 0
    # Read without its windows, the same events rebuild intervals across the gap (the server's
    # epoll_wait and task runs at least): what the markers prevent.
    plain = normalize(read_any(_bundle(tmp_path, False, keep=_outside_gap)))
    naive = analyze_events(plain.events, plain.meta).intervals
    assert naive.filter(pl.col("complete") & (pl.col("ts") < gap_start) & (pl.col("ts") + pl.col("dur") > gap_end)).height > 0


def test_requests_of_a_duty_cycled_bundle_are_those_of_each_window_read_alone(duty, tmp_path):
    """Each window analysed as its own trace finds the same requests as the whole bundle does."""
    _, analysis = duty
    key = ["tid", "cpu", "ts", "dur", "fd", "bytes_in", "bytes_out"]
    alone = []
    for name, keep in (("before", lambda t, s, e: t < s), ("after", lambda t, s, e: t >= e)):
        part = normalize(read_any(_bundle(tmp_path / name, False, keep=keep)))
        alone.append(analyze_events(part.events, part.meta).requests.select(key))
    expected = pl.concat(alone).sort(key)
    assert expected.height > 1000
    assert analysis.requests.select(key).sort(key).equals(expected)
