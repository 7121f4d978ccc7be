"""The tracefs fast path gives exactly the rows of the reference regex parser, line for line.

`split_lines` reads most tracefs lines with constant slices (`TracefsLayout`) and hands every
line it does not take to the regex parser. Each test here parses the same text twice, once as
shipped and once with the fast path switched off, and requires identical results; and it checks
which lines the fast path took, so that the comparison is not vacuous. The splitting of text
into lines underneath (`lines_frame`) is checked against an independent oracle, `str.split`.
"""

from __future__ import annotations

import random

import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from kptrace.read import lines
from conftest import DATA


@pytest.fixture(scope="module")
def real_lines() -> list[str]:
    """Event lines of the real tracefs recording (TGID and flags columns on), header dropped."""
    text = zstandard.ZstdDecompressor().stream_reader(open(DATA / "tracefs.txt.zst", "rb")).read(2 << 20).decode()
    return [line for line in text.splitlines()[:-1] if not line.startswith("#")][:4000]


def regex_only(text: str, fmt: str = "tracefs") -> lines.SplitLines:
    """`split_lines` with the fast path switched off: the reference."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lines, "tracefs_layout", lambda sample: None)
        return lines.split_lines(text, fmt)


def assert_same_as_regex(text: str, fmt: str = "tracefs") -> lines.SplitLines:
    fast, slow = lines.split_lines(text, fmt), regex_only(text, fmt)
    assert fast.rows.schema == slow.rows.schema
    assert fast.rows.equals(slow.rows)
    assert (fast.unparsed_count, fast.unparsed_examples) == (slow.unparsed_count, slow.unparsed_examples)
    return fast


def fast_line_numbers(text: str) -> set[int]:
    """Line numbers (from 1) the fast path reads by itself."""
    frame = lines.lines_frame(text).collect()
    layout = lines.tracefs_layout(frame["line"].head(2000))
    return set(lines._fast_rows(frame, layout)["line_no"]) if layout else set()


def joined(body: list[str]) -> str:
    return "".join(line + "\n" for line in body)


def test_real_recording_is_read_by_the_fast_path_with_the_regex_rows(real_lines):
    text = joined(real_lines)
    split = assert_same_as_regex(text)
    assert split.rows.height == len(real_lines)
    assert len(fast_line_numbers(text)) == len(real_lines)


def without_tgid(line: str) -> str:
    """The line as the kernel prints it with options/record-tgid off: `(%7d) ` gone."""
    return line[:25] + line[35:]


def without_flags(line: str, tgid: bool = True) -> str:
    """The line as the kernel prints it with options/irq-info off: the flags column gone."""
    start = 41 if tgid else 31
    return line[:start] + line[start + 6:]


@pytest.mark.parametrize("variant", ["no tgid", "no flags", "neither"])
def test_kernel_layouts_without_tgid_or_flags(real_lines, variant):
    body = {
        "no tgid": [without_tgid(line) for line in real_lines],
        "no flags": [without_flags(line) for line in real_lines],
        "neither": [without_flags(without_tgid(line), tgid=False) for line in real_lines],
    }[variant]
    text = joined(body)
    split = assert_same_as_regex(text)
    assert split.rows.height == len(body)
    assert len(fast_line_numbers(text)) == len(body)
    if variant != "no flags":
        assert split.rows["tgid"].null_count() == split.rows.height


def with_comm(line: str, comm: str) -> str:
    """`line` with its 16-column comm field replaced (right-aligned, as `%16s` prints it)."""
    return comm.rjust(16) + line[16:]


#: Comms the fixed columns still read unambiguously: the fast path takes them.
ACCEPTED_COMMS = ["Web Content", "my-odd-name", "a-1", "x-12 -3", "<...>", "kworker/0:1", "a)b", "a]b", "", " lead"]
#: Comms that would let the regex split the prefix elsewhere, or hide the timestamp's `: `.
REJECTED_COMMS = ["a: b", "a[1]b", "a(2)", "(   1) [000]", "tab\there", "caf\u00e9", "naïve-1"]


def test_odd_comms_give_the_regex_rows_and_only_safe_ones_take_the_fast_path(real_lines):
    base = real_lines[:50]
    odd = [with_comm(line, comm) for comm in ACCEPTED_COMMS + REJECTED_COMMS for line in base[:3]]
    text = joined(base + odd)
    assert_same_as_regex(text)
    taken = fast_line_numbers(text)
    first_odd = len(base) + 1
    accepted = range(first_odd, first_odd + 3 * len(ACCEPTED_COMMS))
    rejected = range(accepted.stop, accepted.stop + 3 * len(REJECTED_COMMS))
    assert set(accepted) <= taken
    assert not set(rejected) & taken


@pytest.mark.parametrize("change", [
    pytest.param(lambda line: line[:35] + "[1000]" + line[40:], id="4-digit CPU"),
    pytest.param(lambda line: line[:17] + "12345678" + line[24:], id="8-digit pid"),
    pytest.param(lambda line: line[:26] + " 12 345" + line[33:], id="space inside tgid"),
    pytest.param(lambda line: line[:41] + "d..2" + line[46:], id="4-char flags in a 5-char file"),
    pytest.param(lambda line: line.replace(": ", ":\t", 1), id="tab after the timestamp"),
    pytest.param(lambda line: line.replace(".", ".1234", 1), id="nanosecond timestamp"),
    pytest.param(lambda line: line.replace(": ", ":", 1), id="no space after the timestamp"),
    pytest.param(lambda line: "kptrace-bench: " + line, id="trace-cmd instance prefix"),
    pytest.param(lambda line: "       memcaslap 22454 [000]  1432.831970:      60921   task-clock:  "
                              "7fd286f82f36 epoll_wait+0x56 (/usr/lib/libc.so.6)", id="perf counter line"),
])
def test_lines_off_the_layout_go_to_the_regex(real_lines, change):
    base = real_lines[:200]
    changed = [change(line) for line in base[:5]]
    text = joined(base + changed)
    assert_same_as_regex(text)
    assert not set(range(len(base) + 1, len(base) + 6)) & fast_line_numbers(text)


@pytest.mark.parametrize("payload", [
    "sys_read(fd: 0x16, buf: 0x7f5640010e80, count: 0x4000)", "sys_getpid()", "sys_read -> 0x46",
    "sys_read -> -11", "sys_x(a) -> 5", "sys_read -> ", "sys_read(fd: 3", "irq:irq_handler_entry: irq=1 name=x",
    "a:b:c: d", "ev:x: y", "ev:", "ev: ", "ev:payload", "évent: x", "sched_switch:   padded", "mystery_event",
    "sys_enter_read: fd: 0x00000013, buf: 0x1, count: 0x4000", "sys_foo:bar(x: 1)",
])
def test_event_and_payload_shapes_give_the_regex_rows(real_lines, payload):
    base = real_lines[:200]
    prefix = base[0][: base[0].index(": ") + 2]
    assert_same_as_regex(joined(base + [prefix + payload] * 3))


def test_random_damage_to_real_lines_gives_the_regex_rows(real_lines):
    """Fuzz: characters of the prefix and event name replaced, inserted or deleted at random."""
    rng = random.Random(2026)
    alphabet = " -()[]:.0123456789dDhHsNb\tx_é"
    damaged = []
    for line in rng.sample(real_lines, 1500):
        chars = list(line)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(min(len(chars), 80))
            action = rng.choice("rid")
            if action == "r":
                chars[at] = rng.choice(alphabet)
            elif action == "i":
                chars.insert(at, rng.choice(alphabet))
            elif len(chars) > 1:
                del chars[at]
        damaged.append("".join(chars))
    text = joined(real_lines[:500] + damaged)
    assert_same_as_regex(text)
    # Most damage leaves the columns intact, so both paths get exercised on damaged lines.
    taken = fast_line_numbers(text) - set(range(1, 501))
    assert 100 < len(taken) < len(damaged) - 100


@pytest.mark.parametrize("name", ["tracecmd.txt.zst", "tracecmd-raw.txt.zst", "perf-counters.txt.zst"])
def test_other_formats_never_take_the_tracefs_fast_path(name):
    text = zstandard.ZstdDecompressor().stream_reader(open(DATA / name, "rb")).read(1 << 20).decode()
    text = text[: text.rfind("\n") + 1]
    fmt = lines.detect_format(text)
    assert fmt != "tracefs"
    assert_same_as_regex(text, fmt)


def lines_by_str_split(text: str) -> list[str]:
    """The oracle: Python's `str.split` on newlines, the carriage return of a CRLF ending dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def assert_lines_as_str_split(text: str) -> None:
    """`lines_frame` gives the oracle's lines, numbered from 1; only the empty string after a
    final newline may be left out (the CSV reader leaves it out, the `str.split` fallback keeps it)."""
    frame = lines.lines_frame(text).collect()
    expected = lines_by_str_split(text)
    if frame.height == len(expected) - 1 and expected[-1] == "":
        expected.pop()
    assert frame["line"].to_list() == expected
    assert frame["line_no"].to_list() == list(range(1, len(expected) + 1))


@pytest.mark.parametrize("text", [
    pytest.param("a\n\nb\n  c  \n\"quoted\"\n'\n,;\t x\n# header\n\n\n", id="blank, quoted, separators"),
    pytest.param("caf\u00e9 \u2014 \ufffd\n\n", id="non-ASCII"),
    pytest.param("one line\n", id="one line"),
    pytest.param("no final newline\nlast", id="no final newline"),
    pytest.param("crlf\r\nlines\r\n\r\n", id="CRLF"),
    pytest.param("a lone \r inside\nb\n", id="lone CR"),
    pytest.param("a NUL \x00 inside\nb\n", id="NUL"),
])
def test_lines_are_read_verbatim_and_numbered_like_str_split(text):
    assert_lines_as_str_split(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab \t#,;\"'\n\r\x00\u00e9\u2028\x0b")), max_size=80))
def test_any_text_is_split_into_lines_like_str_split(text):
    """Both ways of splitting (the CSV reader, and `str.split` for text with NUL or CR) against
    the oracle, on text full of what could confuse them: quotes, separators, CR, NUL, U+2028."""
    assert_lines_as_str_split(text)


def test_a_leading_byte_order_mark_is_read_alike_by_both_ways_of_splitting():
    csv_read = lines.lines_frame("\ufeffa\nb\n").collect()["line"][0]
    split_read = lines.lines_frame("\ufeffa\r\nb\n").collect()["line"][0]
    assert csv_read == split_read == "a"


def test_real_recording_lines_are_read_verbatim(real_lines):
    text = joined(real_lines)
    assert lines.lines_frame(text).collect()["line"].to_list() == real_lines
