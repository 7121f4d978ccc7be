"""The compiled page walk (kptrace/read/walk.c) against pages whose records are known.

Each test writes ring-buffer pages from a list of records drawn at random (data records short
and long, time extends, absolute time stamps, discarded-event padding, end-of-page padding,
lost-events flags), in either byte order and with a 4- or 8-byte commit word, and remembers
where each data record's bytes start and what time it carries: the walk must find exactly
those. Damaged pages (random bytes) must give records that start inside their pages, never a hang.
The compiled gather of record bytes must equal plain slicing, zeros outside the data.
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.read.formats import PageHeader
from kptrace.read.pages import byte_matrix, join_pages, walk

PAGE_SIZE = 512
_MISSED, _STORED = 1 << 31, 1 << 30

#: (kind, delta, value): "data" value = payload bytes (4-aligned); "extend" value = delta's
#: high bits; "stamp" value = bits 27..58 of the absolute time; "discard" value = bytes skipped.
_record = st.one_of(
    st.tuples(st.just("data"), st.integers(0, (1 << 27) - 1), st.integers(1, 60).map(lambda n: 4 * n)),
    st.tuples(st.just("extend"), st.integers(0, (1 << 27) - 1), st.integers(0, (1 << 20))),
    st.tuples(st.just("stamp"), st.integers(0, (1 << 27) - 1), st.integers(0, (1 << 31))),
    st.tuples(st.just("discard"), st.integers(1, (1 << 27) - 1), st.integers(1, 6).map(lambda n: 4 * n)),
)
_page = st.tuples(st.integers(0, (1 << 62)), st.lists(_record, max_size=14),
                  st.sampled_from(["none", "uncounted", "counted"]), st.booleans())


def _header_word(type_len: int, delta: int, order: str) -> bytes:
    """A record header word: type_len in the low 5 bits (little endian) or the top 5 (big)."""
    word = (type_len << 27) | delta if order == ">" else (delta << 5) | type_len
    return struct.pack(order + "I", word)


def _encode(page_ts: int, records: list, order: str, page_start: int, data_offset: int
            ) -> tuple[bytes, list[tuple[int, int]]]:
    """One page's record bytes (up to the data size) and each data record's (byte offset, time)."""
    body, expected, now = b"", [], page_ts
    for kind, delta, value in records:
        size = {"data": 4 + value + (4 if value > 112 else 0), "extend": 8, "stamp": 8, "discard": 4 + value}[kind]
        if data_offset + len(body) + size > PAGE_SIZE:
            break
        at = page_start + data_offset + len(body)
        if kind == "data" and value <= 112:  # short: the length in type_len, the payload next
            body += _header_word(value // 4, delta, order) + bytes(value)
            now += delta
            expected.append((at + 4, now))
        elif kind == "data":  # long: type_len 0, then the length (payload + 4) in a word
            body += _header_word(0, delta, order) + struct.pack(order + "I", value + 4) + bytes(value)
            now += delta
            expected.append((at + 8, now))
        elif kind == "extend":
            body += _header_word(30, delta, order) + struct.pack(order + "I", value)
            now += delta + (value << 27)
        elif kind == "stamp":
            body += _header_word(31, delta, order) + struct.pack(order + "I", value)
            now = (page_ts & ~((1 << 59) - 1)) | (value << 27) | delta
        else:  # an event discarded after it was reserved: padding with its length, time counted
            body += _header_word(29, delta, order) + struct.pack(order + "I", value) + bytes(value - 4)
            now += delta
    return body, expected


def _pages(pages: list, order: str, commit_size: int):
    header = PageHeader(timestamp_offset=0, commit_offset=8, commit_size=commit_size,
                        data_offset=8 + commit_size, data_size=PAGE_SIZE - 8 - commit_size)
    blob, expected, lost = b"", [], []
    for index, (page_ts, records, missed, end_padding) in enumerate(pages):
        body, found = _encode(page_ts, records, order, index * PAGE_SIZE, header.data_offset)
        if end_padding and len(body) + 4 <= header.data_size:
            body += _header_word(29, 0, order)  # the rest of the page is empty
        commit = len(body) | {"none": 0, "uncounted": _MISSED, "counted": _MISSED | _STORED}[missed]
        if missed == "counted" and len(body) + commit_size <= header.data_size:
            body += (index + 7).to_bytes(commit_size, "big" if order == ">" else "little")
        elif missed == "counted":
            commit &= ~_STORED
        page = struct.pack(order + "Q", page_ts) + commit.to_bytes(commit_size, "big" if order == ">" else "little")
        blob += (page + body).ljust(PAGE_SIZE, b"\0")
        expected += found
        if missed != "none":
            lost.append((index, index + 7 if commit & _STORED else -1, page_ts))
    return join_pages([(0, blob)], header, order), expected, lost


@settings(max_examples=200, deadline=None)
@given(st.lists(_page, max_size=6), st.sampled_from(["<", ">"]), st.sampled_from([4, 8]))
def test_walk_finds_every_data_record_where_it_was_written_with_its_time(pages, order, commit_size):
    written, expected, lost = _pages(pages, order, commit_size)
    records = walk(written)
    assert list(zip(records.pos.tolist(), records.ts.tolist())) == [(at, t - (1 << 64) if t >= 1 << 63 else t)
                                                                      for at, t in expected]
    assert (records.page == records.pos // PAGE_SIZE).all()
    assert list(zip(records.missed_pages.tolist(), records.missed_counts.tolist(), records.missed_ts.tolist())) == lost


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=PAGE_SIZE, max_size=4 * PAGE_SIZE), st.sampled_from(["<", ">"]))
def test_damaged_pages_give_records_that_start_inside_their_own_page(blob, order):
    """A record's header is in its page; its data (4 or 8 bytes on) may run past a damaged one."""
    header = PageHeader(timestamp_offset=0, commit_offset=8, commit_size=8, data_offset=16, data_size=PAGE_SIZE - 16)
    records = walk(join_pages([(0, blob)], header, order))
    start = records.page * PAGE_SIZE
    assert ((records.pos >= start + header.data_offset + 4) & (records.pos <= start + PAGE_SIZE + 4)).all()
    assert (np.diff(records.pos) > 0).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(-80, 80), max_size=20), st.integers(1, 24))
def test_gathered_rows_equal_slices_of_the_data_with_zeros_outside_it(data, starts, width):
    rows = byte_matrix(np.frombuffer(data, np.uint8), np.array(starts, dtype=np.int64), width)
    expected = [bytes(data[i] if 0 <= i < len(data) else 0 for i in range(start, start + width)) for start in starts]
    assert rows.shape == (len(starts), width) and [row.tobytes() for row in rows] == expected
