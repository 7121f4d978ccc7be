"""The three readers give the same typed rows for the same kernel events.

Data: tests/data/*.txt.zst, one real recording rendered by tracefs, trace-cmd report (default,
-R, -t) and perf script; see tests/data/record-test-data.sh for exactly how.
"""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import zstandard

import kptrace
from kptrace.schema import EVENT_SCHEMA
from conftest import DATA, require_tools

FLAG_COLUMNS = ["irqs_off", "bh_off", "need_resched", "in_hardirq", "in_softirq", "in_nmi", "preempt_depth"]
#: Columns every reader must fill identically (tgid and flags exist only in tracefs text).
SHARED = [c for c in EVENT_SCHEMA if c not in ("tgid", "fields", *FLAG_COLUMNS)]


def events(name: str) -> pl.DataFrame:
    """Real events of one file (lost-data markers left out), categoricals as strings."""
    frame = kptrace.load(DATA / name).events.filter(pl.col("subsystem") != "kptrace").collect()
    return frame.with_columns(pl.col(pl.Categorical).cast(pl.String))


def differences(left: pl.DataFrame, right: pl.DataFrame, columns) -> dict[str, int]:
    assert left.height == right.height
    return {c: int(left[c].ne_missing(right[c]).sum()) for c in columns if left[c].ne_missing(right[c]).any()}


@pytest.fixture(scope="module")
def tracefs_events() -> pl.DataFrame:
    return events("tracefs.txt.zst")


def test_recording_has_every_event_family_kptrace_types(tracefs_events):
    present = set(tracefs_events["event"].unique())
    needed = {"irq_handler_entry", "irq_handler_exit", "softirq_raise", "softirq_entry", "softirq_exit",
              "local_timer_entry", "local_timer_exit", "napi_poll", "netif_receive_skb", "netif_rx",
              "net_dev_xmit", "sched_switch", "sched_wakeup", "sched_waking", "sys_enter_epoll_wait",
              "sys_exit_epoll_wait", "sys_enter_read", "sys_exit_read", "sys_enter_sendmsg", "sys_exit_sendmsg"}
    assert needed <= present, needed - present


def test_tracefs_typed_fields_are_filled(tracefs_events):
    by_event = {e: f for (e,), f in tracefs_events.partition_by("event", as_dict=True).items()}
    assert by_event["irq_handler_entry"]["irq_name"].null_count() == 0
    assert set(by_event["irq_handler_exit"]["ret"].unique()) <= {0, 1}
    assert by_event["local_timer_entry"]["vector"].unique().to_list() == [236]
    assert by_event["softirq_entry"]["softirq"].null_count() == 0
    napi = by_event["napi_poll"]
    assert napi["dev"].null_count() == 0 and (napi["napi_budget"] > 0).all()
    assert (by_event["sys_enter_read"]["count"] > 0).all() and by_event["sys_enter_read"]["fd"].min() >= 0
    assert by_event["sys_exit_read"]["ret"].null_count() == 0
    switch = by_event["sched_switch"]
    assert switch.select("prev_pid", "next_pid", "prev_state", "next_comm").null_count().sum_horizontal()[0] == 0
    assert tracefs_events["tgid"].null_count() < tracefs_events.height
    assert tracefs_events.select(FLAG_COLUMNS).null_count().sum_horizontal()[0] == 0
    # NET_RX runs in softirq context; the flags column says so.
    assert by_event["napi_poll"]["in_softirq"].all()


@pytest.fixture(scope="module")
def tracefs_text() -> str:
    return zstandard.ZstdDecompressor().stream_reader(open(DATA / "tracefs.txt.zst", "rb")).read(64 << 20).decode()


def printed(text: str, payload: str, convert) -> list[tuple]:
    """(ts ns, cpu, *fields) of the lines whose payload matches `payload`, read with `re` alone."""
    line = re.compile(r"\[(\d+)\] \S+\s+(\d+)\.(\d{6}): " + payload + "$", re.MULTILINE)
    return sorted((int(sec) * 1_000_000_000 + int(usec) * 1000, int(cpu), *convert(fields))
                  for cpu, sec, usec, *fields in line.findall(text))


@pytest.mark.parametrize("event,payload,convert", [
    ("irq_handler_entry", r"irq_handler_entry: irq=(\d+) name=(\S+)", lambda f: (int(f[0]), f[1])),
    # ftrace prints a syscall argument below 10 in decimal, others in hex: `fd: 4`, `fd: 0x26`.
    ("sys_enter_read", r"sys_read\(fd: (\w+), buf: \w+, count: (\w+)\)", lambda f: (int(f[0], 0), int(f[1], 0))),
    ("sched_switch", r"sched_switch: prev_comm=.* prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> "
                     r"next_comm=(.*) next_pid=(\d+) next_prio=\d+", lambda f: (int(f[0]), f[1], f[2], int(f[3]))),
])
def test_typed_fields_hold_the_values_printed_in_the_text(tracefs_events, tracefs_text, event, payload, convert):
    """Each typed value against the same line parsed independently (Python's `re`, not kptrace)."""
    columns = {"irq_handler_entry": ["irq", "irq_name"], "sys_enter_read": ["fd", "count"],
               "sched_switch": ["prev_pid", "prev_state", "next_comm", "next_pid"]}[event]
    expected = printed(tracefs_text, payload, convert)
    rows = tracefs_events.filter(pl.col("event") == event).select("ts", "cpu", *columns)
    assert len(expected) >= 20  # the recording has 24 hard IRQs, thousands of the others
    assert sorted(rows.iter_rows()) == expected


def test_trace_cmd_report_of_the_same_buffer_gives_identical_rows(tracefs_events):
    report = events("tracecmd.txt.zst")
    diff = differences(tracefs_events, report, SHARED)
    # trace-cmd's sched_switch plugin prints a preempted task as `R` where tracefs prints `R+`.
    assert set(diff) <= {"prev_state"}, diff
    if diff:
        changed = tracefs_events.filter(tracefs_events["prev_state"].ne_missing(report["prev_state"]))
        assert changed["prev_state"].unique().to_list() == ["R+"]


def test_trace_cmd_raw_report_matches_tracefs_exactly(tracefs_events):
    assert differences(tracefs_events, events("tracecmd-raw.txt.zst"), SHARED) == {}


def test_trace_cmd_nanosecond_report_rounds_to_the_tracefs_microseconds(tracefs_events):
    precise = events("tracecmd-ns.txt.zst")
    assert (precise["ts"] % 1000 != 0).any()
    rounded = precise.with_columns(ts=(pl.col("ts") + 500) // 1000 * 1000)
    assert set(differences(tracefs_events, rounded, SHARED)) <= {"prev_state"}


def test_ingest_meta_counts_agree_across_the_three_formats(tmp_path, tracefs_events):
    metas = {}
    for name in ("tracefs.txt.zst", "tracecmd.txt.zst", "perf.txt.zst"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "kptrace.cli", "ingest", str(DATA / name), "-o", str(out)], check=True,
                       capture_output=True)
        metas[name] = kptrace.load(out).meta
    assert metas["tracefs.txt.zst"]["event_counts"] == metas["tracecmd.txt.zst"]["event_counts"]
    # ...and they are the counts of the rows themselves, not merely equal to each other.
    assert metas["tracefs.txt.zst"]["event_counts"] == dict(tracefs_events.group_by("event").len().iter_rows())
    assert metas["tracefs.txt.zst"]["ts_resolution_ns"] == 1000
    assert metas["perf.txt.zst"]["source_format"] == "perf"


def test_perf_script_gives_the_same_rows_as_tracefs_where_both_recorded(tracefs_events):
    """perf and the tracefs instance recorded the same tracepoints at once, on one clock. Each
    tracer reads the clock itself, so their stamps of one event differ by up to a microsecond
    or so: each row is matched to the nearest perf row of its (cpu, task, event) within 10 µs."""
    # perf switches its events on and off one by one: compare strictly inside its span, and
    # leave out irq_vectors:irq_work_exit, which perf could not enable on the recording VM.
    margin = 1_000_000
    perf = events("perf.txt.zst")
    assert (perf["ts"] % 1000 != 0).any()  # recorded with --ns
    start, end = perf["ts"].min() + margin, perf["ts"].max() - margin
    perf = perf.filter(pl.col("ts").is_between(start, end))
    window = tracefs_events.filter(pl.col("ts").is_between(start, end), ~pl.col("event").str.starts_with("irq_work"))
    counts = window.group_by("event").len().sort("event")
    assert counts.equals(perf.group_by("event").len().sort("event"))
    key = ["cpu", "tid", "event"]
    joined = window.sort("ts").join_asof(
        perf.sort("ts").with_columns(ts_perf=pl.col("ts"), perf_row=pl.int_range(pl.len())),
        on="ts", by=key, strategy="nearest", tolerance=10_000, suffix="_perf", check_sortedness=False,
    )
    # Stamps of one event can differ by a few µs (perf's probe runs after ftrace's); edges may
    # cut one side. Nearly every row must match, and all but perf's own syscalls field by field
    # (perf's writes of its buffer come in bursts of like calls a µs apart, easily paired wrongly).
    matched = joined.filter(pl.col("perf_row").is_not_null())
    assert matched.height >= 0.999 * window.height
    assert matched["perf_row"].n_unique() >= 0.999 * matched.height
    typed = [c for c in SHARED if c not in ("ts", *key, "comm", "subsystem")]
    matched = matched.filter(pl.col("comm") != "perf")
    for column in typed:
        mismatched = matched.filter(pl.col(column).ne_missing(pl.col(f"{column}_perf")))
        assert mismatched.height == 0, (column, mismatched.head(3))


def test_perf_counter_samples_become_counter_rows():
    frame = events("perf-counters.txt.zst")
    counters = frame.filter(pl.col("subsystem") == "counter")
    assert set(counters["event"].unique()) == {"task-clock", "msr/tsc/", "context-switches"}
    # Each value is the one perf printed before the counter's name (read here with `re` alone).
    text = zstandard.ZstdDecompressor().stream_reader(open(DATA / "perf-counters.txt.zst", "rb")).read(64 << 20).decode()
    for name in ("task-clock", "msr/tsc/", "context-switches"):
        printed = sorted(int(v) for v in re.findall(rf"^.*?: +(\d+) +{re.escape(name)}:", text, re.MULTILINE))
        assert sorted(counters.filter(pl.col("event") == name)["value"].to_list()) == printed, name
    anchors = frame.filter(pl.col("event") == "sys_exit_epoll_wait").select("ts", "cpu", "tid")
    # perf prints no line for a member whose delta is 0 (context-switches often is).
    per_anchor = counters.group_by("ts", "cpu", "tid").agg(pl.col("event").sort())
    assert per_anchor.height == anchors.unique().height
    assert per_anchor["event"].list.set_intersection(["msr/tsc/", "task-clock"]).list.len().min() == 2
    assert per_anchor["event"].list.len().max() == 3


@pytest.fixture(scope="module")
def sample_text() -> str:
    text = zstandard.ZstdDecompressor().stream_reader(open(DATA / "tracefs.txt.zst", "rb")).read(2 << 20).decode()
    return "".join(text.splitlines(keepends=True)[:5000])


@pytest.mark.parametrize("suffix,pack", [(".gz", gzip.compress), (".xz", lzma.compress),
                                          (".zst", zstandard.ZstdCompressor().compress)])
def test_compressed_inputs_read_as_the_plain_text(tmp_path, sample_text, suffix, pack):
    plain = tmp_path / "trace.txt"
    plain.write_text(sample_text)
    packed = tmp_path / f"trace{suffix}"
    packed.write_bytes(pack(sample_text.encode()))
    read_plain = kptrace.load(plain).events.collect()
    assert read_plain.height == sum(1 for line in sample_text.splitlines() if not line.startswith("#"))
    assert kptrace.load(packed).events.collect().equals(read_plain)


def test_tracefs_without_header_flags_or_tgid_gives_the_same_events(tmp_path, sample_text):
    bare = "".join(
        re.sub(r"^(\s*.+?-\d+)\s+\(\s*[\d-]+\)\s+(\[\d+\])\s+\S{4,5}\s+", r"\1 \2 ", line)
        for line in sample_text.splitlines(keepends=True) if not line.startswith("#")
    )
    (tmp_path / "bare.txt").write_text(bare)
    full = kptrace.load(_write(tmp_path / "full.txt", sample_text)).events.collect()
    stripped = kptrace.load(tmp_path / "bare.txt").events.collect()
    assert full.height == bare.count("\n") > 4000
    assert stripped["tgid"].null_count() == stripped.height and stripped["irqs_off"].null_count() == stripped.height
    assert stripped.select(SHARED).equals(full.select(SHARED))


def test_comms_with_spaces_dashes_and_unknown_names(tmp_path):
    text = zstandard.ZstdDecompressor().stream_reader(open(DATA / "tracefs.txt.zst", "rb")).read(64 << 20).decode()
    lines = [line for line in text.splitlines(keepends=True) if "mc-worker-" in line][:3]
    renamed = [lines[0].replace("mc-worker-", "Web Content-", 1),
               lines[1].replace("mc-worker-", "my-odd-name-", 1),
               lines[2].replace("mc-worker-", "<...>-", 1)]
    frame = kptrace.load(_write(tmp_path / "names.txt", "".join(renamed))).events.collect()
    assert frame["comm"].to_list() == ["Web Content", "my-odd-name", "<...>"]
    tid = int(re.search(r"mc-worker-(\d+)", lines[0]).group(1))
    assert frame["tid"][0] == tid


def _write(path, text):
    path.write_text(text)
    return path


def test_live_tracefs_and_trace_cmd_extract_of_one_buffer_agree(tracefs, tmp_path):
    """The strongest check, on this machine now: read a stopped buffer, then extract it."""
    require_tools("trace-cmd", "memcached", "memcaslap")
    instance = tracefs / "instances" / "kptrace-test-readers"
    memcached = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", "11397", "-t", "1", "-U", "0"])
    try:
        instance.mkdir()
        (instance / "tracing_on").write_text("0")
        for event in ("irq", "irq_vectors", "napi", "sched"):
            (instance / "events" / event / "enable").write_text("1")
        for name in ("sys_enter_read", "sys_exit_read", "sys_enter_sendmsg", "sys_exit_sendmsg",
                     "sys_enter_epoll_wait", "sys_exit_epoll_wait"):
            (instance / "events" / "syscalls" / name / "enable").write_text("1")
        (instance / "options" / "record-tgid").write_text("1")
        (instance / "tracing_on").write_text("1")
        subprocess.run(["memcaslap", "-s", "127.0.0.1:11397", "-x", "500", "-c", "1", "-T", "1"],
                       capture_output=True, timeout=60)
        (instance / "tracing_on").write_text("0")
        (tmp_path / "tracefs.txt").write_text((instance / "trace").read_text())
        subprocess.run(["trace-cmd", "extract", "-B", instance.name, "-o", str(tmp_path / "trace.dat")],
                       check=True, capture_output=True)
        report = subprocess.run(["trace-cmd", "report", "-R", "-i", str(tmp_path / "trace.dat")],
                                check=True, capture_output=True, text=True).stdout
        (tmp_path / "report.txt").write_text(report)
    finally:
        memcached.terminate()
        memcached.wait()
        if instance.exists():
            (instance / "tracing_on").write_text("0")
            (instance / "events" / "enable").write_text("0")
            instance.rmdir()
    direct = kptrace.load(tmp_path / "tracefs.txt").events.filter(pl.col("subsystem") != "kptrace").collect()
    extracted = kptrace.load(tmp_path / "report.txt").events.filter(pl.col("subsystem") != "kptrace").collect()
    assert direct.height > 1000
    assert direct.select(SHARED).equals(extracted.select(SHARED))


def test_perf_period_before_a_tracepoint_is_not_a_counter():
    """The collector runs `perf script -F comm,tid,cpu,time,period,event,trace`: every line,
    tracepoints included, then starts with a period (sample_traces/*/perf-counters.txt.zst)."""
    bundle = Path(__file__).parent.parent / "sample_traces" / "memcached-diskirq-same-core"
    frame = kptrace.load(bundle / "perf-counters.txt.zst").events.collect()
    kinds = dict(frame.group_by(pl.col("event").cast(pl.String)).agg(pl.col("subsystem").first().cast(pl.String)).iter_rows())
    assert kinds == {"sys_exit_epoll_wait": "syscalls", "task-clock": "counter", "msr/tsc/": "counter"}
    assert frame.filter(pl.col("subsystem") == "syscalls")["value"].null_count() == frame.filter(
        pl.col("subsystem") == "syscalls").height
