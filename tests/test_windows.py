"""The windowed read (kptrace.windowed.events, kptrace.read.chunks) gives exactly the event table and
meta.json of the whole-trace read, and tables are written in row groups."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import zstandard

from kptrace.export import parquet
from kptrace.normalize import normalize
from kptrace.read import read_any
from kptrace.read.binary import decode
from kptrace.read.chunks import decoded_windows, window_bounds
from kptrace.read.rawpages import read_raw_dir
from kptrace.windowed.events import event_windows, open_source, read_windowed, write_event_windows

BINARY = Path(__file__).parent / "data" / "binary"
SAMPLES = ["v6.dat.zst", "v6-extend.dat.zst", "v7-drops.dat.zst", "v7-none.dat.zst", "v7-zstd.dat", "raw"]


def _windowed(path: Path, rows: int) -> tuple[list[pl.DataFrame], dict]:
    source = open_source(path)
    assert source is not None, f"{path} should be read in windows"
    frames = list(event_windows(source, rows))
    return frames, source.meta


@pytest.mark.parametrize("name", SAMPLES)
def test_windowed_read_equals_the_whole_read_events_and_meta(name):
    whole = normalize(read_any(BINARY / name))
    frames, meta = _windowed(BINARY / name, rows=200)
    assert pl.concat(frames).equals(whole.events)
    assert meta == whole.meta


def test_small_windows_really_split_the_samples():
    """The equality above proves something only if the samples were cut into several windows."""
    split = {name: len(_windowed(BINARY / name, rows=200)[0]) for name in SAMPLES}
    assert split["raw"] > 10 and split["v7-none.dat.zst"] > 1, split


def test_rows_held_back_at_a_window_edge_keep_their_time_order():
    """Every window's rows lie in its [start, end) and no row is lost or repeated at the edges."""
    capture = read_raw_dir(BINARY / "raw", mapped=True)
    windows = list(decoded_windows(capture, 200))
    assert len(windows) > 10
    for lo, hi, rows, _ in windows:
        if rows.height:
            assert lo is None or rows["ts"].min() >= lo
            assert hi is None or rows["ts"].max() < hi
            assert rows["ts"].is_sorted()
    assert sum(rows.height for *_, rows, _ in windows) == decode(capture).height


def test_pages_out_of_time_order_are_read_whole():
    """A CPU whose pages do not start in time order cannot be cut by time exactly: one window."""
    capture = read_raw_dir(BINARY / "raw", mapped=True)
    size = capture.header.page_size
    cpu, blob = capture.buffers[0][1][0]
    pages = [bytes(blob[i:i + size]) for i in range(0, len(blob) // size * size, size)]
    assert len(pages) > 2
    swapped = replace(capture, buffers=[("", [(cpu, b"".join(pages[::-1]))] + capture.buffers[0][1][1:])])
    assert window_bounds(swapped, 200) == []
    (only,) = list(decoded_windows(swapped, 200))
    assert only[2].equals(decode(swapped))


def test_a_bundle_with_raw_pages_and_perf_counters_reads_like_read_bundle(tmp_path, data):
    """Counter rows are merged by time after raw rows of the same time, as read_bundle sorts them."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BINARY / "raw", bundle / "raw")
    lines = zstandard.ZstdDecompressor().decompress(
        (data / "perf-counters.txt.zst").read_bytes(), max_output_size=1 << 30).decode().splitlines(keepends=True)
    lines.insert(len(lines) // 2, "this line is not a perf script event\n")
    (bundle / "perf-counters.txt").write_text("".join(lines))
    (bundle / "manifest.json").write_text(json.dumps({"files": {"perf_counters": "perf-counters.txt"},
                                                      "trace_clock": "perf"}))
    whole = normalize(read_any(bundle))
    assert (whole.events["subsystem"] == "counter").any() and whole.meta["unparsed_lines"] == 1
    frames, meta = _windowed(bundle, rows=200)
    assert pl.concat(frames).equals(whole.events)
    assert meta == whole.meta
    assert read_windowed(bundle, rows_per_window=200).events.equals(whole.events)


def test_a_duty_cycled_bundle_with_raw_pages_has_the_same_gap_marks_and_meta(tmp_path, data):
    """The gap marks read_bundle adds at each tracing window's start land in the time window that
    holds them, after the rows of their time; the traced seconds and warnings match."""
    bundle = tmp_path / "duty"
    shutil.copytree(BINARY / "raw", bundle / "raw")
    (bundle / "perf-counters.txt.zst").write_bytes((data / "perf-counters.txt.zst").read_bytes())
    ts = normalize(read_any(BINARY / "raw")).events["ts"]
    cut = [int(ts.quantile(q)) / 1e9 for q in (0.0, 0.3, 0.35, 0.7, 0.72, 1.0)]
    spans = [{"start_ts": cut[i], "end_ts": cut[i + 1]} for i in (0, 2, 4)]
    (bundle / "manifest.json").write_text(json.dumps({"files": {"perf_counters": "perf-counters.txt.zst"},
                                                      "windows": spans}))
    whole = normalize(read_any(bundle))
    assert (whole.events["event"] == "trace_gap").sum() == 2 * whole.events["cpu"].n_unique() > 0
    frames, meta = _windowed(bundle, rows=300)
    assert len(frames) > 5
    assert pl.concat(frames).equals(whole.events)
    assert meta == whole.meta and "windows" in meta


def test_records_with_no_format_are_dropped_and_counted_as_the_whole_read_does(tmp_path):
    """A format file missing: its records are unreadable (count, examples, warning) in both reads."""
    raw = tmp_path / "raw"
    shutil.copytree(BINARY / "raw", raw)
    counts = normalize(read_any(raw)).meta["event_counts"]
    dropped = max((f for f in raw.glob("format/*/*") if f.name in counts), key=lambda f: counts[f.name])
    shutil.rmtree(dropped)
    whole = normalize(read_any(raw))
    assert whole.meta["unparsed_lines"] == counts[dropped.name] and whole.meta["unparsed_examples"]
    frames, meta = _windowed(raw, rows=200)
    assert pl.concat(frames).equals(whole.events)
    assert meta == whole.meta


def test_text_traces_are_not_read_in_windows(data):
    assert open_source(data / "tracefs.txt.zst") is None
    assert read_windowed(data / "tracefs.txt.zst") is None


def test_tables_are_written_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 100)
    table = pl.DataFrame({"ts": range(1000), "name": [f"n{i % 7}" for i in range(1000)]})
    (path, _) = parquet.write_tables(tmp_path, {"t": table}, {})
    assert pq.ParquetFile(path).metadata.num_row_groups == 10
    assert pl.read_parquet(path).equals(table)


def test_appended_windows_read_back_as_one_table(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 50)
    frames, _ = _windowed(BINARY / "raw", rows=2000)
    assert len(frames) > 2
    appender = parquet.ParquetAppender(tmp_path / "events.parquet")
    for frame in frames:
        appender.append(frame)
    appender.close()
    assert pq.ParquetFile(tmp_path / "events.parquet").metadata.num_row_groups > len(frames)
    assert pl.read_parquet(tmp_path / "events.parquet").equals(pl.concat(frames))


def test_events_written_window_by_window_equal_the_ingested_table(tmp_path):
    whole = normalize(read_any(BINARY / "raw"))
    meta = write_event_windows(BINARY / "raw", tmp_path, rows_per_window=500)
    assert meta == whole.meta
    assert pl.read_parquet(tmp_path / "events.parquet").equals(whole.events)
    assert json.loads((tmp_path / "meta.json").read_text())["event_count"] == whole.meta["event_count"]


@pytest.mark.parametrize("name", ["v7-drops.dat.zst", "raw"])
def test_kptrace_ingest_of_a_binary_capture_writes_the_whole_reads_table_and_meta(name, tmp_path):
    """`kptrace ingest` takes the windowed path for binary captures (bounded memory); what it
    writes must be what the whole read gives, lost-event marks included."""
    from typer.testing import CliRunner

    from kptrace.cli import app

    result = CliRunner().invoke(app, ["ingest", str(BINARY / name), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    whole = normalize(read_any(BINARY / name))
    assert pl.read_parquet(tmp_path / "events.parquet").equals(whole.events)
    assert json.loads((tmp_path / "meta.json").read_text()) == json.loads(json.dumps(whole.meta, default=str))
