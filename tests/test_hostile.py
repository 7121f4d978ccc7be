"""Traces are untrusted input: names chosen by whoever ran the traced programs, and bundle archives
copied off machines the user does not control.

A simulated epoll server (kptrace.simulate, known truth) gets interrupt sources named like an
attack (`<script>alert(1)</script>`, a terminal escape sequence, `"; rm -rf /`), and its threads'
names in the trace text are replaced by such strings, by 16 control characters and by bytes that
are not UTF-8. Every output must show them faithfully (the reader turns invalid UTF-8 into U+FFFD,
nothing else changes) and safely: report.html runs no script from them and opens no dialog, JSON
escapes them, the Perfetto trace processor reads them back, and terminal text carries no escape
sequence. Bundle archives with `../`, absolute paths, links, devices or a decompression bomb are
refused with one line, and nothing is written outside the output folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import zstandard

from kptrace.analysis import analyze
from kptrace.archive import Limits, is_archive, opened, unpack
from kptrace.errors import TraceError
from kptrace.export.outputs import write_all
from kptrace.export.text import terminal_safe
from kptrace.simulate import Scenario, Source, write_simulation
from kptrace.summary import build_summary, render_summary
from test_perfetto import trace_processor  # noqa: F401 - the fixture running Perfetto's own trace processor

KPTRACE = [sys.executable, "-m", "kptrace.cli"]
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
ESCAPE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred"
SHELL = '"; rm -rf /'
#: Interrupt sources of the simulated server, by IRQ number.
HOSTILE_SOURCES = {42: SCRIPT, 43: ESCAPE, 44: SHELL, 45: IMG}
CONTROL = bytes(range(1, 9)) + bytes(range(14, 22))  # 16 control characters, none a line break or NUL
NOT_UTF8 = b"k\xff\xfe\xc3(w"
#: Thread names written over the simulated ones in the trace text: tid -> bytes as the kernel prints them.
HOSTILE_COMMS = {4242: SHELL.encode(), 4243: b"\x1b]0;pwned\x07\x1b[2J", 90: CONTROL, 91: NOT_UTF8}
#: C0 and C1 control characters, and DEL: what a terminal may act on.
TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    scenario = Scenario(duration_s=0.15, seed=1)
    extra = tuple(Source(name, 400.0, 4_000, 3_000, cpus=(1,), irq=irq) for irq, name in HOSTILE_SOURCES.items())
    path = write_simulation(folder / "sim", replace(scenario, sources=scenario.sources + extra))
    text = path.read_bytes()
    for tid, comm in HOSTILE_COMMS.items():
        text, n = re.subn(rb"(?m)^ *[\w/:.-]+-" + str(tid).encode() + rb"( +\()", comm.rjust(16) + b"-"
                          + str(tid).encode() + rb"\1", text)
        assert n > 0, f"the simulated trace has no thread {tid}"
    # A line that is no event, carrying an escape sequence into the reader's warning.
    text += b"\x1b]0;pwned\x07\x1b[2J this line is not an event\n"
    hostile = folder / "hostile.txt"
    hostile.write_bytes(text)
    return hostile


@pytest.fixture(scope="module")
def hostile_outputs(hostile_trace, tmp_path_factory) -> tuple[Path, dict]:
    analysis = analyze(hostile_trace)
    out = tmp_path_factory.mktemp("hostile-out")
    summary = write_all(analysis, out, build_summary(analysis))
    return out, summary


def expected_comm(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def test_parquet_keeps_every_hostile_name_exactly(hostile_outputs):
    out, _ = hostile_outputs
    events = pl.read_parquet(out / "events.parquet")
    for tid, raw in HOSTILE_COMMS.items():
        assert events.filter(pl.col("tid") == tid)["comm"].unique().to_list() == [expected_comm(raw)], tid
    assert "k\ufffd\ufffd\ufffd(w" == expected_comm(NOT_UTF8)  # each invalid byte is one U+FFFD
    sources = set(pl.read_parquet(out / "attribution.parquet")["source"].to_list())
    assert set(HOSTILE_SOURCES.values()) <= sources


def test_json_escapes_control_characters_and_reads_back_the_same_names(hostile_outputs):
    out, summary = hostile_outputs
    raw = (out / "summary.json").read_bytes()
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", raw), "a raw control byte in summary.json"
    loaded = json.loads(raw)
    assert set(HOSTILE_SOURCES.values()) <= {row["source"] for row in loaded["attribution"]["rows"]}
    meta = json.loads((out / "meta.json").read_text())
    assert any("\x1b]0;pwned" in example for example in meta["unparsed_examples"])


def test_report_html_shows_hostile_names_as_text(hostile_outputs):
    out, _ = hostile_outputs
    text = (out / "report.html").read_text()
    body = re.sub(r"<script[^>]*>.*?</script>", "", text, flags=re.S)
    assert SCRIPT not in body and IMG not in body and "onerror" not in body.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;img src=x onerror=alert(2)&gt;" in body
    # Inside the chart specs the names are JSON strings that cannot close their <script> element.
    specs = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', text, re.S)
    assert specs and all("</script" not in spec.lower() for spec in specs)
    assert any("<\\/script>" in spec for spec in specs)


def test_report_runs_no_script_from_trace_content_in_the_browser(hostile_outputs, tmp_path):
    """Headless Chromium (tests/test_report.py's DevTools driver): the page renders its charts,
    no JavaScript dialog opens, no error is logged, and the names read back as text."""
    from test_report import DevTools, problems, render  # noqa: F401 - the shared browser driver

    binary = _chromium()
    out, _ = hostile_outputs
    charts, found, state = render(binary, out / "report.html", tmp_path, tmp_path / "hostile.png")
    assert found == {"console": [], "exceptions": [], "network": []}
    assert state == "rendered" and charts and all(c["embedded"] for c in charts)
    browser = DevTools(binary, tmp_path / "profile2", tmp_path / "chromium2.log")
    try:
        browser.open_page((out / "report.html").resolve().as_uri())
        deadline = time.monotonic() + 90
        while browser.evaluate("document.body.getAttribute('data-charts')") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        shown = browser.evaluate("document.body.innerText")
        # A chart label is SVG text: what Vega drew, as text, not markup.
        labels = browser.evaluate("Array.from(document.querySelectorAll('svg text')).map(t => t.textContent).join('\\n')")
        images = browser.evaluate("document.querySelectorAll('img').length")
        scripts = browser.evaluate("document.scripts.length")
        dialogs = [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"]
    finally:
        browser.close()
    assert dialogs == []
    assert SCRIPT in shown and IMG in shown and SHELL in shown
    assert SCRIPT in labels
    assert images == 0  # the report draws no <img>: one here would be the trace's
    assert scripts == _script_elements((out / "report.html").read_text())  # only the report's own scripts


def _script_elements(text: str) -> int:
    """<script> elements as an HTML parser sees them (script bodies are not parsed as markup)."""
    from html.parser import HTMLParser

    class Counter(HTMLParser):
        count = 0

        def handle_starttag(self, tag, attrs):
            self.count += tag == "script"

    parser = Counter()
    parser.feed(text)
    return parser.count


def _chromium() -> str:
    from conftest import unavailable

    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    unavailable("needs Chromium (Debian package chromium) to open report.html")
    raise AssertionError("unreachable")


def test_perfetto_trace_processor_reads_hostile_names_back(hostile_outputs, trace_processor):
    out, _ = hostile_outputs
    rows = trace_processor(out / "timeline.perfetto-trace.gz", {
        "errors": "select name, value from stats where severity in ('error', 'data_loss') and value > 0",
        "slices": "select distinct name from slice",
        "tracks": "select distinct name from track"})
    assert rows["errors"] == []
    slices = {row["name"] for row in rows["slices"]}
    assert set(HOSTILE_SOURCES.values()) <= slices
    tracks = {row["name"] for row in rows["tracks"]}
    for tid in (4242, 4243):  # the request threads' tracks are named after them
        assert f"tid {tid} ({expected_comm(HOSTILE_COMMS[tid])})" in tracks


def test_terminal_summary_passes_no_escape_sequence(hostile_outputs):
    """What `kptrace analyze` prints, made terminal-safe: no control character left, and every
    name still readable (each control character shown as its \\xNN escape)."""
    _, summary = hostile_outputs
    plain = render_summary(summary)
    assert TERMINAL_CONTROLS.search(plain), "the summary should carry the hostile names to be made safe"
    safe = terminal_safe(plain)
    assert not TERMINAL_CONTROLS.search(safe)
    assert "\\x1b]0;pwned\\x07" in safe and SCRIPT[:22] in safe
    assert safe.count("\n") == plain.count("\n")


def test_kptrace_analyze_prints_no_escape_sequence_to_the_terminal(hostile_trace, tmp_path):
    """The whole command, stdout and stderr (summary, what-if table, the reader's warning that
    quotes the damaged line): no control character from the trace reaches the terminal."""
    result = _cli("analyze", str(hostile_trace), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        assert not TERMINAL_CONTROLS.search(stream)
    assert "\\x1b" in result.stdout + result.stderr   # shown, as an escape


def test_terminal_safe_keeps_printable_text_and_escapes_every_control():
    text = "µs ±95% naïve\tcol\n" + "".join(map(chr, range(0, 32))) + "\x7f\x9b[2J\u2028"
    safe = terminal_safe(text)
    assert safe.startswith("µs ±95% naïve\tcol\n")
    assert not TERMINAL_CONTROLS.search(safe) and "\u2028" not in safe
    assert "\\x1b" in safe and "\\x9b" in safe and "\\x00" in safe and "\\u2028" in safe
    assert terminal_safe(safe) == safe  # escaping twice changes nothing more


# ----------------------------------------------------------------------------- bundle archives


def _small_bundle(folder: Path) -> Path:
    """A bundle as kptrace-record lays it out, around a short simulated trace."""
    bundle = folder / "bundle"
    write_simulation(bundle, Scenario(duration_s=0.1, seed=4))
    (bundle / "manifest.json").write_text(json.dumps({"kptrace_bundle": 1, "trace_clock": "mono",
                                                      "files": {"trace": "trace.txt"}}))
    return bundle


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], compress: bool = True) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()) if compress else raw.getvalue())
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([*KPTRACE, *args], capture_output=True, text=True, cwd=cwd, env=env)


def _snapshot(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_analyze_reads_a_bundle_archive_without_unpacking_by_hand(tmp_path):
    bundle = _small_bundle(tmp_path)
    archive = tmp_path / "bundle.tar.zst"
    members = [_file(f"bundle/{p.name}", p.read_bytes()) for p in sorted(bundle.iterdir())]
    _tar(archive, [_dir("bundle"), *members])
    assert is_archive(archive) and not is_archive(bundle / "trace.txt")
    result = _cli("analyze", str(archive), "-o", "out", "-q", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    direct = _cli("analyze", str(bundle), "-o", "direct", "-q", "--json", cwd=tmp_path)
    assert json.loads(direct.stdout)["attribution"] == summary["attribution"]
    assert summary["input"]["format"].startswith("kptrace-bundle")
    assert not list((tmp_path / "out").glob(".unpacked-*")), "the private unpack folder is left behind"


HOSTILE_MEMBERS = {
    "dot-dot": ([_file("bundle/../../escaped.txt", b"owned")], "leads outside the archive"),
    "absolute": ([_file("/tmp/kptrace-absolute-escape.txt", b"owned")], "absolute path"),
    "symlink": ([_special("bundle/trace.txt", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
    "hardlink": ([_special("bundle/trace.txt", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
    "device": ([_special("bundle/tty", tarfile.CHRTYPE)], "device or FIFO"),
    "fifo": ([_special("bundle/pipe", tarfile.FIFOTYPE)], "device or FIFO"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_a_hostile_archive_member_is_refused_with_one_line(tmp_path, case):
    members, words = HOSTILE_MEMBERS[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(work / f"{case}.tar.zst", [_dir("bundle"), _file("bundle/manifest.json", b"{}"), *members])
    before = _snapshot(tmp_path)
    for command in ("analyze", "ingest"):
        result = _cli(command, str(archive), "-o", "out", *(["-q"] if command == "analyze" else []), cwd=work)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert words in lines[0] and str(archive) in lines[0] and "Traceback" not in result.stderr
    written = _snapshot(tmp_path) - before
    assert all(p == work / "out" for p in written), written  # only the (empty) output folder
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/kptrace-absolute-escape.txt").exists()


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks: a bomb member without holding it in memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_decompression_bomb_is_refused_before_it_fills_the_disk(tmp_path):
    """512 MiB of zeros packed into a few KiB: refused once it passes 200x its size (past the
    64 MiB floor), and the partial unpack is removed."""
    archive = tmp_path / "bomb.tar.zst"
    info = tarfile.TarInfo("bundle/trace.txt")
    info.size = 512 << 20
    with open(archive, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as packed, \
            tarfile.open(fileobj=packed, mode="w|") as tar:
        tar.addfile(info, io.BufferedReader(_Zeros(info.size), 1 << 20))
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(TraceError, match="decompression bomb"):
        with opened(archive, tmp_path / "out"):
            pass
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("limit,value,words", [("member_bytes", 500, "over the 500-byte limit"),
                                               ("total_bytes", 1000, "more than 1,000 bytes"),
                                               ("members", 1000, "more than 1000 members")])
def test_archive_limits_each_refuse(tmp_path, limit, value, words):
    """Three members of 600 bytes (and 1001 empty ones for the member count)."""
    members = [_dir("bundle")] + [_file(f"bundle/f{i}", b"x" * 600) for i in range(3)]
    if limit == "members":
        members += [_file(f"bundle/g{i}", b"") for i in range(1001)]
    archive = _tar(tmp_path / "a.tar.zst", members)
    into = tmp_path / "into"
    into.mkdir()
    limits = replace(Limits(), **{limit: value})
    with pytest.raises(TraceError, match=re.escape(words)):
        unpack(archive, into, limits)


def test_a_damaged_archive_is_a_one_line_error(tmp_path):
    bundle = _small_bundle(tmp_path)
    archive = _tar(tmp_path / "b.tar.zst", [_dir("bundle")] + [_file(f"bundle/{p.name}", p.read_bytes())
                                                                for p in sorted(bundle.iterdir())])
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    result = _cli("ingest", str(cut), "-o", "out", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "damaged archive" in lines[0], result.stderr
    assert not list((tmp_path / "out").glob(".unpacked-*"))
