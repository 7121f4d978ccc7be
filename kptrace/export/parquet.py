"""Write tables as zstd Parquet and the input description as meta.json.

Tables are written in row groups of ROW_GROUP_ROWS, so a reader (a lazy scan, DuckDB, pyarrow)
can read a time range or a few columns of a 50 M-row table without loading all of it, and the
windowed driver (kptrace.windowed.events) can append one window at a time (ParquetAppender)."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

#: Rows per Parquet row group: small enough to read a slice cheaply, large enough to compress well.
ROW_GROUP_ROWS = 1 << 20


def write_tables(out_dir: str | Path, tables: dict[str, pl.DataFrame | pl.LazyFrame], meta: dict) -> list[Path]:
    """Write each table as `<name>.parquet` and `meta.json` into `out_dir`; return the paths. A
    LazyFrame (the held event table's view, a scan) is streamed to its file, never built whole."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        target = out / f"{name}.parquet"
        write_table(target, table)
        written.append(target)
    meta_path = out / "meta.json"
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    written.append(meta_path)
    return written


def write_table(target: Path, table: pl.DataFrame | pl.LazyFrame) -> None:
    """One table as a zstd Parquet file in row groups of ROW_GROUP_ROWS; a LazyFrame is streamed.
    A frame is encoded by pyarrow on the calling thread, a row group at a time (converting it to
    Arrow copies its text columns): Polars' writer would spread it over Polars' thread pool,
    which the analysis running beside events.parquet needs (docs/performance.md)."""
    if isinstance(table, pl.LazyFrame):
        table.sink_parquet(target, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return
    with pq.ParquetWriter(target, table.clear().to_arrow().schema, compression="zstd") as writer:
        for group in table.iter_slices(ROW_GROUP_ROWS):
            writer.write_table(group.to_arrow(), row_group_size=ROW_GROUP_ROWS)


class ParquetAppender:
    """One Parquet file written a frame at a time (each frame one or more row groups), for tables
    too large to hold whole; every frame must have the first frame's schema.

    Each frame is encoded and written on a thread of its own while the caller goes on (pyarrow
    releases the GIL, so the windowed analysis overlaps its own writes on a second core). At most
    one write is in flight: `append` waits for the previous one first, so one more frame is held
    at most, and a failed write raises in the next `append` or in `close`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-append")
        self._pending: Future | None = None
        self.rows = 0

    def append(self, frame: pl.DataFrame) -> None:
        self._wait()
        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._pending = self._thread.submit(self._writer.write_table, table, row_group_size=ROW_GROUP_ROWS)
        self.rows += frame.height

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._thread.shutdown()
            if self._writer is not None:
                self._writer.close()

    def _wait(self) -> None:
        """Let the write in flight finish; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
