"""Fuzz every reader (text, bundle, trace.dat, raw pages) with damaged copies of real traces.

A text input is a window of real lines (tests/data, recorded by tests/data/record-test-data.sh)
damaged the way files get damaged or made hostile on purpose: bytes flipped, lines cut, fields
dropped, numbers blown up, markers forged, invalid UTF-8, terminal escapes, a compression layer
cut short; bundles also get forged manifests. A binary input is a real recording of
tests/data/binary (trace.dat v6 and v7, raw ring-buffer pages) with its structure lied about:
bits flipped in page data, page commits and timestamps forged, every number the trace.dat
reader reads (counts, sizes, offsets) replaced by 0, huge or off-by-one values, format
descriptions with wrong offsets and sizes, formats missing, files cut. Input `i` of a reader is
made by `random.Random(f"{reader}:{i}")`, so any input can be rebuilt from its number.

An input passes when kptrace reads it into events or refuses it with its one-line TraceError.
Anything else is a crash. Time: an input that uses more than --timeout seconds of CPU (the
worker's, all threads) is a hang, stopped by a profiling timer; one stuck inside native code
past --wall-timeout seconds of wall time is ended by a watchdog (the driver notes the input and
carries on from the next one). CPU time, not wall time, because the run is meant to go at the
lowest priority on a shared machine, where wall time measures the other jobs. Memory: the
peak resident set of the worker during the input (VmHWM, reset before each input) above its
resident set just before it, against the input's size on disk and decompressed.

    nice -n 19 python benchmarks/fuzz.py --inputs 10000 [--readers tracefs,perf] [--timeout 20] [--wall-timeout 600]
    python benchmarks/fuzz.py --replay tests/data/fuzz-crashes      # re-run saved crash inputs
    python benchmarks/fuzz.py --summarize WORKDIR                   # figures of a run, finished or not
    python benchmarks/fuzz.py --curate WORKDIR                      # smallest input of each crash

Crash inputs are saved once per (reader, exception, kptrace frame) into --crashes.
tests/test_fuzz.py runs a small deterministic subset of the same generator under hypothesis.
"""

from __future__ import annotations

import argparse
import faulthandler
import gzip
import hashlib
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from functools import cache
from pathlib import Path
from typing import NamedTuple

import zstandard

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
#: The real recording each text reader's inputs start from.
SEED_FILES = {"tracefs": "tracefs.txt.zst", "trace-cmd": "tracecmd.txt.zst", "trace-cmd-raw": "tracecmd-raw.txt.zst",
              "perf": "perf.txt.zst", "perf-counters": "perf-counters.txt.zst"}
READERS = ("tracefs", "trace-cmd", "perf", "bundle", "trace.dat", "raw-pages")
BINARY = DATA / "binary"
#: The real trace.dat recordings the trace.dat inputs start from (record.sh): v6, v7 uncompressed,
#: v7 with zstd sections, v7 with dropped events, v6 with time-extend records.
TRACEDAT_SEEDS = ("v6.dat.zst", "v7-none.dat.zst", "v7-zstd.dat", "v7-drops.dat.zst", "v6-extend.dat.zst")
#: Content chosen by whoever ran the traced programs (docs/reliability.md).
HOSTILE = [b"<script>alert(1)</script>", b'"; rm -rf /', b"\xff\xfe\xc3(", bytes(range(1, 9)) + bytes(range(14, 22)),
           b"\x1b]0;pwned\x07\x1b[2J", b"\x1b[31mred\x1b[0m", b"' OR 1=1 --", b"{{7*7}}", b"%s%n%x", b"\\x00",
           b"\xe2\x80\xae\xe2\x80\x8b", b"-1", b"a" * 300, b":", b"[", b"(", b"->", b"==>", b"=", b"\t"]
MARKERS = [b"CPU:%d [LOST %d EVENTS]", b"CPU:%d [%d EVENTS DROPPED]", b"##### CPU %d buffer started ####"]
BIG_NUMBERS = [b"99999999999999999999999", b"-1", b"18446744073709551616", b"0", b"4294967296", b"9" * 400]


@cache
def seed_lines(name: str, blocks: int = 40, block: int = 25) -> tuple[bytes, ...]:
    """`blocks` runs of `block` consecutive lines spread over the real file, header first."""
    with open(DATA / SEED_FILES[name], "rb") as handle:
        text = zstandard.ZstdDecompressor().stream_reader(handle).read()
    lines = text.splitlines(keepends=True)
    header = [line for line in lines[:20] if line.startswith(b"#") or line.startswith(b"cpus=")]
    step = max(1, len(lines) // blocks)
    picked = [line for start in range(0, len(lines) - block, step) for line in lines[start:start + block]]
    return tuple(header + picked)


def _window(pool: tuple[bytes, ...], rng: random.Random, big: bool) -> list[bytes]:
    """Consecutive lines, so that the real order of events survives; big windows wrap around."""
    size = rng.randint(500, 4000) if big else rng.randint(1, 80)
    start = rng.randrange(len(pool))
    window = [pool[(start + k) % len(pool)] for k in range(size)]
    if rng.random() < 0.5:  # keep the header, as a real file has it
        window = [line for line in pool[:6] if line[:1] in b"#c"] + window
    return window


def _token_spans(line: bytes) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, byte in enumerate(line + b" "):
        if byte in b" \t\n" and start is not None:
            spans.append((start, i))
            start = None
        elif byte not in b" \t\n" and start is None:
            start = i
    return spans


def _replace_token(line: bytes, rng: random.Random, new: bytes) -> bytes:
    spans = _token_spans(line)
    if not spans:
        return line
    a, b = rng.choice(spans)
    return line[:a] + new + line[b:]


def _digits(line: bytes, rng: random.Random) -> bytes:
    """Swap one run of digits for a huge, negative or zero number."""
    runs, start = [], None
    for i, byte in enumerate(line + b"x"):
        if chr(byte).isdigit() and start is None:
            start = i
        elif not chr(byte).isdigit() and start is not None:
            runs.append((start, i))
            start = None
    if not runs:
        return line
    a, b = rng.choice(runs)
    return line[:a] + rng.choice(BIG_NUMBERS) + line[b:]


def _mutate_line(line: bytes, rng: random.Random, other: tuple[bytes, ...]) -> list[bytes]:
    """One damaged line, or several, or none."""
    choice = rng.randrange(14)
    body = line.rstrip(b"\n")
    if choice == 0 and body:  # flip one bit
        i = rng.randrange(len(body))
        return [body[:i] + bytes([body[i] ^ (1 << rng.randrange(8))]) + body[i + 1:] + b"\n"]
    if choice == 1:  # cut the line short
        return [body[: rng.randrange(len(body) + 1)] + b"\n"]
    if choice == 2:  # drop one field
        return [_replace_token(body, rng, b"") + b"\n"]
    if choice == 3:  # a hostile string in place of a field (comm, name=, payload)
        return [_replace_token(body, rng, rng.choice(HOSTILE)) + b"\n"]
    if choice == 4:
        return [_digits(body, rng) + b"\n"]
    if choice == 5:  # random bytes inserted
        i = rng.randrange(len(body) + 1)
        return [body[:i] + rng.randbytes(rng.randint(1, 8)) + body[i:] + b"\n"]
    if choice == 6:
        return [line, line]
    if choice == 7:
        return []
    if choice == 8:  # a forged lost-events or buffer marker
        marker = rng.choice(MARKERS)
        values = (rng.choice([0, 1, 7, 4095]), rng.choice([0, 1, 10**30]))[: marker.count(b"%d")]
        return [marker % values + b"\n", line]
    if choice == 9:  # a line of another format
        return [rng.choice(other)]
    if choice == 10:  # a very long line
        return [body + rng.choice([b"x", b" ", b"=", b":"]) * rng.randint(1_000, 70_000) + b"\n"]
    if choice == 11:
        return [body + b"\r\n"]
    if choice == 12:  # the line glued to the next one
        return [body]
    return [b"\n" * rng.randint(1, 3), line]


def damaged_text(pool: tuple[bytes, ...], rng: random.Random, other: tuple[bytes, ...], big: bool = False) -> bytes:
    """A window of real lines with 0-8 damaged lines, sometimes shuffled or cut mid-line."""
    lines = _window(pool, rng, big)
    for _ in range(rng.choice([0, 1, 1, 2, 3, 8])):
        if not lines:
            break
        i = rng.randrange(len(lines))
        lines[i:i + 1] = _mutate_line(lines[i], rng, other)
    if lines and rng.random() < 0.05:
        rng.shuffle(lines)
    data = b"".join(lines)
    if data and rng.random() < 0.1:
        data = data[: rng.randrange(len(data))]  # the file ends mid-line
    if rng.random() < 0.02:
        data = data.replace(b"\n", b"\x00", 1)
    return data


def _compressed(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Sometimes gzip, zstd or xz, sometimes cut short or with a flipped byte."""
    kind = rng.choice(["", "", "", "", "", "gz", "zst", "xz"])
    if not kind:
        return data, ".txt"
    packed = {"gz": lambda: gzip.compress(data, mtime=0), "xz": lambda: lzma.compress(data),
              "zst": lambda: zstandard.ZstdCompressor().compress(data)}[kind]()
    damage = rng.random()
    if damage < 0.2:
        packed = packed[: rng.randrange(len(packed) + 1)]
    elif damage < 0.3 and packed:
        i = rng.randrange(len(packed))
        packed = packed[:i] + bytes([packed[i] ^ 0xFF]) + packed[i + 1:]
    return packed, ".txt." + kind


def _manifest(rng: random.Random, has_counters: bool) -> bytes:
    """A bundle manifest as kptrace-record writes it, sometimes forged."""
    files = {"trace": "trace.txt"} | ({"perf_counters": "perf-counters.txt"} if has_counters else {})
    manifest: object = {"kptrace_bundle": 1, "schema_version": 1, "trace_clock": "mono", "files": files,
                        "counters": {"source": "software-only"}, "events": {"enabled": ["irq:*"]}}
    forge = rng.randrange(12)
    wrong = rng.choice([None, 5, [], "", {}, "../trace.txt", "/etc/hostname", "trace.txt\x00x", ".", "nowhere.txt"])
    if forge == 0:
        files["trace"] = wrong
    elif forge == 1:
        manifest["files"] = wrong
    elif forge == 2:
        manifest = rng.choice([[], "text", 3, None])
    elif forge == 3 and has_counters:
        files["perf_counters"] = wrong
    elif forge == 4:
        manifest[rng.choice(["events", "counters", "trace_clock", "per_cpu", "workload"])] = wrong
    text = json.dumps(manifest).encode()
    if forge == 5:
        text = text[: rng.randrange(len(text) + 1)]
    elif forge == 6:
        text = b"\xef\xbb\xbf" + text
    elif forge == 7:
        text = text.replace(b'"mono"', b'"\xff\xfe"')
    return text


# --------------------------------------------------------------------------------- binary readers

#: Values a forged number takes: nothing, one, off by one, a page, and past every sane bound.
def _lies(value: int, size: int) -> list[int]:
    top = (1 << (8 * size)) - 1
    return [0, 1, max(value - 1, 0), min(value + 1, top), min(value + 4096, top), top, top >> 1,
            min(value * 2, top), (1 << 31) & top, 7 & top]


class TraceDatSeed(NamedTuple):
    """A real trace.dat and where its structure is: every number the reader reads (position,
    size), the page data of each CPU, and the page header layout."""

    data: bytes
    numbers: tuple[tuple[int, int], ...]
    pages: tuple[tuple[int, int], ...]  # (offset, size) of each CPU's page data, when stored plainly
    page_size: int
    commit: tuple[int, int]  # offset and size of the commit word in a page header
    formats: tuple[tuple[int, int], ...]  # spans of `offset:N;` / `size:N;` digits in format texts


def _read_numbers(data: bytes) -> list[tuple[int, int]]:
    """Every (position, size) at which the trace.dat reader reads a number from the file itself
    (not from a decompressed section): counts, sizes, offsets, ids."""
    from kptrace.read import tracedat

    seen: list[tuple[int, int]] = []
    original = tracedat._Cursor.num

    def recording(cursor, size):
        if cursor.data is data:
            seen.append((cursor.pos, size))
        return original(cursor, size)

    tracedat._Cursor.num = recording
    try:
        tracedat.read_tracedat(data)
    finally:
        tracedat._Cursor.num = original
    return sorted(set(seen))


@cache
def tracedat_seed(name: str) -> TraceDatSeed:
    import re

    from kptrace.read.tracedat import read_tracedat

    raw = (BINARY / name).read_bytes()
    data = zstandard.ZstdDecompressor().stream_reader(raw).read() if name.endswith(".zst") else raw
    capture = read_tracedat(data)
    pages = tuple((at, len(blob)) for _, blobs in capture.buffers for _, blob in blobs
                  if (at := data.find(blob[:256])) >= 0)
    header = capture.header
    formats = tuple(m.span(1) for m in re.finditer(rb"(?:offset|size):(\d+);", data[: 1 << 24]))
    return TraceDatSeed(data=data, numbers=tuple(_read_numbers(data)), pages=pages, page_size=header.page_size,
                        commit=(header.commit_offset, header.commit_size), formats=formats)


def _flip(data: bytearray, at: int, rng: random.Random) -> None:
    if 0 <= at < len(data):
        data[at] ^= 1 << rng.randrange(8)


def _put(data: bytearray, at: int, size: int, value: int, order: str = "little") -> None:
    if 0 <= at and at + size <= len(data):
        data[at: at + size] = value.to_bytes(size, order)


def _damage_pages(data: bytearray, start: int, length: int, page_size: int, commit: tuple[int, int],
                  rng: random.Random) -> None:
    """Lie inside ring-buffer pages: flipped record words, a forged commit or page time."""
    pages = max(1, length // page_size)
    page = start + rng.randrange(pages) * page_size
    what = rng.randrange(5)
    if what == 0:  # the commit word: 0, past the page, huge, the missed-events bits
        at, size = page + commit[0], commit[1]
        value = int.from_bytes(data[at: at + size], "little") if at + size <= len(data) else 0
        _put(data, at, size, rng.choice(_lies(value & ((1 << 27) - 1), size) + [page_size, page_size + 64,
                                                                                (3 << 30) | (value & 0xFFF)]))
    elif what == 1:  # the page's start time
        _put(data, page, 8, rng.choice([0, (1 << 64) - 1, 1 << 63, rng.getrandbits(64)]))
    elif what == 2:  # record header words near the start of the page
        for _ in range(rng.randint(1, 6)):
            _flip(data, page + 16 + rng.randrange(min(256, page_size - 16)), rng)
    elif what == 3:  # a record's type/length word set to padding, time-extend, or a huge array length
        at = page + 16 + 4 * rng.randrange(min(64, (page_size - 16) // 4))
        _put(data, at, 4, rng.choice([29, 30, 31, 0, (rng.getrandbits(27) << 5) | rng.choice([0, 29, 30, 31])]))
        if rng.random() < 0.5:
            _put(data, at + 4, 4, rng.choice([0, 3, 0xFFFFFFFF, 1 << 20, page_size]))
    else:  # random bytes anywhere in the page data
        for _ in range(rng.randint(1, 30)):
            _put(data, start + rng.randrange(length), 1, rng.randrange(256))


def _tracedat_input(rng: random.Random) -> dict[str, bytes]:
    seed = tracedat_seed(rng.choice(TRACEDAT_SEEDS))
    data = bytearray(seed.data)
    for _ in range(rng.choice([1, 1, 2, 3, 6])):
        what = rng.randrange(10)
        if what <= 1 and seed.numbers:  # a count, size or offset the reader trusts
            at, size = rng.choice(seed.numbers)
            _put(data, at, size, rng.choice(_lies(int.from_bytes(data[at: at + size], "little"), size)))
        elif 2 <= what <= 5 and seed.pages:
            start, length = rng.choice(seed.pages)
            _damage_pages(data, start, length, seed.page_size, seed.commit, rng)
        elif what == 6 and seed.formats:  # a field's offset or size in an event format (same width:
            a, b = rng.choice(seed.formats)  # a longer text would shift every offset after it)
            data[a:b] = rng.choice([b"0" * (b - a), b"9" * (b - a), b"%d" % rng.randrange(10 ** (b - a))]).rjust(b - a, b"0")
        elif what == 7:  # a bit anywhere before the page data (headers, formats, options)
            _flip(data, rng.randrange(min(len(data), min((s for s, _ in seed.pages), default=len(data)))), rng)
        elif what == 8:  # the version, byte order or page size in the file header
            at = rng.choice([len(b"\x17\x08\x44tracing"), 12, 13, 14, 15])
            _flip(data, at, rng)
        else:  # the file cut short: mostly in its page data (a copy interrupted), else anywhere
            pages_start = min((start for start, _ in seed.pages), default=len(data) // 2)
            data = data[: rng.randrange(pages_start if rng.random() < 0.8 and pages_start < len(data) else 0,
                                        len(data))]
    packed, suffix = bytes(data), ".dat"
    if rng.random() < 0.1:
        packed, suffix = zstandard.ZstdCompressor(level=1).compress(packed), ".dat.zst"
    return {"trace" + suffix: packed}


@cache
def raw_seed() -> dict[str, bytes]:
    """The real raw/ directory: cpuN.raw pages, header_page, header_event, format files."""
    return {str(p.relative_to(BINARY / "raw")): p.read_bytes()
            for p in sorted((BINARY / "raw").rglob("*")) if p.is_file()}


def _raw_pages_input(rng: random.Random) -> dict[str, bytes]:
    """A window of real pages per CPU with their formats, lied about."""
    import re

    files = dict(raw_seed())
    page_size = 4096
    for name in [n for n in files if n.endswith(".raw")]:
        pages = len(files[name]) // page_size
        first = rng.randrange(pages)
        files[name] = files[name][first * page_size: (first + rng.randint(1, pages - first)) * page_size]
    formats = [n for n in files if n.endswith("/format")]
    for _ in range(rng.choice([1, 1, 2, 3, 6])):
        what = rng.randrange(8)
        cpu = rng.choice([n for n in files if n.endswith(".raw")] or [None])
        if what <= 2 and cpu and files[cpu]:
            data = bytearray(files[cpu])
            _damage_pages(data, 0, len(data), page_size, (8, 8), rng)
            files[cpu] = bytes(data)
        elif what == 3 and cpu:  # a CPU file cut mid-page, or with garbage after its pages
            files[cpu] = (files[cpu][: rng.randrange(len(files[cpu]) + 1)] if rng.random() < 0.5
                          else files[cpu] + rng.randbytes(rng.randrange(1, 5000)))
        elif what == 4 and formats:  # a format file's offsets, sizes, id or text damaged
            name = rng.choice(formats)
            text = files[name]
            spans = [m.span(1) for m in re.finditer(rb"(?:offset|size|signed|ID):\s*(\d+)", text)]
            if spans and rng.random() < 0.8:
                a, b = rng.choice(spans)
                text = text[:a] + rng.choice(BIG_NUMBERS + [b"0", b"3", b"4095", b"4096", b"7"]) + text[b:]
            else:
                text = text[: rng.randrange(len(text) + 1)] + rng.choice(HOSTILE)
            files[name] = text
        elif what == 5 and formats:  # a format missing: its records have an unknown event id
            del files[rng.choice(formats)]
            formats = [n for n in files if n.endswith("/format")]
        elif what == 6:  # the page header description
            text = files["header_page"]
            spans = [m.span(1) for m in re.finditer(rb"(?:offset|size):(\d+)", text)]
            a, b = rng.choice(spans)
            files["header_page"] = text[:a] + rng.choice(BIG_NUMBERS + [b"0", b"4", b"16", b"4096"]) + text[b:]
        else:  # the event header description, or saved command lines with hostile names
            if rng.random() < 0.5:
                files["header_event"] = files["header_event"][: rng.randrange(len(files["header_event"]) + 1)]
            else:
                files["saved_cmdlines"] = b"".join(b"%d %s\n" % (rng.randrange(1 << 22), rng.choice(HOSTILE))
                                                   for _ in range(rng.randint(1, 20)))
    return files


def make_input(reader: str, rng: random.Random) -> dict[str, bytes]:
    """The files of one input: {relative name: bytes}; a bundle's include manifest.json, a raw
    pages input is a directory (header_page, cpuN.raw, format/...)."""
    if reader == "trace.dat":
        return _tracedat_input(rng)
    if reader == "raw-pages":
        return _raw_pages_input(rng)
    big = rng.random() < 0.05
    if reader == "bundle":
        counters = rng.random() < 0.6
        files = {"manifest.json": _manifest(rng, counters),
                 "trace.txt": damaged_text(seed_lines("tracefs"), rng, seed_lines("perf"), big)}
        if counters:
            files["perf-counters.txt"] = damaged_text(seed_lines("perf-counters"), rng, seed_lines("tracefs"), big)
        return files
    pools = {"tracefs": ["tracefs"], "trace-cmd": ["trace-cmd", "trace-cmd-raw"], "perf": ["perf", "perf-counters"]}
    pool = seed_lines(rng.choice(pools[reader]))
    other = seed_lines(rng.choice([name for name in SEED_FILES if name not in pools[reader]]))
    data, suffix = _compressed(damaged_text(pool, rng, other, big), rng)
    return {"input" + suffix: data}


def write_input(files: dict[str, bytes], directory: Path) -> Path:
    """Lay the files out under `directory`; return the path kptrace is given."""
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return input_path(directory)


def input_path(directory: Path) -> Path:
    """What kptrace is given for an input laid out in `directory`: the folder for a bundle or raw
    pages, else its one file."""
    if (directory / "manifest.json").exists() or any(directory.glob("cpu*.raw")) or (directory / "format").is_dir():
        return directory
    return next(p for p in sorted(directory.iterdir()) if p.is_file())


def read_input(path: Path) -> str:
    """Read and normalize one input as `kptrace ingest` (a binary capture in time windows) and
    `kptrace analyze` (whole) do: "events" or "refused"; any other exception is left to the
    caller (a crash)."""
    from kptrace.errors import TraceError
    from kptrace.normalize import normalize
    from kptrace.read import read_any
    from kptrace.windowed.events import event_windows, open_source

    try:
        if (source := open_source(path)) is not None:
            for _ in event_windows(source, rows_per_window=500):  # small windows: many edges
                pass
        normalize(read_any(path))
    except TraceError:
        return "refused"
    return "events"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM (Linux >= 4.0) so that it measures this input alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def crash_signature(error: BaseException) -> str:
    """Exception type and the innermost kptrace frame: one saved input per distinct crash."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/kptrace/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "outside kptrace"
    return f"{type(error).__name__} at {where}"


def save_crash(files: dict[str, bytes], reader: str, index: int, crashes: Path) -> Path:
    target = crashes / f"{reader}-{index}"
    target.mkdir(parents=True, exist_ok=True)
    write_input(files, target)
    return target


class TooSlow(Exception):
    """An input used more CPU time than its bound."""


def _too_slow(signum, frame):
    raise TooSlow


def worker(reader: str, start: int, count: int, timeout: float, log: Path, crashes: Path,
           wall_timeout: float = 600.0) -> None:
    """Run inputs start..start+count-1, one JSON line each into `log`. An input past `timeout`
    CPU seconds is stopped and logged as a hang; the watchdog kills the process when one runs
    past `wall_timeout` (the driver reads `log` to see which)."""
    import signal

    signal.signal(signal.SIGPROF, _too_slow)
    read_input(write_input(make_input(reader, random.Random(f"{reader}:warm")), Path(tempfile.mkdtemp())))
    seen: set[str] = set()
    with log.open("a") as out, tempfile.TemporaryDirectory() as scratch:
        for index in range(start, start + count):
            files = make_input(reader, random.Random(f"{reader}:{index}"))
            directory = Path(scratch) / str(index)
            directory.mkdir()
            path = write_input(files, directory)
            out.write(json.dumps({"index": index, "started": True}) + "\n")
            out.flush()
            exact = _reset_peak()
            before = _rss_kib("VmRSS")
            faulthandler.dump_traceback_later(wall_timeout, exit=True)
            began, cpu = time.perf_counter(), time.process_time()
            signal.setitimer(signal.ITIMER_PROF, timeout)
            record = {"index": index, "bytes": sum(map(len, files.values()))}
            try:
                record["outcome"] = read_input(path)
            except TooSlow:
                record["outcome"], record["crash"] = "crash", f"hang (over {timeout:g} CPU s)"
                record["saved"] = str(save_crash(files, reader, index, crashes))
            except Exception as error:  # noqa: BLE001 - a crash is what the fuzzer looks for
                record["outcome"], record["crash"] = "crash", crash_signature(error)
                record["detail"] = str(error)[:200]
                if record["crash"] not in seen:
                    seen.add(record["crash"])
                    record["saved"] = str(save_crash(files, reader, index, crashes))
            signal.setitimer(signal.ITIMER_PROF, 0)
            faulthandler.cancel_dump_traceback_later()
            record["seconds"] = round(time.perf_counter() - began, 4)
            record["cpu_seconds"] = round(time.process_time() - cpu, 4)
            record["peak_extra_kib"] = max(0, _rss_kib("VmHWM") - before) if exact else None
            record["text_bytes"] = _text_bytes(files)
            out.write(json.dumps(record) + "\n")
            out.flush()
            shutil.rmtree(directory, ignore_errors=True)


def _text_bytes(files: dict[str, bytes]) -> int:
    """Decompressed size of the input (what the reader holds in memory)."""
    total = 0
    for name, data in files.items():
        try:
            if name.endswith(".gz"):
                total += len(gzip.decompress(data))
            elif name.endswith(".xz"):
                total += len(lzma.decompress(data))
            elif name.endswith(".zst"):
                total += len(zstandard.ZstdDecompressor().decompressobj().decompress(data))
            else:
                total += len(data)
        except Exception:  # noqa: BLE001 - a damaged stream counts at its size on disk
            total += len(data)
    return total


def drive(reader: str, inputs: int, timeout: float, workdir: Path, crashes: Path, wall_timeout: float) -> list[dict]:
    """Run a reader's inputs in worker processes, restarting after the input that hung or died."""
    log = workdir / f"{reader}.jsonl"
    log.unlink(missing_ok=True)
    done: list[dict] = []
    start = 0
    while start < inputs:
        result = subprocess.run([sys.executable, __file__, "--worker", reader, "--start", str(start),
                                 "--count", str(inputs - start), "--timeout", str(timeout), "--wall-timeout", str(wall_timeout),
                                 "--log", str(log),
                                 "--crashes", str(crashes)], capture_output=True, text=True)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        finished = [r for r in records if "outcome" in r and r["index"] >= start]
        done += finished
        last = max((r["index"] for r in records if r["index"] >= start), default=start - 1)
        if last < start:
            raise RuntimeError(f"the {reader} worker failed before input {start}: {result.stderr.strip()[-2000:]}")
        if result.returncode == 0 and last == inputs - 1:
            break
        if last in {r["index"] for r in finished}:  # died between inputs: nothing to blame
            start = last + 1
            continue
        files = make_input(reader, random.Random(f"{reader}:{last}"))
        kind = "hang" if "Timeout" in result.stderr else f"died (exit {result.returncode})"
        done.append({"index": last, "outcome": "crash", "crash": kind, "bytes": sum(map(len, files.values())),
                     "saved": str(save_crash(files, reader, last, crashes)), "seconds": wall_timeout,
                     "detail": result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else ""})
        start = last + 1
    return done


def summarize(reader: str, records: list[dict]) -> dict:
    crashes: dict[str, list[int]] = {}
    for r in records:
        if r["outcome"] == "crash":
            crashes.setdefault(r["crash"], []).append(r["index"])
    measured = [r for r in records if r.get("peak_extra_kib") is not None]
    big = [r for r in measured if r["text_bytes"] >= 64 << 10]
    return {
        "reader": reader, "inputs": len(records),
        "events": sum(r["outcome"] == "events" for r in records),
        "refused": sum(r["outcome"] == "refused" for r in records),
        "crashes": sum(len(v) for v in crashes.values()),
        "distinct_crashes": {k: {"count": len(v), "first_input": v[0]} for k, v in sorted(crashes.items())},
        "max_seconds": max((r["seconds"] for r in records), default=0),
        "max_cpu_seconds": max((r.get("cpu_seconds", 0) for r in records), default=0),
        "max_peak_extra_mib": round(max((r["peak_extra_kib"] for r in measured), default=0) / 1024, 1),
        "max_ratio_to_file_64k_plus": round(max((r["peak_extra_kib"] * 1024 / r["bytes"] for r in big
                                                 if r["bytes"] >= 64 << 10), default=0), 1),
        "max_ratio_to_text_64k_plus": round(max((r["peak_extra_kib"] * 1024 / r["text_bytes"] for r in big),
                                                default=0), 1),
        "inputs_64k_plus": len(big),
    }


def logged(workdir: Path) -> dict[str, list[dict]]:
    """Each reader's finished inputs from a run's logs (a run still going, or stopped early);
    an input started but never finished, other than the last, is a hang or a worker death."""
    runs = {}
    for log in sorted(workdir.glob("*.jsonl")):
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        finished = {r["index"]: r for r in lines if "outcome" in r}
        started = [r["index"] for r in lines if r.get("started")]
        for index in started[:-1]:
            if index not in finished:
                finished[index] = {"index": index, "outcome": "crash", "crash": "hang or worker death", "bytes": 0,
                                   "text_bytes": 0, "seconds": 0, "peak_extra_kib": None}
        runs[log.stem] = sorted(finished.values(), key=lambda r: r["index"])
    return runs


def _reads_in_time(reader: str, index: int, timeout: float = 20.0) -> bool:
    """Whether an input a worker did not finish reads or is refused within `timeout` on its own."""
    with tempfile.TemporaryDirectory() as scratch:
        path = write_input(make_input(reader, random.Random(f"{reader}:{index}")), Path(scratch))
        began = time.perf_counter()
        try:
            read_input(path)
        except Exception:  # noqa: BLE001 - then it is a crash after all
            return False
        return time.perf_counter() - began < timeout


def curate(workdir: Path, crashes: Path) -> None:
    """Keep one input per (reader, crash): the smallest, rebuilt from its number, in `crashes`."""
    shutil.rmtree(crashes, ignore_errors=True)
    crashes.mkdir(parents=True)
    lines = []
    for reader, records in logged(workdir).items():
        smallest: dict[str, dict] = {}
        for r in records:
            if r["outcome"] == "crash" and (r["crash"] not in smallest or r["bytes"] < smallest[r["crash"]]["bytes"]):
                smallest[r["crash"]] = r
        for crash, r in sorted(smallest.items()):
            if r["crash"] == "hang or worker death" and _reads_in_time(reader, r["index"]):
                continue  # the worker was ended from outside (every reader's at the same instant)
            save_crash(make_input(reader, random.Random(f"{reader}:{r['index']}")), reader, r["index"], crashes)
            lines.append(f"| `{reader}-{r['index']}` | {crash} | {r.get('detail', '').splitlines()[0][:110]} |")
    (crashes / "README.md").write_text(
        "# Inputs that crashed kptrace's readers\n\nFound by `benchmarks/fuzz.py` (input N of reader R is "
        "`make_input(R, random.Random(f\"{R}:{N}\"))`); the smallest input of each distinct crash. "
        "tests/test_fuzz.py replays them; `python benchmarks/fuzz.py --replay tests/data/fuzz-crashes` "
        "says what each gives now.\n\n| input | crash (exception at kptrace frame) | message |\n|---|---|---|\n"
        + "\n".join(lines) + "\n")


def replay(directory: Path) -> int:
    """Re-read every saved crash input; print what each gives now. Exit 1 while any still crashes."""
    still = 0
    for case in sorted(p for p in directory.iterdir() if p.is_dir()):
        path = input_path(case)
        try:
            outcome = read_input(path)
        except Exception as error:  # noqa: BLE001
            outcome = f"CRASH {crash_signature(error)}: {(str(error).splitlines() or [''])[0][:120]}"
            still += 1
        print(f"{case.name}: {outcome}")
    return 1 if still else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per reader")
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--timeout", type=float, default=20.0, help="CPU seconds one input may take: past it, a hang")
    parser.add_argument("--wall-timeout", type=float, default=600.0,
                        help="wall seconds after which a worker stuck in one input is ended")
    parser.add_argument("--crashes", type=Path, default=DATA / "fuzz-crashes")
    parser.add_argument("--workdir", type=Path, default=None, help="where the per-input logs go (default: a temp dir)")
    parser.add_argument("--replay", type=Path, help="re-read saved crash inputs instead of fuzzing")
    parser.add_argument("--summarize", type=Path, metavar="WORKDIR", help="summarize a run's logs (partial too)")
    parser.add_argument("--curate", type=Path, metavar="WORKDIR",
                        help="keep the smallest input of each distinct crash of a run in --crashes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.replay:
        return replay(args.replay)
    if args.curate:
        curate(args.curate, args.crashes)
        return 0
    if args.summarize:
        print_table([summarize(reader, records) for reader, records in logged(args.summarize).items()])
        return 0
    if args.worker:
        worker(args.worker, args.start, args.count, args.timeout, args.log, args.crashes, args.wall_timeout)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kptrace-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for reader in args.readers.split(","):
        began = time.monotonic()
        summary = summarize(reader, drive(reader, args.inputs, args.timeout, workdir, args.crashes, args.wall_timeout))
        summary["wall_s"] = round(time.monotonic() - began, 1)
        results.append(summary)
        print(json.dumps(summary), flush=True)
    print_table(results)
    return 0


def print_table(results: list[dict]) -> None:
    """The run side by side per reader, then each distinct crash."""
    print(f"\n{'reader':<10} {'inputs':>7} {'events':>7} {'refused':>8} {'crashes':>8} {'distinct':>9} "
          f"{'max s':>7} {'max cpu s':>9} {'peak MiB':>9} {'x file':>7} {'x text':>7}")
    for s in results:
        print(f"{s['reader']:<10} {s['inputs']:>7} {s['events']:>7} {s['refused']:>8} {s['crashes']:>8} "
              f"{len(s['distinct_crashes']):>9} {s['max_seconds']:>7.2f} {s['max_cpu_seconds']:>9.2f} "
              f"{s['max_peak_extra_mib']:>9.1f} "
              f"{s['max_ratio_to_file_64k_plus']:>7.1f} {s['max_ratio_to_text_64k_plus']:>7.1f}")
    for s in results:
        for crash, seen in s["distinct_crashes"].items():
            print(f"{s['reader']}: {crash} ({seen['count']} inputs, first #{seen['first_input']})")


if __name__ == "__main__":
    sys.exit(main())
