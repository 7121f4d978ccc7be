"""`analyze(path, stored=OUT)` of a binary capture runs window by window (kptrace.windowed.analyze)
and gives the whole analysis: every table row for row (written to OUT and scanned), attribution,
notes, meta, counters per request and IPC."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import zstandard

from kptrace.analysis import Analysis, analyze, analyze_events
from kptrace.normalize import normalize
from kptrace.read import read_any
from kptrace.windowed.analyze import analyze_event_windows

BINARY = Path(__file__).parent / "data" / "binary"
SAMPLES = Path(__file__).parent.parent / "sample_traces"


def _assert_same(whole: Analysis, windowed: Analysis, out: Path) -> None:
    """Every table equal row for row and stored in `out` as a scan; notes and meta equal."""
    assert windowed.stored == out and whole.stored is None
    assert windowed.tables().keys() == whole.tables().keys()
    for name, held in whole.tables().items():
        table, other = held.lazy().collect(), windowed.tables()[name]  # a whole analysis holds events as a view
        if name in ("events", "intervals", "disruptions", "requests", "request_hits", "request_counters"):
            assert isinstance(other, pl.LazyFrame), f"{name} should be scanned from {out}"
            assert pl.read_parquet(out / f"{name}.parquet").equals(table), f"{name}.parquet differs"
        assert other.lazy().collect().equals(table), f"{name} differs"
    assert windowed.notes == whole.notes
    assert windowed.meta == whole.meta
    assert json.loads((out / "meta.json").read_text())["event_count"] == whole.meta["event_count"]
    assert not list(out.glob(".windows-*")), "the scratch files between passes are removed"


@pytest.mark.parametrize("name, rows", [("v6.dat.zst", 200), ("v6-extend.dat.zst", 200), ("v7-drops.dat.zst", 100),
                                        ("v7-none.dat.zst", 800), ("v7-zstd.dat", 300), ("raw", 700)])
def test_a_binary_capture_analysed_in_small_windows_equals_the_whole_analysis(name, rows, tmp_path):
    whole = analyze(BINARY / name)
    windowed = analyze(BINARY / name, stored=tmp_path, window_rows=rows)
    assert windowed.meta["event_count"] > 2 * rows or name == "v6-extend.dat.zst", "several windows"
    _assert_same(whole, windowed, tmp_path)


def test_a_bundle_of_raw_pages_and_perf_counters_is_analysed_in_windows_as_whole(tmp_path, data):
    bundle = tmp_path / "bundle"
    shutil.copytree(BINARY / "raw", bundle / "raw")
    (bundle / "perf-counters.txt.zst").write_bytes((data / "perf-counters.txt.zst").read_bytes())
    (bundle / "manifest.json").write_text(json.dumps({"files": {"perf_counters": "perf-counters.txt.zst"},
                                                      "trace_clock": "perf"}))
    whole = analyze(bundle)
    assert (whole.events.lazy().collect()["subsystem"] == "counter").any()
    _assert_same(whole, analyze(bundle, stored=tmp_path / "out", window_rows=600), tmp_path / "out")


def test_a_text_trace_is_analysed_whole_even_with_a_directory(tmp_path, data):
    analysis = analyze(data / "tracecmd.txt.zst", stored=tmp_path)
    assert analysis.stored is None and analysis.events.lazy().select(pl.len()).collect().item() > 0
    assert not list(tmp_path.iterdir())


def _windows(events: pl.DataFrame, cuts: list[int]) -> list[pl.DataFrame]:
    """The event table cut at these rows, each cut moved on to where the time changes (rows that
    share a timestamp stay in one window, as the windowed read cuts)."""
    ts = events["ts"].to_numpy()
    changes = np.flatnonzero(np.diff(ts)) + 1
    edges = np.unique(changes[np.minimum(np.searchsorted(changes, sorted(cuts)), len(changes) - 1)])
    bounds = [0, *edges.tolist(), events.height]
    return [events[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _cuts_inside_hit_requests(events: pl.DataFrame, whole: Analysis, count: int, seed: int) -> list[int]:
    """Rows in the middle of requests an interrupt hit: their thread's syscalls, the charged
    work and the off-CPU gaps then cross a window edge."""
    hit = whole.requests.join(whole.hits.select("request_id").unique(), on="request_id")
    picked = hit.sample(min(count, hit.height), seed=seed)
    middles = (picked["ts"] + picked["dur"] // 2).to_numpy()
    return np.searchsorted(events["ts"].to_numpy(), middles).tolist()


def _analysed_in_windows(path: Path, rows: int, edges_in_hits: int, out: Path) -> tuple[Analysis, Analysis, int]:
    """(whole, windowed, number of windows) of a text trace: its event table in `rows`-row
    windows plus edges inside hit requests, through the windowed driver."""
    normalized = normalize(read_any(path))
    whole = analyze_events(normalized.events, normalized.meta)
    cuts = list(range(rows, normalized.events.height, rows))
    cuts += _cuts_inside_hit_requests(normalized.events, whole, edges_in_hits, seed=7)
    windows = _windows(normalized.events, cuts)
    return whole, analyze_event_windows(windows, lambda: normalized.meta, out), len(windows)


def test_requests_and_hits_built_in_windows_with_edges_inside_hit_requests_equal_the_whole_ones(tmp_path, data):
    whole, windowed, count = _analysed_in_windows(data / "tracefs.txt.zst", 6_000, 16, tmp_path)
    assert count > 25 and whole.requests.height > 1_000 and whole.hits.height > 50
    _assert_same(whole, windowed, tmp_path)


def test_counters_per_request_built_in_windows_equal_the_whole_ones(tmp_path):
    """A lab memcached trace with perf counters read at each epoll_wait return and disk IRQs
    on the server's core (request_counters, hits from two IRQ sources)."""
    whole, windowed, count = _analysed_in_windows(SAMPLES / "memcached-diskirq-same-core", 300_000, 10, tmp_path)
    assert count >= 10 and whole.request_counters.height > 0 and whole.hits.height > 1_000
    _assert_same(whole, windowed, tmp_path)


def test_kptrace_analyze_of_a_binary_capture_writes_the_whole_analysis_tables(tmp_path):
    """The CLI takes the windowed path for a binary capture (its tables written as they are
    built); the files it leaves are the whole analysis's tables."""
    from typer.testing import CliRunner

    from kptrace.cli import app

    result = CliRunner().invoke(app, ["analyze", str(BINARY / "v7-zstd.dat"), "-o", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    whole = analyze(BINARY / "v7-zstd.dat")
    for name, table in whole.tables().items():
        assert pl.read_parquet(tmp_path / f"{name}.parquet").equals(table.lazy().collect()), name
    assert not list(tmp_path.glob(".windows-*"))


def test_counter_samples_parsed_in_chunks_equal_the_whole_files_samples_and_notes(tmp_path, data, monkeypatch):
    """A bundle's perf counter text is parsed 64 KiB at a time (bounded memory): the samples,
    the line numbers, what is unreadable (a line of garbage, a number too large, a cut last
    line) and the counts equal the whole file's."""
    import kptrace.read as read

    lines = zstandard.ZstdDecompressor().decompress(
        (data / "perf-counters.txt.zst").read_bytes(), max_output_size=1 << 30).decode().splitlines(keepends=True)
    samples = [i for i, line in enumerate(lines) if "task-clock:" in line]
    damaged = samples[len(samples) // 3]
    lines[damaged] = re.sub(r": +\d+ ", ":  99999999999999999999999 ", lines[damaged])
    lines.insert(len(lines) // 2, "this line is not a perf script event\n")
    path = tmp_path / "perf-counters.txt"
    path.write_text("".join(lines) + lines[samples[-1]][:30])
    whole = read.read_text_trace(path)
    kept = whole.rows.filter(pl.col("subsystem") == "counter")
    monkeypatch.setattr(read, "KEPT_CHUNK_BYTES", 1 << 16)
    chunked = read.read_counter_samples(path)
    assert path.stat().st_size > 10 << 16 and whole.unparsed_count == 3 and kept.height > 100
    assert chunked.rows.equals(kept)
    assert chunked.repeated_count == whole.rows.height - kept.height
    assert (chunked.warnings, chunked.unparsed_count, chunked.unparsed_examples, chunked.units, chunked.ignored_count) \
        == (whole.warnings, whole.unparsed_count, whole.unparsed_examples, whole.units, whole.ignored_count)


def test_page_headers_read_a_few_pages_at_a_time_give_the_same_windows(monkeypatch):
    """The mapped pages are read and let go a span at a time (RSS bounded by the span, not the
    capture): page start times and decoded windows are unchanged."""
    from kptrace.read import chunks
    from kptrace.read.binary import decode
    from kptrace.read.rawpages import read_raw_dir

    capture = read_raw_dir(BINARY / "raw", mapped=True)
    whole = [chunks.page_starts(blob, capture) for _, blob in capture.buffers[0][1]]
    before = list(chunks.decoded_windows(capture, 1000))
    monkeypatch.setattr(chunks, "HEADER_SPAN", 3 * capture.header.page_size)
    spanned = [chunks.page_starts(blob, capture) for _, blob in capture.buffers[0][1]]
    assert max(len(s) for s in whole) > 6
    assert all(np.array_equal(a, b) for a, b in zip(whole, spanned, strict=True))
    after = list(chunks.decoded_windows(capture, 1000))
    assert len(after) == len(before) > 5
    assert all(a[:2] == b[:2] and a[2].equals(b[2]) for a, b in zip(before, after))
    assert sum(rows.height for *_, rows, _ in after) == decode(capture).height
