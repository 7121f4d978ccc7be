"""Native binary readers (trace.dat v6/v7, raw ring-buffer pages) against the text of the same data.

The recordings in tests/data/binary/ were made on a real two-CPU machine by record.sh; each
trace.dat comes with `trace-cmd report -N -t` of itself, and the raw pages with the instance's
`trace` file read before the pages were consumed. The native table must hold exactly the rows
the text readers get from that text: every event, timestamp and typed field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import zstandard

from kptrace.errors import TraceError
from kptrace.normalize import normalize
from kptrace.read import read_any, read_text_trace
from kptrace.schema import EVENT_COLUMNS

DATA = Path(__file__).parent / "data" / "binary"
FLAGS = ("irqs_off", "bh_off", "need_resched", "in_hardirq", "in_softirq", "in_nmi", "preempt_depth")
#: Columns the text cannot be compared on: trace-cmd report prints no tgid and no flags without
#: -l, and prints unknown events through their print format (the native `fields` are name=value).
NOT_IN_REPORT = {"tgid", "fields", "subsystem", *FLAGS}
RECORDINGS = ["v6", "v7-zstd", "v7-none", "v7-drops", "v6-extend"]


def _unpacked(name: str, tmp_path: Path) -> Path:
    """The recording as trace-cmd wrote it (some are committed zstd-compressed)."""
    plain = DATA / name
    if plain.exists():
        return plain
    out = tmp_path / name
    with open(DATA / f"{name}.zst", "rb") as src, open(out, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    return out


def _comparable(rows: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """The rows as strings, sorted on every column: equal frames hold equal multisets of rows."""
    rows = rows.with_columns([pl.lit(None).alias(c) for c in columns if c not in rows.columns])
    return rows.select([pl.col(c).cast(pl.String) for c in columns]).sort(columns, nulls_last=True)


def _assert_same_rows(native: pl.DataFrame, text: pl.DataFrame, skip: set[str]) -> None:
    columns = [c.name for c in EVENT_COLUMNS if c.name not in skip]
    a, b = _comparable(native, columns), _comparable(text, columns)
    assert a.height == b.height
    for column in columns:
        diff = pl.DataFrame({"native": a[column], "text": b[column]}).filter(
            pl.col("native").ne_missing(pl.col("text")))
        assert diff.height == 0, f"{column} differs:\n{diff.head()}"


@pytest.mark.parametrize("name", RECORDINGS)
def test_trace_dat_rows_equal_trace_cmd_report_of_the_same_file(name, tmp_path):
    native = read_any(_unpacked(f"{name}.dat", tmp_path))
    text = read_text_trace(DATA / f"{name}.report.txt.zst")
    assert native.source_format == "trace.dat"
    _assert_same_rows(native.rows, text.rows, NOT_IN_REPORT)
    known = text.rows.filter(pl.col("subsystem") != "unknown")
    # Subsystems: the report names only the ones kptrace knows; those must agree.
    as_text = [pl.col("event").cast(pl.String), pl.col("subsystem").cast(pl.String)]
    pairs = native.rows.select(as_text).unique().join(known.select(as_text).unique(), on="event", suffix="_text")
    assert (pairs["subsystem"] == pairs["subsystem_text"]).all()


def test_trace_dat_keeps_nanoseconds_and_both_instances(tmp_path):
    rows = read_any(_unpacked("v7-zstd.dat", tmp_path)).rows.filter(pl.col("subsystem") != "kptrace")
    assert (rows["ts"] % 1000 != 0).mean() > 0.9
    assert rows["ts_resolution_ns"].unique().to_list() == [1]
    # kptbin-b alone traced timer events; kptbin-a alone traced syscalls; both ran on two CPUs.
    assert {"hrtimer_start", "sys_enter_read"} <= set(rows["event"].cast(pl.String))
    assert sorted(rows["cpu"].unique().to_list()) == [0, 1]


def test_time_extends_carry_gaps_longer_than_the_27_bit_delta(tmp_path):
    rows = read_any(_unpacked("v6-extend.dat", tmp_path)).rows
    gaps = rows["ts"].diff().drop_nulls()
    assert (gaps > (1 << 27)).all()
    assert rows["count"].to_list() == [12345] * 4


def test_lost_events_are_accounted_per_cpu_as_the_text_reader_does(tmp_path):
    native = normalize(read_any(_unpacked("v7-drops.dat", tmp_path))).meta
    text = normalize(read_text_trace(DATA / "v7-drops.report.txt.zst")).meta
    assert sum(c["lost_markers"] for c in native["per_cpu"]) > 0
    assert native["per_cpu"] == text["per_cpu"]


def test_unknown_events_keep_their_fields_in_name_value_form(tmp_path):
    native = read_any(_unpacked("v7-zstd.dat", tmp_path)).rows.filter(pl.col("event") == "hrtimer_start")
    text = read_text_trace(DATA / "v7-zstd.report.txt.zst").rows.filter(pl.col("event") == "hrtimer_start")
    assert native.height == text.height > 0
    expires = r"expires=(\d+)"
    assert (native.sort("ts")["fields"].str.extract(expires).to_list()
            == text.sort("ts")["fields"].str.extract(expires).to_list())
    assert native["fields"].str.contains(r"^hrtimer=\d+ function=\d+ expires=\d+ softexpires=\d+ mode=\d+").all()


def test_raw_pages_equal_the_instance_trace_text_with_flags():
    native = read_any(DATA / "raw")
    text = read_text_trace(DATA / "raw.tracefs.txt.zst")
    assert native.source_format == "raw-pages"
    # tracefs text prints microseconds (rounded to nearest, kernel ns2usecs) and task names from
    # the kernel's cmdline cache.
    rows = native.rows.with_columns((pl.col("ts") + 500) // 1000 * 1000)
    _assert_same_rows(rows, text.rows, {"tgid", "fields", "subsystem", "comm"})


def test_raw_pages_are_read_from_a_bundle_in_the_collector_layout(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DATA / "raw", bundle / "raw")
    (bundle / "manifest.json").write_text('{"files": {}}')
    raw = read_any(bundle)
    assert raw.source_format.startswith("kptrace-bundle (raw-pages")
    assert raw.rows.height == read_any(DATA / "raw").rows.height


def test_a_torn_last_page_of_a_raw_cpu_file_is_left_out_with_a_warning(tmp_path):
    """The CPU files are read end to end into one array; a file whose last page is torn breaks
    that layout (its whole pages end before the next file starts), and its rows must still be
    exactly those of its whole pages, with a warning naming the bytes left out."""
    raw = tmp_path / "raw"
    shutil.copytree(DATA / "raw", raw)
    with open(raw / "cpu0.raw", "ab") as cpu0:
        cpu0.write(bytes(1000))
    torn = read_any(raw)
    assert torn.rows.equals(read_any(DATA / "raw").rows)
    assert any("cpu0.raw: 1000 bytes after the last whole page ignored" in w for w in torn.warnings)


@pytest.mark.parametrize("name", ["v7-none.dat", "v7-zstd.dat", "v6.dat"])
@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_trace_dat_is_a_one_line_error(name, keep, tmp_path):
    data = _unpacked(name, tmp_path).read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TraceError) as error:
        read_any(cut)
    assert "trace.dat" in str(error.value) and "\n" not in str(error.value)


def test_corrupt_pages_give_rows_or_a_one_line_error_never_a_traceback(tmp_path):
    """Random bytes over half of every page: records are garbage, but reading must not crash."""
    import numpy as np

    raw = tmp_path / "raw"
    shutil.copytree(DATA / "raw", raw)
    rng = np.random.default_rng(7)
    for cpu_file in raw.glob("cpu*.raw"):
        pages = np.frombuffer(cpu_file.read_bytes(), dtype=np.uint8).copy().reshape(-1, 4096)
        pages[:, 2048:] = rng.integers(0, 256, size=(pages.shape[0], 2048), dtype=np.uint8)
        pages[::3, 8:16] = rng.integers(0, 256, size=(len(pages[::3]), 8), dtype=np.uint8)  # commit words
        cpu_file.write_bytes(pages.tobytes())
    try:
        rows = read_any(raw).rows
    except TraceError as error:
        assert "\n" not in str(error)
    else:
        assert rows.height > 0


def test_damaged_compressed_chunks_are_a_one_line_error(tmp_path):
    data = bytearray((DATA / "v7-zstd.dat").read_bytes())
    data[-3000:-2000] = bytes(1000)  # zeroes over the last compressed page chunks
    damaged = tmp_path / "damaged.dat"
    damaged.write_bytes(bytes(data))
    with pytest.raises(TraceError) as error:
        read_any(damaged)
    assert "trace.dat" in str(error.value) and "\n" not in str(error.value)


def test_a_chunk_shorter_than_stated_leaves_no_gap_in_its_pages(tmp_path, monkeypatch):
    """A version 7 page chunk that inflates to fewer bytes than its list states: the pages of the
    next chunk follow it directly (the chunks are inflated at once at their stated places, then
    moved up), so every row is the same as when the sizes are stated right."""
    from kptrace.read import tracedat
    lists, chunk_list = [], tracedat._chunk_list
    monkeypatch.setattr(tracedat, "_chunk_list", lambda c: lists.append(c.pos) or chunk_list(c))
    original = read_any(DATA / "v7-zstd.dat").rows
    monkeypatch.undo()
    data = bytearray((DATA / "v7-zstd.dat").read_bytes())
    several = [at for at in lists if int.from_bytes(data[at: at + 4], "little") > 1]
    assert several
    for at in several:  # the first chunk of each list of two or more states a page more than it holds
        stated = at + 8  # after the list's count and the chunk's packed size
        data[stated: stated + 4] = (int.from_bytes(data[stated: stated + 4], "little") + 4096).to_bytes(4, "little")
    changed = tmp_path / "stated-longer.dat"
    changed.write_bytes(bytes(data))
    assert read_any(changed).rows.equals(original)


def test_a_compressed_trace_dat_is_recognised_by_its_first_bytes_after_decompression(tmp_path):
    compressed = read_any(DATA / "v6.dat.zst")
    assert compressed.source_format == "trace.dat"
    assert compressed.rows.equals(read_any(_unpacked("v6.dat", tmp_path)).rows)


def _big_endian(capture):
    """The capture's pages re-encoded as a big-endian kernel writes them (derived from the real
    little-endian recording, not recorded): page header words, record header words (type_len in
    the top 5 bits), and every integer field of every record byte-swapped; strings unchanged."""
    import dataclasses

    import numpy as np

    from kptrace.read.pages import _MISSED_EVENTS, _MISSED_STORED, _page_words, join_pages, record_headers, walk

    h = capture.header
    blobs = [(cpu, blob) for _, per_cpu in capture.buffers for cpu, blob in per_cpu]
    pages = join_pages(blobs, h, "<")
    out = pages.data.copy()

    def swap(at: np.ndarray, size: int) -> None:
        index = at[:, None] + np.arange(size)
        out[index] = pages.data[index][:, ::-1]

    starts = np.arange(pages.count, dtype=np.int64) * h.page_size
    page_ts, commit = _page_words(pages)
    swap(starts + h.timestamp_offset, 8)
    swap(starts + h.commit_offset, h.commit_size)
    stored = np.flatnonzero((commit & _MISSED_EVENTS) & (commit & _MISSED_STORED))
    swap(stored * h.page_size + h.data_offset + (commit[stored] & ((1 << 27) - 1)), h.commit_size)
    header = record_headers(pages, np.minimum(commit & ((1 << 27) - 1), h.data_size), page_ts)[0]
    word = pages.data[: len(pages.data) // 4 * 4].view("<u4")[header // 4].astype(np.uint32)
    swapped = (((word & 31) << 27) | (word >> 5)).astype(">u4")
    out[header[:, None] + np.arange(4)] = swapped.view(np.uint8).reshape(-1, 4)
    with_array = ((word & 31) == 0) | ((word & 31) >= 29)
    swap(header[with_array] + 4, 4)
    rec = walk(pages)
    types = np.frombuffer(pages.data, np.uint8)[rec.pos[:, None] + np.arange(2)].copy().view("<u2").ravel()
    for ident in np.unique(types):
        fmt = capture.formats.get(int(ident))
        for f in fmt.fields:
            if f.is_dynamic or (not f.is_array and f.size in (2, 4, 8)):
                swap(rec.pos[types == ident] + f.offset, 4 if f.is_dynamic else f.size)
    per_cpu, at = [], 0
    for cpu, blob in blobs:
        size = len(blob) // h.page_size * h.page_size
        per_cpu.append((cpu, out[at: at + size].tobytes()))
        at += size
    return dataclasses.replace(capture, byte_order=">", buffers=[("", per_cpu)])


@pytest.mark.parametrize("name", ["v7-zstd.dat", "v7-drops.dat", "v6-extend.dat"])
def test_big_endian_pages_decode_to_the_same_rows(name, tmp_path):
    from kptrace.read.binary import decode
    from kptrace.read.source import read_bytes
    from kptrace.read.tracedat import read_tracedat

    capture = read_tracedat(read_bytes(_unpacked(name, tmp_path)).data)
    little = decode(capture)
    big = decode(_big_endian(capture))
    assert big.height == little.height > 0
    assert big.equals(little)


def _four_byte_commit(capture):
    """The capture's pages in a 32-bit kernel's page layout (derived, not recorded): a 4-byte
    commit word, so records start at byte 12 instead of 16. The records themselves are kept as
    the 64-bit kernel wrote them (their formats say so)."""
    import dataclasses

    import numpy as np

    from kptrace.read.formats import PageHeader

    h = capture.header
    narrow = PageHeader(timestamp_offset=0, commit_offset=8, commit_size=4, data_offset=12,
                        data_size=h.page_size - 12)
    buffers = []
    for name, per_cpu in capture.buffers:
        out = []
        for cpu, blob in per_cpu:
            pages = np.frombuffer(blob[: len(blob) // h.page_size * h.page_size], np.uint8).reshape(-1, h.page_size)
            commit = pages[:, h.commit_offset: h.commit_offset + 8].copy().view("<u8").ravel()
            assert (commit & ((1 << 27) - 1) <= h.data_size).all() and not (commit >> 32).any()
            new = np.zeros_like(pages)
            new[:, :8] = pages[:, :8]
            new[:, 8:12] = commit.astype("<u4").view(np.uint8).reshape(-1, 4)
            new[:, 12: 12 + h.data_size] = pages[:, h.data_offset:]
            out.append((cpu, new.tobytes()))
        buffers.append((name, out))
    return dataclasses.replace(capture, header=narrow, buffers=buffers)


@pytest.mark.parametrize("name", ["v7-zstd.dat", "v6-extend.dat"])
def test_a_four_byte_commit_word_page_layout_decodes_to_the_same_rows(name, tmp_path):
    from kptrace.read.binary import decode
    from kptrace.read.source import read_bytes
    from kptrace.read.tracedat import read_tracedat

    capture = read_tracedat(read_bytes(_unpacked(name, tmp_path)).data)
    assert capture.header.commit_size == 8
    little = decode(capture)
    assert decode(_four_byte_commit(capture)).equals(little)


def _with_lost_events(capture, every: int = 3):
    """The capture with every `every`-th page's header saying events were lost before it (the
    missed-events bit of the commit word, count not stored), as a kernel marks a page after an
    overrun (derived from the real recording, not recorded)."""
    import dataclasses

    import numpy as np

    from kptrace.read.pages import _MISSED_EVENTS

    h = capture.header
    buffers = []
    for name, per_cpu in capture.buffers:
        out = []
        for cpu, blob in per_cpu:
            pages = np.frombuffer(blob[: len(blob) // h.page_size * h.page_size], np.uint8).reshape(-1, h.page_size)
            pages = pages.copy()
            commit = pages[::every, h.commit_offset: h.commit_offset + 8].copy().view("<u8")
            pages[::every, h.commit_offset: h.commit_offset + 8] = (commit | _MISSED_EVENTS).view(np.uint8)
            out.append((cpu, pages.tobytes()))
        buffers.append((name, out))
    return dataclasses.replace(capture, buffers=buffers)


def test_lost_events_markers_leave_every_record_row_as_read_without_them(tmp_path):
    from kptrace.read.binary import decode
    from kptrace.read.source import read_bytes
    from kptrace.read.tracedat import read_tracedat

    capture = read_tracedat(read_bytes(_unpacked("v7-zstd.dat", tmp_path)).data)
    plain = decode(capture)
    marked = decode(_with_lost_events(capture))
    markers = marked.filter(pl.col("event") == "lost_events")
    assert markers.height > 0 and markers.select(*FLAGS, "value").null_count().row(0) == (markers.height,) * 8
    records = marked.filter(pl.col("event") != "lost_events").drop("seq", "value")
    assert plain["irqs_off"].sum() > 0 and plain["in_hardirq"].sum() > 0  # flags set, so a wrong bit shows
    assert records.equals(plain.drop("seq", *(["value"] if "value" in plain.columns else [])))


@pytest.mark.parametrize("name", RECORDINGS)
def test_wide_rows_decoded_directly_equal_those_of_the_held_table(name, tmp_path):
    """decode puts each typed column straight at its rows of the wide table; wide_rows builds the
    same from the held table (core and family tables): every row and type must agree, lost-events
    markers with their counts included (v7-drops, and the pages marked lost below)."""
    from kptrace.read.binary import decode, decode_table, wide_rows
    from kptrace.read.source import read_bytes
    from kptrace.read.tracedat import read_tracedat

    capture = read_tracedat(read_bytes(_unpacked(f"{name}.dat", tmp_path)).data)
    for pages in (capture, _with_lost_events(capture)):
        direct, held = decode(pages), wide_rows(decode_table(pages))
        assert direct.height > 0 and direct.schema == held.schema
        assert direct.equals(held)
