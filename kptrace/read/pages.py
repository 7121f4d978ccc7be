"""Walk ring-buffer pages: every record's time and place, for all pages at once.

A page is a header (start time, commit word) then records of 4-byte-aligned variable length,
each starting with a 32-bit word: 5 bits of type/length and 27 bits of time delta. Records
must be read in order within a page (each one's length says where the next starts): that
sequential step is compiled C (pages.c, built by pages_build.py), as is the copy of scattered
records' bytes side by side; reading their fields is numpy over all records of a type at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from kptrace.read.formats import Field, PageHeader

#: Zero bytes after the last page: reading the last header word, or a record's span up to
#: MAX_SPAN bytes, never runs past the data.
MAX_SPAN = 1024
SLACK = MAX_SPAN + 8
_MAX_DATA_TYPE = 28
_MISSED_EVENTS = 1 << 31
_MISSED_STORED = 1 << 30
_COMMIT_MASK = (1 << 27) - 1


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

    page: np.ndarray  # int64 page index
    pos: np.ndarray  # int64 byte offset of the record's data in Pages.data
    ts: np.ndarray  # int64 ns on the trace clock
    missed_pages: np.ndarray  # page indexes whose header says events were lost before them
    missed_counts: np.ndarray  # int64 events lost (-1: the kernel did not count them)
    missed_ts: np.ndarray  # start time of each of those pages


def join_pages(blobs: list[tuple[int, bytes]], header: PageHeader, byte_order: str) -> Pages:
    """Per-CPU byte strings (whole pages) as one array; a torn last page is dropped."""
    size = header.page_size
    whole = [(cpu, blob[: len(blob) // size * size]) for cpu, blob in blobs]
    data = np.frombuffer(b"".join([*(b for _, b in whole), bytes(SLACK)]), dtype=np.uint8)  # one copy
    cpu = np.concatenate([np.full(len(b) // size, c, dtype=np.int16) for c, b in whole] or [np.zeros(0, np.int16)])
    return Pages(data=data, cpu=cpu, header=header, byte_order=byte_order)


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
    try:
        from kptrace.read._pages import ffi, lib
    except ImportError:
        raise RuntimeError("kptrace's compiled page reader is not built (pip install kptrace, or "
                           "python kptrace/read/pages_build.py in a source checkout)") from None
    return ffi, lib


def record_headers(pages: Pages, size: np.ndarray, page_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte offset, time and type_len of every record (data, padding, time) of the pages whose
    records take `size` bytes, in page order, from the compiled walk (pages.c): one pass counts
    them, a second fills arrays of that length."""
    ffi, lib = _compiled()
    size, page_ts = np.ascontiguousarray(size, np.int64), np.ascontiguousarray(page_ts, np.int64)
    swap = (pages.byte_order == ">") != (sys.byteorder == "big")
    args = (ffi.from_buffer("uint8_t[]", pages.data), swap, pages.byte_order == ">", pages.header.page_size,
            pages.header.data_offset, pages.count, ffi.from_buffer("int64_t[]", size),
            ffi.from_buffer("int64_t[]", page_ts))
    total = lib.walk_pages(*args, ffi.NULL, ffi.NULL, ffi.NULL)
    offset, ts, type_len = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.int8)
    lib.walk_pages(*args, *(ffi.from_buffer(t, a, require_writable=True)
                            for t, a in (("int64_t[]", offset), ("int64_t[]", ts), ("int8_t[]", type_len))))
    return offset, ts, type_len


def walk(pages: Pages) -> Records:
    """Every data record of every page, with its timestamp, and the pages that report losses."""
    page_ts, commit = _page_words(pages)
    size = np.minimum(commit & _COMMIT_MASK, pages.header.data_size)
    offset, ts, type_len = record_headers(pages, size, page_ts)
    data = type_len <= _MAX_DATA_TYPE
    offset, ts, type_len = offset[data], ts[data], type_len[data]
    missed = np.flatnonzero(commit & _MISSED_EVENTS)
    stored = (commit[missed] & _MISSED_STORED) != 0
    count_pos = missed * pages.header.page_size + pages.header.data_offset + size[missed]
    counts = np.full(len(missed), -1, dtype=np.int64)
    if stored.any():
        counts[stored] = read_uint(pages.data, count_pos[stored], pages.header.commit_size, pages.byte_order)
    return Records(page=offset // pages.header.page_size, pos=offset + np.where(type_len == 0, 8, 4), ts=ts,
                   missed_pages=missed, missed_counts=counts, missed_ts=page_ts[missed])


def byte_matrix(data: np.ndarray, start: np.ndarray, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """`width` bytes from each offset in `start`, one row each (bytes outside the data read as 0),
    copied by the compiled gather (pages.c), one memcpy a row; into `out` (contiguous uint8 of
    len(start) * width bytes) when given."""
    out = np.empty((len(start), width), dtype=np.uint8) if out is None else out.reshape(len(start), width)
    ffi, lib = _compiled()
    start = np.ascontiguousarray(start, np.int64)
    lib.gather_rows(ffi.from_buffer("uint8_t[]", data), len(data), ffi.from_buffer("int64_t[]", start), len(start),
                    width, ffi.from_buffer("uint8_t[]", out, require_writable=True))
    return out


def record_span(pages: Pages, pos: np.ndarray, fields: tuple[Field, ...]) -> int:
    """Bytes from the start of these records that hold all their `fields`, dynamic arrays
    included (as far as `read_field_bytes` reads them)."""
    span = max((f.offset + f.size for f in fields), default=0)
    for f in fields:
        if f.is_dynamic and len(pos):
            loc = read_uint(pages.data, pos + f.offset, 4, pages.byte_order)
            start = (loc & 0xFFFF) + (f.offset + f.size if f.type.startswith("__rel_loc") else 0)
            span = max(span, int((start + np.minimum(loc >> 16, 256)).max()))
    return span


def gathered(pages: Pages, pos: np.ndarray, span: int) -> tuple[Pages, np.ndarray]:
    """The first `span` bytes of each record copied side by side (8-aligned, so each field keeps
    its alignment), and their new offsets: one pass over scattered records, after which every
    field of them is read from memory the cache already holds."""
    stride = -(-span // 8) * 8
    data = np.zeros(len(pos) * stride + SLACK, dtype=np.uint8)
    byte_matrix(pages.data, pos, stride, out=data[: len(pos) * stride])
    return Pages(data=data, cpu=pages.cpu[:0], header=pages.header, byte_order=pages.byte_order), \
        np.arange(len(pos), dtype=np.int64) * stride


def read_fields_native(pages: Pages, pos: np.ndarray, fields: list[Field]) -> list[np.ndarray]:
    """Several integer fields of every record, each in its own width, from one gather of the
    bytes they span (the common fields every record starts with are read this way)."""
    low = min(f.offset for f in fields)
    block = byte_matrix(pages.data, pos + low, max(f.offset + f.size for f in fields) - low)
    return [np.ascontiguousarray(block[:, f.offset - low: f.offset - low + f.size])
            .view(f"{pages.byte_order}{'i' if f.signed else 'u'}{f.size}").ravel() for f in fields]


def read_field_ints(pages: Pages, pos: np.ndarray, field: Field) -> np.ndarray:
    return read_uint(pages.data, pos + field.offset, field.size, pages.byte_order, field.signed)


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
