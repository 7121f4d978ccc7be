"""The compiled page walk (kptrace/read/walk.c) against pages whose records are known.

Each test writes ring-buffer pages from a list of records drawn at random (data records short
and long, time extends, absolute time stamps, discarded-event padding, end-of-page padding,
lost-events flags), in either byte order and with a 4- or 8-byte commit word, and remembers
where each data record's bytes start and what time it carries: the walk must find exactly
those. Damaged pages (random bytes) must give records that start inside their pages, never a hang.
The compiled gather of record bytes must equal plain slicing, zeros outside the data; the
compiled field reads, grouping by type, placing of each family's records and hashing of keys must
equal plain Python doing the same, and the walk straight into time order the walk in page order then sorted.
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.read.formats import Field, PageHeader
from kptrace.read.pages import (NO_FAMILY, Pages, Records, byte_matrix, distinct_keys, family_places, grouped,
                                join_pages, read_ints, small_codes, walk, walk_in_time_order)

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


def test_pages_of_zeros_give_a_record_every_four_bytes():
    """A zero word is a long record (type_len 0) stating no length, so the walk steps 4 bytes: more
    records than the walk makes room for at first (one per 8 bytes), so it counts, then walks again."""
    header = PageHeader(timestamp_offset=0, commit_offset=8, commit_size=8, data_offset=16, data_size=PAGE_SIZE - 16)
    page = struct.pack("<QQ", 5, header.data_size).ljust(PAGE_SIZE, b"\0")
    records = walk(join_pages([(0, page * 3)], header, "<"))
    steps = np.arange(header.data_size // 4)
    expected = np.concatenate([p * PAGE_SIZE + header.data_offset + 8 + 4 * steps for p in range(3)])
    assert records.pos.tolist() == expected.tolist()
    assert (records.ts == 5).all() and (records.length == 0).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(-80, 80), max_size=20), st.integers(1, 24))
def test_gathered_rows_equal_slices_of_the_data_with_zeros_outside_it(data, starts, width):
    rows = byte_matrix(np.frombuffer(data, np.uint8), np.array(starts, dtype=np.int64), width)
    expected = [bytes(data[i] if 0 <= i < len(data) else 0 for i in range(start, start + width)) for start in starts]
    assert rows.shape == (len(starts), width) and [row.tobytes() for row in rows] == expected


def _plain_int(data: bytes, at: int, size: int, signed: bool, order: str) -> int:
    """What read_ints must give: the integer at `at`, 0 when any of its bytes is outside the data."""
    if at < 0 or at + size > len(data):
        return 0
    value = int.from_bytes(data[at: at + size], "big" if order == ">" else "little", signed=signed)
    return value - (1 << 64) if value >= 1 << 63 else value  # a u64 wraps into int64


_fields = st.lists(st.tuples(st.integers(0, 40), st.sampled_from([1, 2, 4, 8]), st.booleans()), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(-16, 80), max_size=20), _fields, st.sampled_from(["<", ">"]))
def test_compiled_integer_reads_equal_plain_decoding_in_either_byte_order(data, starts, fields, order):
    pages = Pages(data=np.frombuffer(data, np.uint8), cpu=np.zeros(0, np.int16), header=None, byte_order=order)
    spec = [Field(f"f{i}", "int", offset, size, signed) for i, (offset, size, signed) in enumerate(fields)]
    got = read_ints(pages, np.array(starts, dtype=np.int64), spec)
    assert [column.tolist() for column in got] == [
        [_plain_int(data, start + f.offset, f.size, f.signed, order) for start in starts] for f in spec]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 1200), _fields, st.sampled_from(["<", ">"]))
def test_integer_reads_of_many_records_equal_plain_decoding_across_the_compiled_blocks(seed, rows, fields, order):
    """More records than one block of the compiled read (256): every block's values land at its rows."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    starts = rng.integers(-16, 520, rows)
    pages = Pages(data=np.frombuffer(data, np.uint8), cpu=np.zeros(0, np.int16), header=None, byte_order=order)
    spec = [Field(f"f{i}", "int", offset, size, signed) for i, (offset, size, signed) in enumerate(fields)]
    got = read_ints(pages, starts.astype(np.int64), spec, [np.int32] * len(spec))
    assert [column.tolist() for column in got] == [
        [int(np.int64(_plain_int(data, start + f.offset, f.size, f.signed, order)).astype(np.int32))
         for start in starts.tolist()] for f in spec]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(-16, 80), max_size=20), _fields,
       st.lists(st.sampled_from([np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64]), min_size=5, max_size=5))
def test_integer_reads_into_narrow_types_equal_the_int64_reads_cast(data, starts, fields, kinds):
    pages = Pages(data=np.frombuffer(data, np.uint8), cpu=np.zeros(0, np.int16), header=None, byte_order="<")
    spec = [Field(f"f{i}", "int", offset, size, signed) for i, (offset, size, signed) in enumerate(fields)]
    pos = np.array(starts, dtype=np.int64)
    got = read_ints(pages, pos, spec, kinds[:len(spec)])
    wide = read_ints(pages, pos, spec)
    assert [(g.dtype, g.tolist()) for g in got] == [(np.dtype(k), w.astype(k).tolist()) for w, k in zip(wide, kinds)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.binary(max_size=12)), max_size=30))
def test_grouping_by_type_keeps_each_types_records_in_order_with_their_bytes(records):
    """Each record's bytes (4-aligned in the pages, as the ring buffer keeps them) copied with its
    type's, types in index order, each type's records in their own order."""
    blobs = [body.ljust(-(-len(body) // 4) * 4, b"\0") for _, body in records]
    pos = np.cumsum([0, *(len(b) for b in blobs)])[:-1].astype(np.int64)
    data = np.frombuffer(b"".join(blobs) + bytes(8), np.uint8)
    rec = Records(page=np.zeros(len(blobs), np.int64), pos=pos, ts=np.zeros(len(blobs), np.int64),
                  length=np.array([len(b) for b in blobs], dtype=np.int64), missed_pages=np.zeros(0, np.int64),
                  missed_counts=np.zeros(0, np.int64), missed_ts=np.zeros(0, np.int64))
    kind = np.array([k for k, _ in records], dtype=np.uint32)
    out = grouped(Pages(data=data, cpu=np.zeros(0, np.int16), header=None, byte_order="<"), rec, kind, 5)
    expected = [i for k in range(5) for i, (t, _) in enumerate(records) if t == k]
    assert out.order.tolist() == expected
    assert out.bounds.tolist() == np.cumsum([0, *(sum(t == k for t, _ in records) for k in range(5))]).tolist()
    copied = out.pages.data.tobytes()
    assert [copied[at: at + len(blobs[i])] for at, i in zip(out.start.tolist(), expected)] == [blobs[i] for i in expected]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=40),
       st.lists(st.sampled_from([0, 1, 2, NO_FAMILY]), min_size=6, max_size=6))
def test_family_places_equal_a_sort_of_each_familys_records(kinds, family):
    """Types 0-5 in families 0-2 (or none): each family's records ascend, and each grouped
    record's place is its index among its family's records."""
    kind = np.array(kinds, dtype=np.uint32)
    bounds = np.cumsum([0, *(kinds.count(k) for k in range(6))]).astype(np.int64)
    row, row_bounds, place = family_places(kind, bounds, np.array(family, dtype=np.uint8), 3)
    order = [i for k in range(6) for i, t in enumerate(kinds) if t == k]  # grouped's order
    for f in range(3):
        members = [i for i, t in enumerate(kinds) if family[t] == f]
        assert row[row_bounds[f]: row_bounds[f + 1]].tolist() == members
        slots = [s for s, i in enumerate(order) if family[kinds[i]] == f]
        assert [place[s] for s in slots] == [members.index(order[s]) for s in slots]
    assert row_bounds[-1] == sum(family[t] != NO_FAMILY for t in kinds)


def test_grouping_gives_the_same_bytes_whatever_memory_it_was_given():
    """Long records (copied exactly, not in 64-byte moves) leave their type's gap unwritten by the
    copy: it must not keep what the memory held before, or a damaged record shorter than its
    fields would read different values on each run."""
    blobs = [bytes([i + 1]) * (72 + 8 * i) for i in range(6)]
    pos = np.cumsum([0, *(len(b) for b in blobs)])[:-1].astype(np.int64)
    data = np.frombuffer(b"".join(blobs) + bytes(8), np.uint8)
    rec = Records(page=np.zeros(6, np.int64), pos=pos, ts=np.zeros(6, np.int64),
                  length=np.array([len(b) for b in blobs], dtype=np.int64), missed_pages=np.zeros(0, np.int64),
                  missed_counts=np.zeros(0, np.int64), missed_ts=np.zeros(0, np.int64))
    pages = Pages(data=data, cpu=np.zeros(0, np.int16), header=None, byte_order="<")
    kind = np.array([0, 1, 0, 2, 1, 2], dtype=np.uint32)
    results = []
    for garbage in (0xAA, 0x55):
        # freed at once: numpy's cache of small blocks hands it to the next array of that size (the grouping's)
        np.full(len(data) + 3 * 64, garbage, np.uint8)
        results.append(grouped(pages, rec, kind, 3).pages.data.tobytes())
    assert results[0] == results[1]


def _plain_key(data: bytes, spans: list[tuple[int, int]], cut: bool) -> tuple:
    """What makes two keys equal: each span's bytes inside the data (up to a NUL when `cut`),
    and, uncut, each span's stated length."""
    key = []
    for start, length in spans:
        inside = data[max(start, 0): max(start + length, 0)] if start < len(data) else b""
        key.append(inside.partition(b"\0")[0] if cut else (length, inside))
    return tuple(key)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=24).map(lambda b: b * 3), st.data(), st.booleans())
def test_records_share_a_key_number_exactly_when_their_keys_are_equal(data, draw, cut):
    spans = draw.draw(st.integers(1, 3))
    drawn = draw.draw(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, len(data) + 4), st.integers(0, 8)),
                                                  min_size=spans, max_size=spans), st.integers(1, 3)), max_size=30))
    rows = [row for row, times in drawn for _ in range(times)]  # a key may repeat the one before it
    start = np.array([[r[k][0] for r in rows] for k in range(spans)], dtype=np.int64).reshape(spans, len(rows))
    length = np.array([[r[k][1] for r in rows] for k in range(spans)], dtype=np.int64).reshape(spans, len(rows))
    code, first = distinct_keys(np.frombuffer(data, np.uint8), start, length, cut_at_nul=cut)
    keys = [_plain_key(data, row, cut) for row in rows]
    distinct = list(dict.fromkeys(keys))  # numbered in order of first appearance
    assert code.tolist() == [distinct.index(key) for key in keys]
    assert first.tolist() == [keys.index(key) for key in distinct]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=40), st.integers(0, 6),
       st.sampled_from([np.int32, np.int64]))
def test_small_integer_codes_number_the_distinct_values_in_ascending_order(values, spread, kind):
    values = np.array(values, dtype=np.int64) % (1 << spread) + (values[0] if kind == np.int64 else -3)
    values = values.astype(kind)
    distinct, code = small_codes(values, int(values.min()), int(values.max()))
    assert distinct.dtype == kind and distinct.tolist() == sorted(set(values.tolist()))
    assert distinct[code].tolist() == values.tolist()


#: Pages whose records often share a time with another CPU's: small start times and deltas.
_close_page = st.tuples(st.integers(0, 4), st.lists(st.tuples(st.just("data"), st.integers(0, 2),
                                                              st.integers(1, 4).map(lambda n: 4 * n)), max_size=8),
                        st.sampled_from(["none", "none", "uncounted"]), st.booleans())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_page | _close_page, max_size=4), max_size=4), st.booleans(), st.sampled_from(["<", ">"]),
       st.sampled_from([4, 8]))
def test_the_walk_in_time_order_equals_the_walk_then_a_stable_sort_on_time(cpus, in_order, order, commit_size):
    """Each CPU's pages walked side by side into time order (ties in page order): the records of
    a walk in page order, stably sorted on time, with their offsets, lengths and pages. None when
    a page reports lost events or a CPU's times step back (the caller then sorts)."""
    blobs = []
    for cpu, pages in enumerate(cpus):
        if in_order:  # pages in time order, as the kernel writes them
            pages = [(ts, *rest) for ts, (_, *rest) in zip(sorted(p[0] for p in pages), pages)]
        built = _pages(pages, order, commit_size)[0]
        blobs.append((cpu % 2, built.data[: built.count * PAGE_SIZE].tobytes()))  # two CPU ids, alternating
    header = _pages([], order, commit_size)[0].header
    pages = join_pages(blobs, header, order)
    walked, got = walk(pages), walk_in_time_order(pages)
    run_of_page = np.cumsum(np.r_[0, pages.cpu[1:] != pages.cpu[:-1]])  # a run: pages of one CPU in a row
    run = run_of_page[walked.page]
    steps_back = bool(((np.diff(walked.ts) < 0) & (np.diff(run) == 0)).any())
    if len(walked.missed_pages) or steps_back:
        assert got is None
        return
    by_time = np.argsort(walked.ts, kind="stable")
    for name in ("ts", "pos", "length", "page"):
        assert getattr(got, name).tolist() == getattr(walked, name)[by_time].tolist(), name
    assert not len(got.missed_pages)
