"""Damaged or foreign input gives one clear line (exit 1) or a warning plus partial results.

Every case starts from the real tracefs recording in tests/data (see record-test-data.sh) and
damages it the way files get damaged: cut, shuffled, doubled, garbled, or not a trace at all.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import polars as pl
import pytest
import zstandard

from conftest import DATA

KPTRACE = [sys.executable, "-m", "kptrace.cli"]


@pytest.fixture(scope="module")
def real_lines() -> list[str]:
    """The first 3000 lines of the real tracefs recording, header included."""
    text = zstandard.ZstdDecompressor().stream_reader(open(DATA / "tracefs.txt.zst", "rb")).read(4 << 20)
    return text.decode().splitlines(keepends=True)[:3000]


def ingest(path, tmp_path):
    """Run `kptrace ingest` as a user would; return (exit code, stderr, meta or None)."""
    out = tmp_path / "out"
    result = subprocess.run([*KPTRACE, "ingest", str(path), "-o", str(out)], capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    meta = json.loads((out / "meta.json").read_text()) if result.returncode == 0 else None
    return result.returncode, result.stderr, meta


def write(tmp_path, name, content) -> object:
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def event_lines(lines):
    return [line for line in lines if not line.startswith("#")]


def assert_one_line_error(code, stderr, path, words):
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]


def test_empty_file_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "empty.txt", "")
    assert_one_line_error(*ingest(path, tmp_path)[:2], path, "empty file")


def test_binary_garbage_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "garbage.bin", random.Random(1).randbytes(50_000))
    assert_one_line_error(*ingest(path, tmp_path)[:2], path, "binary data")


def test_corrupt_gzip_data_is_a_one_line_error(tmp_path, real_lines):
    """A valid gzip header over damaged deflate data (zlib.error, not an OSError) is refused
    with one line, not a traceback."""
    import gzip

    packed = bytearray(gzip.compress("".join(real_lines).encode()))
    packed[40:60] = bytes(b ^ 0xFF for b in packed[40:60])
    path = write(tmp_path, "corrupt.txt.gz", bytes(packed))
    assert_one_line_error(*ingest(path, tmp_path)[:2], path, "cannot decompress gzip data")


def test_unknown_format_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "table.csv", "ts,cpu,event\n1,0,irq\n2,1,irq\n")
    assert_one_line_error(*ingest(path, tmp_path)[:2], path, "unknown format")


def test_missing_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "nowhere.txt"
    assert_one_line_error(*ingest(path, tmp_path)[:2], path, "no such file")


def test_truncated_last_line_is_dropped_with_a_warning(tmp_path, real_lines):
    whole = "".join(real_lines)
    cut = whole[: len(whole) - len(real_lines[-1]) // 2]
    code, stderr, meta = ingest(write(tmp_path, "cut.txt", cut), tmp_path)
    assert code == 0
    assert "last line is incomplete" in stderr
    assert meta["event_count"] == len(event_lines(real_lines)) - 1


def test_compressed_file_cut_midway_gives_partial_events_and_a_warning(tmp_path, real_lines):
    packed = zstandard.ZstdCompressor().compress("".join(real_lines).encode())
    code, stderr, meta = ingest(write(tmp_path, "cut.txt.zst", packed[: len(packed) // 2]), tmp_path)
    assert code == 0
    assert "zstd stream is truncated" in stderr
    assert 0 < meta["event_count"] < len(event_lines(real_lines))


def test_unsorted_lines_are_sorted_with_a_warning(tmp_path, real_lines):
    header = [line for line in real_lines if line.startswith("#")]
    body = event_lines(real_lines)
    shuffled = body[:]
    random.Random(7).shuffle(shuffled)
    code, stderr, meta = ingest(write(tmp_path, "shuffled.txt", "".join(header + shuffled)), tmp_path)
    assert code == 0 and "out of time order" in stderr
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events["ts"].is_sorted()
    assert meta["event_count"] == len(body)
    # Sorting moves whole rows: the same rows as the file in order, whatever the order of ties.
    in_order = tmp_path / "in-order"
    in_order.mkdir()
    assert ingest(write(in_order, "ordered.txt", "".join(real_lines)), in_order)[0] == 0
    ordered = pl.read_parquet(in_order / "out" / "events.parquet")
    assert events.sort(events.columns).equals(ordered.sort(ordered.columns))


def test_duplicated_lines_are_reported(tmp_path, real_lines):
    doubled = real_lines + event_lines(real_lines)[:50]
    code, stderr, meta = ingest(write(tmp_path, "doubled.txt", "".join(doubled)), tmp_path)
    assert code == 0
    assert "repeat another row exactly" in stderr
    assert meta["event_count"] == len(event_lines(real_lines)) + 50


def test_garbled_lines_are_counted_with_examples(tmp_path, real_lines):
    garbled = real_lines[:]
    garbled[200] = "\x7f@@ not a trace line at all @@\n"
    garbled[400] = garbled[400][: len(garbled[400]) // 3] + "\n"
    code, stderr, meta = ingest(write(tmp_path, "garbled.txt", "".join(garbled)), tmp_path)
    assert code == 0
    assert meta["unparsed_lines"] == 2
    assert "skipped 2 lines" in stderr
    assert any("line 201" in example for example in meta["unparsed_examples"])


def test_unknown_events_keep_their_raw_fields(tmp_path, real_lines):
    line = event_lines(real_lines)[10]
    prefix = line[: line.index(": ") + 2]
    odd = prefix + "mystery_event: answer=42 flavour=strange\n"
    code, _, meta = ingest(write(tmp_path, "odd.txt", "".join(real_lines + [odd])), tmp_path)
    assert code == 0
    assert meta["unknown_events"] == ["mystery_event"]
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    row = events.filter(events["event"] == "mystery_event").row(0, named=True)
    assert row["fields"] == "answer=42 flavour=strange" and row["subsystem"] == "unknown"


@pytest.mark.parametrize("marker,lost", [("CPU:1 [LOST 1234 EVENTS]", 1234), ("CPU:1 [EVENTS DROPPED]", None),
                                          ("CPU:1 [77 EVENTS DROPPED]", 77)])
def test_lost_event_markers_become_rows_and_warnings(tmp_path, real_lines, marker, lost):
    body = real_lines[:1500] + [marker + "\n"] + real_lines[1500:]
    code, stderr, meta = ingest(write(tmp_path, "lost.txt", "".join(body)), tmp_path)
    assert code == 0 and "lost events 1 times" in stderr
    cpu1 = next(c for c in meta["per_cpu"] if c["cpu"] == 1)
    assert cpu1["lost_markers"] == 1 and cpu1["lost_events"] == (lost or 0)
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    gap = events.filter(events["event"] == "lost_events")
    assert gap.height == 1 and gap["value"][0] == lost
    later_on_cpu1 = [ln for ln in real_lines[1500:] if "[001]" in ln][0]
    seconds = float(later_on_cpu1.split(": ")[0].split()[-1])
    assert gap["ts"][0] == round(seconds * 1e9)


def test_no_traceback_for_a_directory_without_manifest(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_one_line_error(*ingest(folder, tmp_path)[:2], folder, "is a directory")


def test_schema_doc_matches_the_code():
    from kptrace.schema import EVENT_SCHEMA, schema_markdown

    generated = schema_markdown()
    # endswith("") is always true: the generated table must first describe every column.
    assert all(f"| `{column}` |" in generated for column in EVENT_SCHEMA)
    assert (DATA.parent.parent / "docs" / "schema.md").read_text().endswith(generated)


def test_a_line_cut_after_its_timestamp_is_skipped_not_an_unnamed_event(tmp_path, real_lines):
    cut = real_lines[:]
    body = [i for i, line in enumerate(cut) if not line.startswith("#")]
    for i in body[10:13]:
        cut[i] = cut[i][: cut[i].index(": ") + 2] + "sys_epo\n"
    code, stderr, meta = ingest(write(tmp_path, "cut-names.txt", "".join(cut)), tmp_path)
    assert code == 0 and meta["unparsed_lines"] == 3
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events["event"].null_count() == 0
