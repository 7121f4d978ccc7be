"""Fuzzing in the suite: a small deterministic subset of benchmarks/fuzz.py (the longer run, with
its figures in docs/reliability.md), and "nothing lost silently" on damaged real traces.

Every input is a real recording from tests/data (text lines, trace.dat, raw pages) damaged the
way files get damaged or made hostile on purpose. kptrace must read it into events or refuse it
with its one-line TraceError, within a time bound, and hold no more than a stated multiple of its
size in memory. Inputs the longer run found crashing are kept in tests/data/fuzz-crashes/ and
replayed.
"""

from __future__ import annotations

import importlib.util
import random
import re
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, unavailable
from kptrace.errors import TraceError
from kptrace.normalize import normalize
from kptrace.read import read_any

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("kptrace_fuzz", ROOT / "benchmarks" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

#: One input may take this long (wall time, on a loaded 2-core CI machine) before it counts as a hang.
INPUT_DEADLINE = timedelta(seconds=20)
SUBSET = settings(max_examples=25, derandomize=True, deadline=INPUT_DEADLINE, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])



@pytest.mark.parametrize("reader", fuzz.READERS)
def test_damaged_and_hostile_inputs_are_read_or_refused_never_a_crash(reader, tmp_path_factory):
    @SUBSET
    @given(seed=st.integers(min_value=0, max_value=2**32 - 1))
    def one_input(seed: int) -> None:
        files = fuzz.make_input(reader, random.Random(f"{reader}:{seed}"))
        path = fuzz.write_input(files, tmp_path_factory.mktemp(reader))
        assert fuzz.read_input(path) in ("events", "refused")

    one_input()


SAVED_CRASHES = sorted(p.name for p in (DATA / "fuzz-crashes").iterdir() if p.is_dir())


def test_the_longer_runs_crash_inputs_are_kept():
    """Every reader the longer run found crashing has its inputs here (README.md lists them)."""
    assert {name.rsplit("-", 1)[0] for name in SAVED_CRASHES} >= {"tracefs", "trace-cmd", "perf", "bundle", "raw-pages"}


@pytest.mark.parametrize("case", SAVED_CRASHES)
def test_saved_crash_input_is_now_read_or_refused(case):
    """An input the longer fuzz run saw crash kptrace (tests/data/fuzz-crashes/README.md)."""
    assert fuzz.read_input(fuzz.input_path(DATA / "fuzz-crashes" / case)) in ("events", "refused")


def test_peak_memory_of_a_large_damaged_input_is_bounded(tmp_path):
    """A 2 MB window of real tracefs lines with damage: kptrace's peak resident memory above
    what it held before stays under 64 MiB plus 40 times the text (benchmarks/fuzz.py measures
    the same over its whole run)."""
    if not fuzz._reset_peak():
        unavailable("this kernel cannot reset VmHWM (/proc/self/clear_refs)")
    pool = fuzz.seed_lines("tracefs", blocks=400, block=50)
    text = fuzz.damaged_text(pool, random.Random(3), fuzz.seed_lines("perf"), big=False)
    text = b"".join(pool) + text
    target = tmp_path / "big.txt"
    target.write_bytes(text)
    fuzz.read_input(target)  # warm: the first read compiles and allocates what every read shares
    fuzz._reset_peak()
    before = fuzz._rss_kib("VmRSS")
    assert fuzz.read_input(target) == "events"
    extra = (fuzz._rss_kib("VmHWM") - before) * 1024
    assert len(text) > 1 << 20
    assert extra < (64 << 20) + 40 * len(text), f"{extra / 2**20:.0f} MiB for {len(text) / 2**20:.1f} MiB of text"


# ------------------------------------------------------------------------- nothing lost silently

#: Lines that carry no event by design: headers, comments, blank lines, trace-cmd's notes.
IGNORABLE = re.compile(rb"^\s*(?:#.*|cpus=\d+|version = \S+|CPU \d+ is empty|)\s*$")
FORMATS = {"tracefs": "tracefs.txt.zst", "trace-cmd": "tracecmd.txt.zst", "trace-cmd -R": "tracecmd-raw.txt.zst",
           "perf": "perf.txt.zst", "perf counters": "perf-counters.txt.zst"}


@pytest.fixture(scope="module")
def real_lines() -> dict[str, list[bytes]]:
    """The first 3000 lines of each real recording."""
    lines = {}
    for name, file in FORMATS.items():
        with open(DATA / file, "rb") as handle:
            text = zstandard.ZstdDecompressor().stream_reader(handle).read(1 << 20)
        lines[name] = text.splitlines(keepends=True)[:3000]
    return lines


def damage(lines: list[bytes], how: str, rng: random.Random) -> bytes:
    """30 lines damaged one way: cut short, a bit flipped (never to NUL: that has its own test),
    a field dropped, a lost-events marker forged before them, CRLF endings, or garbage."""
    lines = lines[:]
    for _ in range(30):
        i = rng.randrange(5, len(lines))
        body = lines[i].rstrip(b"\n")
        if how == "cut":
            lines[i] = body[: rng.randrange(len(body))] + b"\n"
        elif how == "flip":
            j = rng.randrange(len(body))
            flipped = body[j] ^ (1 << rng.randrange(8))
            lines[i] = body[:j] + bytes([flipped or 1]) + body[j + 1:] + b"\n"
        elif how == "drop-field":
            fields = body.split(b" ")
            k = rng.randrange(len(fields))
            lines[i] = b" ".join(fields[:k] + fields[k + 1:]) + b"\n"
        elif how == "marker":
            lines.insert(i, b"CPU:%d [LOST %d EVENTS]\n" % (rng.randrange(2), rng.randrange(1, 999)))
        elif how == "crlf":
            lines[i] = body + b"\r\n"
        elif how == "garbage":
            lines[i] = rng.randbytes(rng.randrange(1, 40)).replace(b"\n", b"").replace(b"\x00", b"") + b"\n"
    return b"".join(lines)


def count_lines(data: bytes) -> tuple[int, int]:
    """Lines and ignorable lines (headers, comments, blank), counted here, not by kptrace."""
    lines = data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
    return len(lines), sum(bool(IGNORABLE.match(line.rstrip(b"\r"))) for line in lines)


def accounted(path: Path) -> dict:
    """meta.json's input_accounting, checked to add up: every line or record is an event, a
    marker, unreadable, ignorable or (a bundle's counter file) a repeated tracepoint."""
    meta = normalize(read_any(path)).meta
    books = meta["input_accounting"]
    assert books["events"] == meta["event_count"] and books["unreadable"] == meta["unparsed_lines"]
    assert books["events"] + books["markers"] + books["unreadable"] + books["ignored"] + books["repeated"] \
        == books["input"], books
    return books


def account(data: bytes, path: Path) -> dict:
    """What became of every line: an event, a marker row, unreadable (meta.json), or ignorable."""
    path.write_bytes(data)
    normalized = normalize(read_any(path))
    lines, ignorable = count_lines(data)
    return {"lines": lines, "events": normalized.meta["event_count"],
            "unreadable": normalized.meta["unparsed_lines"],
            "markers": normalized.events.filter(pl.col("subsystem") == "kptrace").height,
            "ignorable": ignorable, "books": accounted(path)}


@pytest.mark.parametrize("how", ["none", "cut", "flip", "drop-field", "marker", "crlf", "garbage"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_line_of_a_damaged_real_trace_is_an_event_a_marker_or_counted_unreadable(real_lines, tmp_path,
                                                                                       fmt, how):
    counts = account(damage(real_lines[fmt], how, random.Random(f"{fmt}:{how}")), tmp_path / "trace.txt")
    assert counts["events"] + counts["markers"] + counts["unreadable"] + counts["ignorable"] == counts["lines"], counts
    assert (counts["books"]["input"], counts["books"]["ignored"]) == (counts["lines"], counts["ignorable"])
    if how in ("cut", "drop-field", "garbage"):
        assert counts["unreadable"] > 0  # the damage was seen, not absorbed into events
    if how == "marker":
        assert counts["markers"] == 30


def test_an_incomplete_last_line_is_counted_as_unreadable(real_lines, tmp_path):
    """A file cut mid-line (a copy interrupted, a disk full): the cut line is unreadable, and
    meta.json counts it with the others, with an example."""
    data = b"".join(real_lines["tracefs"])[:-40]
    counts = account(data, tmp_path / "trace.txt")
    assert counts["events"] + counts["markers"] + counts["unreadable"] + counts["ignorable"] == counts["lines"], counts
    assert counts["unreadable"] == 1 and counts["books"]["input"] == counts["lines"]


@pytest.mark.parametrize("line", [b"CPU:1 [LOST 100000000000000000000000000000 EVENTS]",
                                  b"          <idle>-0       [001] d.h2.  123.456789: softirq_raise: vec=300 [action=X]",
                                  b"          <idle>-4294967296 [001] d.h2.  123.456789: irq_handler_entry: irq=1 name=x",
                                  b"          <idle>-0       [001] d.h2.  99999999999999999999.456789: ipi_entry: x"])
def test_a_number_too_large_for_its_column_makes_its_line_unreadable(real_lines, tmp_path, line):
    """A forged or damaged number (a lost count past Int64, a vector past Int8, a tid past Int32,
    a time past Int64 ns) costs that one line, counted with an example; the rest is read."""
    lines = real_lines["tracefs"][:]
    lines.insert(200, line + b"\n")
    good = account(b"".join(real_lines["tracefs"]), tmp_path / "good.txt")
    counts = account(b"".join(lines), tmp_path / "trace.txt")
    assert counts["unreadable"] == 1 and counts["events"] == good["events"]
    meta = normalize(read_any(tmp_path / "trace.txt")).meta
    assert any("line 201" in example for example in meta["unparsed_examples"]), meta["unparsed_examples"]


def test_every_line_of_a_damaged_bundle_is_accounted_for(real_lines, tmp_path):
    """A bundle's trace and counter files, both damaged: meta.json accounts for every line of
    both, the counter file's tracepoints (which repeat the trace) counted as repeated."""
    trace = damage(real_lines["tracefs"], "garbage", random.Random(1))
    counters = damage(real_lines["perf counters"], "cut", random.Random(2))
    (tmp_path / "trace.txt").write_bytes(trace)
    (tmp_path / "perf-counters.txt").write_bytes(counters)
    (tmp_path / "manifest.json").write_text('{"files": {"trace": "trace.txt", "perf_counters": "perf-counters.txt"}}')
    books = accounted(tmp_path)
    (trace_lines, trace_ignorable), (counter_lines, counter_ignorable) = count_lines(trace), count_lines(counters)
    assert books["input"] == trace_lines + counter_lines
    assert books["ignored"] == trace_ignorable + counter_ignorable
    assert books["unreadable"] > 30 and books["repeated"] > 0


def test_a_record_without_an_event_format_is_counted_unreadable_not_lost(tmp_path):
    """Raw pages whose capture lacks one event's format (damaged, or not copied): each of that
    event's records is counted unreadable, with an example; every other record is read as before."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(DATA / "binary" / "raw", raw)
    whole = normalize(read_any(raw)).meta
    shutil.rmtree(raw / "format" / "irq" / "softirq_entry")
    books = accounted(raw)
    meta = normalize(read_any(raw)).meta
    assert books["unit"] == "records" and books["input"] == whole["input_accounting"]["input"]
    assert books["unreadable"] == whole["event_counts"]["softirq_entry"] > 0
    assert meta["event_counts"] == {k: v for k, v in whole["event_counts"].items() if k != "softirq_entry"}
    assert "no format for this event id" in meta["unparsed_examples"][0]


@pytest.mark.parametrize("name", ["v6.dat.zst", "v7-zstd.dat", "v7-drops.dat.zst"])
def test_every_record_of_a_real_trace_dat_is_an_event(name):
    """A good trace.dat: records = events (lost-event markers come from page headers, not records)."""
    books = accounted(DATA / "binary" / name)
    assert books["unit"] == "records" and books["input"] == books["events"] > 0 and books["unreadable"] == 0


def test_one_nul_byte_loses_one_line_not_the_whole_trace(real_lines, tmp_path):
    """A single flipped bit can turn a space into NUL; the trace is still text (docs/reliability.md)."""
    lines = real_lines["tracefs"][:]
    lines[100] = lines[100].replace(b" ", b"\x00", 1)
    try:
        counts = account(b"".join(lines), tmp_path / "trace.txt")
    except TraceError as error:
        pytest.fail(f"one NUL byte refused the whole trace: {error}")
    assert counts["unreadable"] == 1


@pytest.fixture(scope="module")
def small_archive() -> bytes:
    """A bundle archive as `kptrace record --tar` lays it out: one folder, manifest and trace."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in {"b/manifest.json": b'{"files": {"trace": "trace.txt"}}',
                           "b/trace.txt": b"".join(fuzz.seed_lines("tracefs")[:200])}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@SUBSET
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), compress=st.booleans())
def test_damaged_bundle_archives_are_unpacked_or_refused_never_a_crash(small_archive, tmp_path_factory, seed, compress):
    from kptrace.archive import opened

    rng = random.Random(seed)
    data = bytearray(zstandard.ZstdCompressor().compress(small_archive) if compress else small_archive)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data))
        data[at] = rng.randrange(256)
    if rng.random() < 0.3:
        data = data[: rng.randrange(len(data))]
    folder = tmp_path_factory.mktemp("archive")
    path = folder / "bundle.tar.zst"
    path.write_bytes(bytes(data))
    try:
        with opened(path, folder / "out") as readable:
            fuzz.read_input(readable)
    except TraceError:
        pass
    outside = {p.relative_to(folder).parts[0] for p in folder.rglob("*")}
    assert outside <= {"bundle.tar.zst", "out"}
    assert not list((folder / "out").glob(".unpacked-*"))  # the private folder is always removed


def test_a_busy_thread_named_with_control_characters_does_not_make_its_trace_unreadable(real_lines, tmp_path):
    """A traced program chooses its own name: 16 control characters on the busiest thread's
    lines (a quarter of them or more) must not get the whole trace refused as binary data."""
    from collections import Counter

    lines = real_lines["tracefs"]
    busiest, _ = Counter(line[:16] for line in lines if not line.startswith(b"#")).most_common(1)[0]
    control = bytes(range(1, 9)) + bytes(range(14, 22))
    renamed = [control + line[16:] if line[:16] == busiest else line for line in lines]
    assert sum(line[:16] == control for line in renamed) * 4 >= len(renamed)
    good, counts = account(b"".join(lines), tmp_path / "good.txt"), account(b"".join(renamed), tmp_path / "renamed.txt")
    assert (counts["events"], counts["unreadable"]) == (good["events"], good["unreadable"])
    events = normalize(read_any(tmp_path / "renamed.txt")).events
    assert events.filter(pl.col("comm") == control.decode()).height > 0


def test_trace_dat_naming_a_cpu_past_int16_is_read_or_refused(tmp_path):
    """Input 4857 of the longer run's trace.dat reader, rebuilt from its number (1.2 MB: not kept)."""
    path = fuzz.write_input(fuzz.make_input("trace.dat", random.Random("trace.dat:4857")), tmp_path)
    assert fuzz.read_input(path) in ("events", "refused")
