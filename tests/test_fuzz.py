"""Fuzzing in the suite: a small deterministic subset of benchmarks/fuzz.py (the longer run, with
its figures in docs/hardening.md), and "nothing lost silently" on damaged real traces.

Every input is a window of real lines from tests/data (record-test-data.sh) damaged the way files
get damaged or made hostile on purpose. kptrace must read it into events or refuse it with its
one-line TraceError, within a time bound, and hold no more than a stated multiple of its size in
memory. Inputs the longer run found crashing are kept in tests/data/fuzz-crashes/ and replayed.

Until the readers (kptrace/read/) are fixed, six of these fail on purpose, each on a reader bug
docs/hardening.md names: the subset for tracefs, perf and bundles, the saved-crash replay, the
incomplete last line, and the single NUL byte.
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


def test_saved_crash_inputs_are_now_read_or_refused():
    """Every input the longer fuzz run saw crash kptrace (tests/data/fuzz-crashes/README.md)."""
    cases = sorted(p for p in (DATA / "fuzz-crashes").iterdir() if p.is_dir())
    assert cases, "no saved crash inputs: the folder should hold the longer run's findings"
    crashed = {}
    for case in cases:
        path = case if (case / "manifest.json").exists() else next(case.iterdir())
        try:
            fuzz.read_input(path)
        except Exception as error:  # noqa: BLE001 - any exception but TraceError is the bug
            crashed[case.name] = fuzz.crash_signature(error)
    assert crashed == {}


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
    """30 lines damaged one way: cut short, a bit flipped (never to NUL: see docs/hardening.md),
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


def account(data: bytes, path: Path) -> dict:
    """What became of every line: an event, a marker row, unreadable (meta.json), or ignorable."""
    path.write_bytes(data)
    normalized = normalize(read_any(path))
    lines = data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
    return {"lines": len(lines), "events": normalized.meta["event_count"],
            "unreadable": normalized.meta["unparsed_lines"],
            "markers": normalized.events.filter(pl.col("subsystem") == "kptrace").height,
            "ignorable": sum(bool(IGNORABLE.match(line.rstrip(b"\r"))) for line in lines)}


@pytest.mark.parametrize("how", ["none", "cut", "flip", "drop-field", "marker", "crlf", "garbage"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_line_of_a_damaged_real_trace_is_an_event_a_marker_or_counted_unreadable(real_lines, tmp_path,
                                                                                       fmt, how):
    counts = account(damage(real_lines[fmt], how, random.Random(f"{fmt}:{how}")), tmp_path / "trace.txt")
    assert counts["events"] + counts["markers"] + counts["unreadable"] + counts["ignorable"] == counts["lines"], counts
    if how in ("cut", "drop-field", "garbage"):
        assert counts["unreadable"] > 0  # the damage was seen, not absorbed into events
    if how == "marker":
        assert counts["markers"] == 30


def test_an_incomplete_last_line_is_counted_as_unreadable(real_lines, tmp_path):
    """A file cut mid-line (a copy interrupted, a disk full): the cut line is unreadable, and
    meta.json counts it with the others (today: only a warning says so; docs/hardening.md)."""
    data = b"".join(real_lines["tracefs"])[:-40]
    counts = account(data, tmp_path / "trace.txt")
    assert counts["events"] + counts["markers"] + counts["unreadable"] + counts["ignorable"] == counts["lines"], counts


def test_one_nul_byte_loses_one_line_not_the_whole_trace(real_lines, tmp_path):
    """A single flipped bit can turn a space into NUL; the trace is still text (docs/hardening.md)."""
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
