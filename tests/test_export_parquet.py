"""ParquetAppender writes each frame on a thread of its own: the file holds every frame in order,
and a write that fails there is raised to the caller, never lost."""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq
import pytest

from kptrace.export import parquet


def test_frames_appended_while_earlier_ones_are_written_read_back_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 64)
    frames = [pl.DataFrame({"ts": range(start, start + 100), "part": [start] * 100}) for start in range(0, 1000, 100)]
    appender = parquet.ParquetAppender(tmp_path / "t.parquet")
    for frame in frames:
        appender.append(frame)
    appender.close()
    assert appender.rows == 1000
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.num_row_groups == 20
    assert pl.read_parquet(tmp_path / "t.parquet").equals(pl.concat(frames))


def test_a_frame_of_another_schema_raises_by_close_at_the_latest(tmp_path):
    appender = parquet.ParquetAppender(tmp_path / "t.parquet")
    appender.append(pl.DataFrame({"ts": [1, 2]}))
    with pytest.raises(ValueError, match="schema"):
        appender.append(pl.DataFrame({"name": ["x"]}))  # fails on the writing thread
        appender.close()


def test_a_frame_reads_back_equal_in_row_groups_that_say_their_time_range(tmp_path, monkeypatch):
    """write_table (pyarrow): every value and dtype back, categories and nulls included; each row
    group says its time range, so a time-range read can skip the others."""
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 100)
    frame = pl.DataFrame({
        "ts": range(1000, 1300),
        "cpu": pl.Series([0, 1, None] * 100, dtype=pl.Int16),
        "comm": ["memcached", None, "kworker/1:0"] * 100,
        "event": pl.Series(["sched_switch", "irq_handler_entry", "softirq_entry"] * 100, dtype=pl.Categorical),
    })
    parquet.write_table(tmp_path / "t.parquet", frame)
    assert pl.read_parquet(tmp_path / "t.parquet").equals(frame)
    metadata = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert metadata.num_row_groups == 3
    ts = metadata.row_group(1).column(0).statistics
    assert (ts.min, ts.max) == (1100, 1199)
    scanned = pl.scan_parquet(tmp_path / "t.parquet").filter(pl.col("ts") >= 1250).collect()
    assert scanned.equals(frame.filter(pl.col("ts") >= 1250))
    parquet.write_table(tmp_path / "empty.parquet", frame.clear())  # no row group, the same columns
    assert pl.read_parquet(tmp_path / "empty.parquet").equals(frame.clear())
