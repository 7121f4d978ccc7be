"""A binary capture read in time windows, so that no more than one window's rows are decoded
at once, with the rows of every window together exactly the rows `binary.decode` gives for the
whole capture, in the same order.

Cheap split: only the 8-byte start time of each page header is read. A window takes, on each
CPU, the pages that start in [t_k, t_k+1). A page's records run past its start, up to the next
page's start on that CPU, so a decoded window can hold rows at or after t_k+1: those are held
back and merged into the next window, where every row is at or after t_k+1 (its page starts
there). Rows at one time keep decode's order: CPU buffer order, then page order (an earlier
window's pages come first on their CPU), then the window's own order.

A raw/ directory is mapped rather than read (`read_raw_dir(mapped=True)`), so the page bytes of a 2 GB capture are not all in
memory: each window copies only its own pages, and the mapping is let go after each step.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import polars as pl

from kptrace.read.binary import Capture, decode


#: Bytes of mapped pages whose headers are read before they are let go (_release).
HEADER_SPAN = 1 << 26


def page_starts(blob, capture: Capture) -> np.ndarray:
    """Start time (ns) of every whole page of one CPU's blob, from the page headers alone; a
    mapped blob is read HEADER_SPAN bytes at a time, each span let go once read."""
    size, offset = capture.header.page_size, capture.header.timestamp_offset
    count, step = len(blob) // size, max(1, HEADER_SPAN // size)
    starts = [np.zeros(0, np.int64)]
    for first in range(0, count, step):
        pages = min(step, count - first)
        raw = np.frombuffer(blob, dtype=np.uint8, count=pages * size, offset=first * size).reshape(pages, size)
        starts.append(np.ascontiguousarray(raw[:, offset:offset + 8]).view(f"{capture.byte_order}u8").ravel()
                      .astype(np.int64))
        del raw  # the view would keep the map exported
        if isinstance(blob, mmap.mmap) and size % mmap.PAGESIZE == 0:
            blob.madvise(mmap.MADV_DONTNEED, first * size, pages * size)
    return np.concatenate(starts)


def window_bounds(capture: Capture, rows_per_window: int) -> list[int]:
    """Window start times after the first: page start times about `rows_per_window` decoded rows
    apart (a page holds about page_size / 24 rows). Empty when the capture cannot be split
    exactly: several buffer instances, or a CPU whose pages do not start in time order."""
    if len(capture.buffers) != 1:
        return []
    starts = [page_starts(blob, capture) for _, blob in capture.buffers[0][1]]
    if any((np.diff(s) < 0).any() for s in starts):
        return []
    every = np.sort(np.concatenate(starts + [np.zeros(0, np.int64)]))
    pages_per_window = max(1, rows_per_window * 24 // capture.header.page_size)
    bounds = np.unique(every[pages_per_window::pages_per_window])
    return [int(b) for b in bounds if b > every[0]]


def _release(capture: Capture) -> None:
    """Drop the mapped page files' pages from this process (they stay in the page cache): a
    window copies its pages out, and mapped pages left resident count in its RSS, which would
    then grow with the capture (every page header is read to find the windows)."""
    for _, blobs in capture.buffers:
        for _, blob in blobs:
            if isinstance(blob, mmap.mmap):
                blob.madvise(mmap.MADV_DONTNEED)


def _sub_capture(capture: Capture, starts: list[np.ndarray], lo: int | None, hi: int | None) -> Capture:
    """The pages of every CPU that start in [lo, hi) (None: unbounded)."""
    size = capture.header.page_size
    blobs = []
    for (cpu, blob), s in zip(capture.buffers[0][1], starts):
        first = 0 if lo is None else int(np.searchsorted(s, lo, side="left"))
        last = len(s) if hi is None else int(np.searchsorted(s, hi, side="left"))
        blobs.append((cpu, bytes(blob[first * size:last * size])))
    return replace(capture, buffers=[(capture.buffers[0][0], blobs)], warnings=[])


def _merge_sorted(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """`rows.sort(keys)` (unique keys) for rows whose tail is already in order, as a window's
    decoded rows after the few rows held from the last window are: the order is found on the
    key columns alone, and only the rows before the in-order tail are gathered."""
    order = rows.select(pl.arg_sort_by(keys)).to_series().to_numpy()
    moved = np.flatnonzero(order != np.arange(len(order)))
    head = int(moved[-1]) + 1 if len(moved) else 0
    return pl.concat([rows[:head][order[:head]], rows[head:]]) if head else rows


def decoded_windows(capture: Capture, rows_per_window: int,
                    ) -> Iterator[tuple[int | None, int | None, pl.DataFrame, int]]:
    """decode(capture) in consecutive time windows (module docstring): (start, end, rows, page
    bytes decoded so far) where every row is in [start, end) (None: unbounded); `seq` numbers
    the rows across windows as decode numbers them; rows may be empty."""
    bounds = window_bounds(capture, rows_per_window)
    if not bounds:
        yield None, None, decode(capture), sum(len(b) for _, blobs in capture.buffers for _, b in blobs)
        return
    starts = [page_starts(blob, capture) for _, blob in capture.buffers[0][1]]
    _release(capture)
    rank = {cpu: i for i, (cpu, _) in enumerate(capture.buffers[0][1])}
    held, done, emitted = pl.DataFrame(), 0, 0
    for k, (lo, hi) in enumerate(zip([None, *bounds], [*bounds, None])):
        window = _sub_capture(capture, starts, lo, hi)
        _release(capture)
        done += sum(len(b) for _, b in window.buffers[0][1])
        rows = decode(window)
        if rows.height:
            rows = rows.with_columns(_window=pl.lit(k, pl.Int32), _rank=pl.col("cpu").replace_strict(
                rank, default=len(rank), return_dtype=pl.Int32))
        if held.height:
            rows = _merge_sorted(pl.concat([held, rows], how="diagonal_relaxed"), ["ts", "_rank", "_window", "seq"])
        if hi is not None and rows.height:
            held, rows = rows.filter(pl.col("ts") >= hi), rows.filter(pl.col("ts") < hi)
        else:
            held = pl.DataFrame()
        if rows.height:
            rows = rows.drop("_window", "_rank").with_columns(
                seq=pl.int_range(emitted + 1, emitted + pl.len() + 1, dtype=pl.Int64))
            emitted += rows.height
        yield lo, hi, rows, done
