"""Walk ring-buffer pages: every record's time and place, for all pages at once.

A page is a header (start time, commit word) then records of 4-byte-aligned variable length,
each starting with a 32-bit word: 5 bits of type/length and 27 bits of time delta. Records
must be read in order within a page (each one's length says where the next starts): that
sequential step is compiled C (pages.c, built by pages_build.py), as are the grouping of each
event type's records side by side, the reading of their integer fields and the hashing that
tells equal values apart: each a pass over all records of a type at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from kptrace.errors import compiled_part
from kptrace.read.formats import Field, PageHeader

#: Zero bytes after the last page: reading a record header's second word never runs past the data.
SLACK = 8
_MISSED_EVENTS = 1 << 31
_MISSED_STORED = 1 << 30
_COMMIT_MASK = (1 << 27) - 1

_T = TypeVar("_T")


def at_once(*calls: Callable[[], _T]) -> list[_T]:
    """Each call's result, the calls run at the same time: the first in this thread, each other
    in a thread of its own. For compiled work that lets go of the GIL (zstd): a second core
    works while this one does, as `trace-cmd report` uses one. A call's error is raised after
    every call has ended, the first call's first."""
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(len(calls) - 1) as pool:
        others = [pool.submit(call) for call in calls[1:]]
        first = calls[0]()
        return [first, *(other.result() for other in others)]


@dataclass
class Pages:
    """Whole pages of one or more per-CPU buffers, in one flat byte array."""

    data: np.ndarray  # uint8, n_pages * page_size, then SLACK zero bytes
    cpu: np.ndarray  # int16 per page
    header: PageHeader
    byte_order: str  # "<" or ">"

    @property
    def count(self) -> int:
        return len(self.cpu)


@dataclass
class Records:
    """Data records in page order: where each one's bytes are and when it was written."""

    page: np.ndarray  # int32 page index
    pos: np.ndarray  # int64 byte offset of the record's data in Pages.data
    ts: np.ndarray  # int64 ns on the trace clock
    length: np.ndarray  # int32 bytes of the record's data (as far as its page's commit end)
    missed_pages: np.ndarray  # page indexes whose header says events were lost before them
    missed_counts: np.ndarray  # int64 events lost (-1: the kernel did not count them)
    missed_ts: np.ndarray  # start time of each of those pages


def join_pages(blobs: list[tuple[int, bytes]], header: PageHeader, byte_order: str) -> Pages:
    """Per-CPU byte strings (whole pages) as one array; a torn last page is dropped."""
    size = header.page_size
    whole = [(cpu, blob[: len(blob) // size * size]) for cpu, blob in blobs]
    data = _end_to_end([b for _, b in whole])
    if data is None:
        data = np.frombuffer(b"".join([*(b for _, b in whole), bytes(SLACK)]), dtype=np.uint8)  # one copy
    cpu = np.concatenate([np.full(len(b) // size, c, dtype=np.int16) for c, b in whole] or [np.zeros(0, np.int16)])
    return Pages(data=data, cpu=cpu, header=header, byte_order=byte_order)


def _end_to_end(blobs: list) -> np.ndarray | None:
    """The blobs as one array without a copy, when they are views that already lie end to end
    in one array followed by SLACK zero bytes (as tracedat inflates them); else None."""
    if not blobs or not all(isinstance(b, memoryview) and isinstance(b.obj, np.ndarray) for b in blobs):
        return None
    root = blobs[0].obj
    base = root.__array_interface__["data"][0]
    starts = [np.frombuffer(b, np.uint8).__array_interface__["data"][0] - base if len(b) else -1 for b in blobs]
    ends = [start + len(b) for start, b in zip(starts, blobs)]
    if root.dtype != np.uint8 or root.ndim != 1 or any(b.obj is not root for b in blobs) or \
            starts[1:] != ends[:-1] or starts[0] < 0 or ends[-1] + SLACK > len(root) or root[ends[-1]:ends[-1] + SLACK].any():
        return None
    return root[starts[0]: ends[-1] + SLACK]


def read_uint(data: np.ndarray, pos: np.ndarray, size: int, byte_order: str, signed: bool = False) -> np.ndarray:
    """Integers of `size` bytes at each byte offset in `pos`, as int64 (u64 wraps, as C would)."""
    if size not in (1, 2, 4, 8):
        raise ValueError(f"no integer of {size} bytes")
    kind = "i" if signed else "u"
    if len(pos) and (pos.min() < 0 or pos.max() > len(data) - 8):
        pos = np.clip(pos, 0, len(data) - 8)  # a corrupt record reads garbage, never past the end
    aligned = min(size, 4)
    if len(pos) and not (pos & (aligned - 1)).any():
        return _aligned(data, pos, size, byte_order, kind)
    return byte_matrix(data, pos, size).view(f"{byte_order}{kind}{size}").ravel().astype(np.int64)


def _aligned(data: np.ndarray, pos: np.ndarray, size: int, byte_order: str, kind: str) -> np.ndarray:
    """`read_uint` through a typed view, when every offset is aligned (records are 4-aligned, so
    8-byte fields are read as two 4-byte halves)."""
    if size <= 4:
        view = data[: len(data) // size * size].view(f"{byte_order}{kind}{size}")
        return view[pos >> (size.bit_length() - 1)].astype(np.int64)
    words = data[: len(data) // 4 * 4].view(f"{byte_order}u4")
    index = pos >> 2
    first, second = words[index].astype(np.uint64), words[index + 1].astype(np.uint64)
    low, high = (first, second) if byte_order == "<" else (second, first)
    return (low | (high << np.uint64(32))).view(np.int64)


def _page_words(pages: Pages) -> tuple[np.ndarray, np.ndarray]:
    """Each page's start time and commit word."""
    h, start = pages.header, np.arange(pages.count, dtype=np.int64) * pages.header.page_size
    ts = read_uint(pages.data, start + h.timestamp_offset, 8, pages.byte_order)
    commit = read_uint(pages.data, start + h.commit_offset, h.commit_size, pages.byte_order)
    return ts, commit


def _compiled():
    """The compiled loops (pages.c) as cffi's (ffi, lib)."""
    return compiled_part("kptrace.read._pages", "page reader")


def record_headers(pages: Pages, size: np.ndarray, page_ts: np.ndarray, data_only: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Byte offset, time, type_len, data length (int32) and page (int32) of every record (data,
    padding, time) of the pages whose records take `size` bytes, in page order, from the compiled
    walk (pages.c). With `data_only`, only the data records, each offset that of its data (after
    its header).

    One pass into arrays long enough for a data record per 8 bytes (an intact data record takes
    8 or more): untouched, their excess costs no memory. Only damaged pages of many shorter
    records make the walk count first, then fill arrays of that length."""
    ffi, lib = _compiled()
    size, page_ts = np.ascontiguousarray(size, np.int64), np.ascontiguousarray(page_ts, np.int64)
    args = (ffi.from_buffer("uint8_t[]", pages.data), _swap(pages.byte_order), pages.byte_order == ">",
            pages.header.page_size, pages.header.data_offset, pages.count, ffi.from_buffer("int64_t[]", size),
            ffi.from_buffer("int64_t[]", page_ts), data_only)
    capacity = int(np.maximum(size, 0).sum()) // (8 if data_only else 4) + pages.count
    total = -1
    while total < 0:
        out = [np.empty(capacity, t) for t in (np.int64, np.int64, np.int8, np.int32, np.int32)]
        total = lib.walk_pages(*args, capacity, *(ffi.from_buffer(t, a, require_writable=True) for t, a in zip(
            ("int64_t[]", "int64_t[]", "int8_t[]", "int32_t[]", "int32_t[]"), out)))
        capacity = lib.walk_pages(*args, 0, *[ffi.NULL] * 5) if total < 0 else capacity
    return tuple(a[:total] for a in out)


def walk(pages: Pages) -> Records:
    """Every data record of every page, with its timestamp, and the pages that report losses."""
    page_ts, commit = _page_words(pages)
    size = np.minimum(commit & _COMMIT_MASK, pages.header.data_size)
    pos, ts, _, length, page = record_headers(pages, size, page_ts, data_only=True)
    missed = np.flatnonzero(commit & _MISSED_EVENTS)
    stored = (commit[missed] & _MISSED_STORED) != 0
    count_pos = missed * pages.header.page_size + pages.header.data_offset + size[missed]
    counts = np.full(len(missed), -1, dtype=np.int64)
    if stored.any():
        counts[stored] = read_uint(pages.data, count_pos[stored], pages.header.commit_size, pages.byte_order)
    return Records(page=page, pos=pos, ts=ts, length=length, missed_pages=missed, missed_counts=counts,
                   missed_ts=page_ts[missed])


def walk_in_time_order(pages: Pages) -> Records | None:
    """`walk`'s records in the order of a stable sort on time (records of equal time keep their
    page order), in one compiled pass (pages.c walk_in_time_order): each CPU's pages are in time
    order, so they are walked side by side and each record written at its place in time, not
    walked in page order into arrays that a sort of every time and a gather per field then
    reorder (on the benchmark trace, 1.44 M records: the walk's arrays alone are 36 MB of fresh
    memory). None when a page reports lost events (their markers are placed in page order), a
    CPU's times step back, or damaged pages hold more records than there is room for: the
    caller then walks in page order and sorts."""
    page_ts, commit = _page_words(pages)
    if (commit & _MISSED_EVENTS).any():
        return None
    ffi, lib = _compiled()
    size = np.ascontiguousarray(np.minimum(commit & _COMMIT_MASK, pages.header.data_size), np.int64)
    start = np.concatenate([[0], np.flatnonzero(pages.cpu[1:] != pages.cpu[:-1]) + 1, [pages.count]]).astype(np.int64)
    runs = len(start) - 1 if pages.count else 0
    capacity = int(np.maximum(size, 0).sum()) // 8 + pages.count
    out = [np.empty(capacity, t) for t in (np.int64, np.int64, np.int32, np.int32)]
    total = lib.walk_in_time_order(
        ffi.from_buffer("uint8_t[]", pages.data), _swap(pages.byte_order), pages.byte_order == ">",
        pages.header.page_size, pages.header.data_offset, ffi.from_buffer("int64_t[]", size),
        ffi.from_buffer("int64_t[]", np.ascontiguousarray(page_ts, np.int64)), ffi.from_buffer("int64_t[]", start), runs,
        capacity, ffi.new("struct walker[]", runs), ffi.new("int64_t[]", runs),
        *(ffi.from_buffer(t, a, require_writable=True) for t, a in zip(("int64_t[]", "int64_t[]", "int32_t[]",
                                                                        "int32_t[]"), out)))
    if total < 0:
        return None
    ts, pos, length, page = (a[:total] for a in out)
    nothing = np.zeros(0, np.int64)
    return Records(page=page, pos=pos, ts=ts, length=length, missed_pages=nothing, missed_counts=nothing,
                   missed_ts=nothing)


def copy_spans(data: np.ndarray, start: np.ndarray, length: np.ndarray, to: np.ndarray, out: np.ndarray) -> None:
    """`length[i]` bytes from each offset `start[i]` of `data` to offset `to[i]` of `out` (bytes
    outside the data as 0), by the compiled copy (pages.c), one memcpy each."""
    ffi, lib = _compiled()
    start, length, to = (np.ascontiguousarray(a, np.int64) for a in (start, length, to))
    if len(to) and (to.min() < 0 or (to + length).max() > out.nbytes):
        raise ValueError("spans copied past the end of their buffer")
    lib.copy_spans(ffi.from_buffer("uint8_t[]", data), len(data), *(ffi.from_buffer("int64_t[]", a)
                                                                      for a in (start, length, to)),
                   len(start), ffi.from_buffer("uint8_t[]", out, require_writable=True))


def byte_matrix(data: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """`width` bytes from each offset in `start`, one row each (bytes outside the data read as 0)."""
    out = np.empty((len(start), width), dtype=np.uint8)
    copy_spans(data, start, np.full(len(start), width, dtype=np.int64),
               np.arange(len(start), dtype=np.int64) * width, out)
    return out


#: Bytes after each type's records in `grouped` (GROUP_GAP in pages.c).
_GROUP_GAP = 64


@dataclass
class Grouped:
    """Records grouped by type: each type's records' data side by side in `pages`."""

    pages: Pages
    order: np.ndarray  # the records (indexes into the Records grouped), type by type, each in record order
    start: np.ndarray  # where each of them starts in pages.data, in that order
    bounds: np.ndarray  # type k's records are order[bounds[k]: bounds[k + 1]]


def grouped(pages: Pages, rec: Records, kind: np.ndarray, kinds: int) -> Grouped:
    """The records grouped by `kind` (uint32 type index, < kinds), each copied with its type's
    (pages.c group_records, a counting sort): reading one type's fields where they lie would
    cost a cache miss per record, for every field."""
    ffi, lib = _compiled()
    kind = np.ascontiguousarray(kind, np.uint32)
    length = np.ascontiguousarray(rec.length, np.int32)
    if len(kind) and kind.max() >= kinds:
        raise ValueError(f"a record of type {kind.max()}, past the {kinds} types")
    counts, sizes = np.zeros(kinds, np.int64), np.zeros(kinds, np.int64)
    lib.count_groups(ffi.from_buffer("int32_t[]", length), ffi.from_buffer("uint32_t[]", kind), len(kind),
                     *(ffi.from_buffer("int64_t[]", a, require_writable=True) for a in (counts, sizes)))
    bounds, first_byte = (np.concatenate([[0], np.cumsum(a)]).astype(np.int64) for a in (counts, sizes + _GROUP_GAP))
    data = np.empty(first_byte[-1] + SLACK, dtype=np.uint8)
    # Each type's gap and the slack zeroed, the only bytes the copy may leave unwritten: a damaged
    # record shorter than its fields then reads the same bytes on every run.
    data[(first_byte[1:, None] - _GROUP_GAP + np.arange(_GROUP_GAP)).ravel()] = 0
    data[first_byte[-1]:] = 0
    order, start = np.empty(len(kind), np.int64), np.empty(len(kind), np.int64)
    pos = np.ascontiguousarray(rec.pos, np.int64)
    lib.group_records(ffi.from_buffer("uint8_t[]", pages.data), len(pages.data), ffi.from_buffer("int64_t[]", pos),
                      ffi.from_buffer("int32_t[]", length), ffi.from_buffer("uint32_t[]", kind), len(kind),
                      *(ffi.from_buffer(t, a, require_writable=True) for t, a in (
                          ("int64_t[]", bounds[:-1].copy()), ("int64_t[]", first_byte[:-1].copy()),
                          ("int64_t[]", order), ("int64_t[]", start), ("uint8_t[]", data))))
    return Grouped(Pages(data=data, cpu=pages.cpu[:0], header=pages.header, byte_order=pages.byte_order),
                   order, start, bounds)


#: A type that goes to no family's table (NO_FAMILY in pages.c).
NO_FAMILY = 255


def family_places(kind: np.ndarray, bounds: np.ndarray, family: np.ndarray, families: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records of each family of types, in their own order, and where each grouped record
    goes among them, in one compiled pass (pages.c family_places) instead of a sort of each
    family's rows. `kind` is each record's type (< len(family)), `bounds` grouped's, `family`
    each type's family (< families, or NO_FAMILY). Returns the records (uint32; family f's are
    row[row_bounds[f]: row_bounds[f + 1]], ascending), row_bounds, and for each slot of
    grouped's order its row within its family (int64; not set for a type of no family)."""
    ffi, lib = _compiled()
    kind, family = np.ascontiguousarray(kind, np.uint32), np.ascontiguousarray(family, np.uint8)
    if len(family) != len(bounds) - 1 or (family[family != NO_FAMILY] >= families).any():
        raise ValueError("a family for each type, each below the count of families")
    sizes = np.bincount(family[family != NO_FAMILY], weights=np.diff(bounds)[family != NO_FAMILY],
                        minlength=families).astype(np.int64)
    row_bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    row, place = np.empty(row_bounds[-1], np.uint32), np.empty(len(kind), np.int64)
    lib.family_places(ffi.from_buffer("uint32_t[]", kind), len(kind),
                      ffi.from_buffer("int64_t[]", np.ascontiguousarray(bounds[:-1], np.int64).copy()),
                      ffi.from_buffer("uint8_t[]", family), ffi.from_buffer("int64_t[]", row_bounds[:-1].copy()),
                      ffi.from_buffer("int64_t[]", row_bounds[:-1].copy()),
                      *(ffi.from_buffer(t, a, require_writable=True) for t, a in (("uint32_t[]", row),
                                                                                   ("int64_t[]", place))))
    return row, row_bounds, place


def read_ints(pages: Pages, pos: np.ndarray, fields: list[Field], kinds: list[type] | None = None
              ) -> list[np.ndarray]:
    """Integer fields of every record at `pos`, as int64 (a u64 wraps) or as the numpy integer
    types `kinds` (cut as `astype` cuts), each record's fields read in one compiled pass where the
    records lie (pages.c); a field outside the data reads as 0. Narrow types are written
    narrow: no int64 column is filled only to be cast."""
    if any(f.size not in (1, 2, 4, 8) for f in fields):
        raise ValueError(f"no integer of {next(f.size for f in fields if f.size not in (1, 2, 4, 8))} bytes")
    ffi, lib = _compiled()
    pos = np.ascontiguousarray(pos, np.int64)
    kinds = [np.dtype(k) for k in (kinds or [np.int64] * len(fields))]
    out_at = np.cumsum([0, *(-(-k.itemsize * len(pos) // 8) * 8 for k in kinds)]).astype(np.int64)  # 8-aligned
    out = np.empty(int(out_at[-1]), dtype=np.uint8)
    offset = np.array([f.offset for f in fields], dtype=np.int64)
    width, signed, out_width = (np.array(v, dtype=np.int8) for v in (
        [f.size for f in fields], [f.signed for f in fields], [k.itemsize for k in kinds]))
    lib.read_ints(ffi.from_buffer("uint8_t[]", pages.data), len(pages.data), _swap(pages.byte_order),
                  ffi.from_buffer("int64_t[]", pos), len(pos), len(fields), ffi.from_buffer("int64_t[]", offset),
                  ffi.from_buffer("int8_t[]", width), ffi.from_buffer("int8_t[]", signed),
                  ffi.from_buffer("int8_t[]", out_width), ffi.from_buffer("int64_t[]", out_at[:-1].copy()),
                  ffi.from_buffer("uint8_t[]", out, require_writable=True))
    return [out[start: start + kind.itemsize * len(pos)].view(kind) for start, kind in zip(out_at[:-1], kinds)]


def _swap(byte_order: str) -> bool:
    """The data's byte order is not this machine's."""
    return (byte_order == ">") != (sys.byteorder == "big")


def distinct_keys(data: np.ndarray, start: np.ndarray, length: np.ndarray, cut_at_nul: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Records whose keys are equal, by hashing (pages.c). Record i's key is the bytes of spans
    data[start[k, i], + length[k, i]) for every row k (the part inside the data, and each span's
    length), or with `cut_at_nul` each span's text up to its first NUL. Returns each record's
    key number (uint32, in order of first appearance) and the first record of each key."""
    ffi, lib = _compiled()
    start, length = (np.ascontiguousarray(np.atleast_2d(a), np.int64) for a in (start, length))
    rows = start.shape[1]
    code, first, hashes = np.empty(rows, np.uint32), np.empty(rows, np.int64), np.empty(rows, np.uint64)
    slots = np.zeros(1 << max(4, (2 * rows).bit_length()), dtype=np.uint32)
    count = lib.distinct_keys(ffi.from_buffer("uint8_t[]", data), len(data), ffi.from_buffer("int64_t[]", start),
                              ffi.from_buffer("int64_t[]", length), rows, start.shape[0], cut_at_nul,
                              *(ffi.from_buffer(t, a, require_writable=True) for t, a in (
                                  ("uint32_t[]", code), ("int64_t[]", first), ("uint32_t[]", slots))),
                              len(slots), ffi.from_buffer("uint64_t[]", hashes, require_writable=True))
    return code, first[:count]


def small_codes(values: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of int32 or int64 `values`, all in [low, high] (a small range), in
    ascending order, and each value's index among them (uint32), by the compiled table (pages.c)."""
    ffi, lib = _compiled()
    values = np.ascontiguousarray(values)
    if values.dtype not in (np.int32, np.int64):
        raise ValueError(f"small_codes takes int32 or int64 values, not {values.dtype}")
    table, code = np.zeros(high - low + 1, np.uint32), np.empty(len(values), np.uint32)
    lib.small_codes(ffi.from_buffer(values), values.itemsize, len(values), low,
                    ffi.from_buffer("uint32_t[]", table, require_writable=True), len(table),
                    ffi.from_buffer("uint32_t[]", code, require_writable=True))
    return (np.flatnonzero(table) + low).astype(values.dtype), code


def field_span(pages: Pages, pos: np.ndarray, field: Field, limit: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Where a text or array field's bytes start in each record at `pos`, and how many there are
    (at most `limit`): a fixed array in place, a dynamic one where its location word says."""
    if not field.is_dynamic:
        return pos + field.offset, np.full(len(pos), min(field.size, limit), dtype=np.int64)
    (loc,) = read_ints(pages, pos, [Field(field.name, "u32", field.offset, 4, False)])
    start = pos + (loc & 0xFFFF) + (field.offset + field.size if field.type.startswith("__rel_loc") else 0)
    return start, np.minimum(loc >> 16, limit)


def read_field_ints(pages: Pages, pos: np.ndarray, field: Field) -> np.ndarray:
    return read_ints(pages, pos, [field])[0]


def read_field_bytes(pages: Pages, pos: np.ndarray, field: Field, limit: int = 256) -> np.ndarray:
    """A text or array field as fixed-width bytes (numpy `S` dtype), cut at the first NUL."""
    if field.is_dynamic:
        loc = read_uint(pages.data, pos + field.offset, 4, pages.byte_order)
        start = pos + (loc & 0xFFFF) + (field.offset + field.size if field.type.startswith("__rel_loc") else 0)
        length = loc >> 16
    else:
        start, length = pos + field.offset, np.full(len(pos), field.size, dtype=np.int64)
    width = int(min(max(int(length.max(initial=0)), 1), limit))
    raw = byte_matrix(pages.data, start, width)
    keep = np.arange(width) < length[:, None]
    if field.is_text:
        keep &= np.logical_and.accumulate(raw != 0, axis=1)
    raw[~keep] = 0
    return raw.view(f"S{width}").ravel()
