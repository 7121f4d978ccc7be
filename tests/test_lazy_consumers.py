"""Every consumer of an Analysis works on Parquet scans (a windowed analysis of a large capture
holds its per-event tables as `pl.scan_parquet` of the files it wrote, kptrace.analysis) and
gives the same outputs as on the tables in memory: damaged windows and request marks, the
what-if results, summary.json, report.html, the timeline's bytes and every Parquet table. And
write_all leaves the tables a windowed analysis stored where they are."""

from __future__ import annotations

import filecmp
import json
import re
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kptrace import faults
from kptrace.analysis import Analysis, analyze
from kptrace.export.outputs import write_all
from kptrace.export.parquet import write_tables
from kptrace.export.perfetto import write_timeline
from kptrace.simulate import Scenario, scenario_with_nic, write_simulation
from kptrace.summary import build_summary, counter_samples
from kptrace.whatif import NETWORK_POLICIES, Policy, PolicyError, whatif

ROOT = Path(__file__).resolve().parent.parent
#: Tables a windowed analysis holds as scans (kptrace.analysis.Analysis), by field and file name.
SCANNED = {"events": "events", "intervals": "intervals", "disruptions": "disruptions", "requests": "requests",
           "hits": "request_hits", "request_counters": "request_counters"}
INPUTS = {
    "sample trace with disk IRQs": ROOT / "sample_traces" / "memcached-diskirq-same-core",
    "trace.dat v7 with dropped events": ROOT / "tests" / "data" / "binary" / "v7-drops.dat.zst",
    "raw ring-buffer pages": ROOT / "tests" / "data" / "binary" / "raw",
    "simulated server with a NIC": None,
}


def scanned(analysis: Analysis, stored: Path) -> Analysis:
    """The analysis as a windowed analyze hands it over: its tables written to `stored`, the
    per-event ones scans of those files."""
    write_tables(stored, analysis.tables(), analysis.meta)
    scans = {field: pl.scan_parquet(stored / f"{name}.parquet") for field, name in SCANNED.items()
             if getattr(analysis, field) is not None}
    return replace(analysis, stored=stored, **scans)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict:
    """Each input analysed once for the module, whatever order the tests ask for them in."""
    return {}


@pytest.fixture(params=list(INPUTS))
def pair(request, analysed, tmp_path_factory) -> tuple[Analysis, Analysis]:
    """An input's analysis in memory, and the same as scans of its stored tables."""
    if request.param not in analysed:
        path = INPUTS[request.param]
        if path is None:
            path = write_simulation(tmp_path_factory.mktemp("nic"), scenario_with_nic(
                Scenario(duration_s=0.1, seed=5), "vanilla", {}), "tracefs")
        analysis = analyze(path)
        analysis = replace(analysis, events=analysis.events.lazy().collect())  # frames: the held table's view, built
        analysed[request.param] = analysis, scanned(analysis, tmp_path_factory.mktemp("stored"))
    return analysed[request.param]


def _chunk_sizes(events: pl.DataFrame) -> tuple[int, ...]:
    """Chunks that cut the events about 40 times, 3 times, never."""
    return max(1, events.height // 40), events.height // 3 + 1, 1 << 20


def test_damaged_windows_and_request_marks_from_scans_equal_those_from_frames(pair, monkeypatch):
    frames, scans = pair
    # Neighbours of lost-event marks are found a chunk at a time: make chunks cut the trace.
    rows = 0 if frames.events is None else frames.events.height
    monkeypatch.setattr(faults, "NEIGHBOUR_ROWS", max(97, rows // 5))
    windows = faults.damaged_windows(scans.events, scans.intervals, scans.meta)
    assert_frame_equal(windows, frames.damaged_windows)
    if frames.requests is not None:
        unmarked = scans.requests.drop("damaged", "fault_kinds")
        marked = faults.mark_requests(unmarked, windows)
        assert isinstance(marked, pl.LazyFrame)
        assert_frame_equal(marked.collect(), frames.requests)
        assert faults.fault_overview(windows, marked) == faults.fault_overview(windows, frames.requests)


BINARY = ["trace.dat v7 with dropped events", "raw ring-buffer pages"]


@pytest.mark.parametrize("pair", BINARY, indirect=True)
def test_every_events_neighbours_on_its_cpu_are_found_across_chunk_edges(pair, monkeypatch):
    frames, scans = pair
    tracer = pl.col("cpu").is_not_null() & (pl.col("subsystem") != "counter")
    expected = (frames.events.with_row_index("seq").filter(tracer)
                .select("seq", prev_ts=pl.col("ts").shift(1).over("cpu"), next_ts=pl.col("ts").shift(-1).over("cpu"),
                        next_event=pl.col("event").shift(-1).over("cpu")))
    assert expected["prev_ts"].null_count() < expected.height
    for rows in _chunk_sizes(frames.events):
        monkeypatch.setattr(faults, "NEIGHBOUR_ROWS", rows)
        found = faults._per_cpu(scans.events, pl.lit(True)).select(expected.columns)
        assert_frame_equal(found, expected)


@pytest.mark.parametrize("pair", ["trace.dat v7 with dropped events"], indirect=True)
def test_the_dropped_events_recording_has_lost_event_windows_found_across_chunk_edges(pair, monkeypatch):
    frames, scans = pair
    lost = frames.damaged_windows.filter(pl.col("kind") == "lost_events")
    assert lost.height > 0
    for rows in _chunk_sizes(frames.events):
        monkeypatch.setattr(faults, "NEIGHBOUR_ROWS", rows)
        assert_frame_equal(faults.lost_event_windows(scans.events), lost)


def _summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("outputs")
    return summary


def _report(out: Path) -> str:
    return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", (out / "report.html").read_text())


def test_every_output_of_a_scanned_analysis_equals_the_in_memory_one(pair, tmp_path):
    frames, scans = pair
    outs = {}
    for name, analysis in (("frames", frames), ("scans", scans)):
        outs[name] = tmp_path / name
        summary = build_summary(analysis, predict=False)
        if analysis.requests is not None:   # build_summary's what-if, with fewer replicates (time)
            summary["whatif"] = whatif(analysis, replicates=3)
        write_all(analysis, outs[name], summary, predicted="remove")
    assert _summary(outs["frames"]) == _summary(outs["scans"])
    assert _report(outs["frames"]) == _report(outs["scans"])
    assert filecmp.cmp(outs["frames"] / "timeline.perfetto-trace.gz", outs["scans"] / "timeline.perfetto-trace.gz",
                       shallow=False)
    tables = sorted(p.name for p in outs["frames"].glob("*.parquet"))
    assert tables == sorted(p.name for p in outs["scans"].glob("*.parquet"))
    assert ("whatif.parquet" in tables) == (frames.requests is not None)
    for name in tables:
        assert_frame_equal(pl.read_parquet(outs["frames"] / name), pl.read_parquet(outs["scans"] / name))
    # Stored elsewhere: the stored files are copied as they are.
    for name in SCANNED.values():
        if (scans.stored / f"{name}.parquet").exists():
            assert filecmp.cmp(scans.stored / f"{name}.parquet", outs["scans"] / f"{name}.parquet", shallow=False)


#: The inputs with requests to replay (the bundled binary recordings have none).
WITH_REQUESTS = ["sample trace with disk IRQs", "simulated server with a NIC"]


@pytest.mark.parametrize("pair", WITH_REQUESTS, indirect=True)
def test_whatif_results_of_named_policies_from_scans_equal_those_from_frames(pair):
    frames, scans = pair
    assert frames.requests is not None and scans.requests is not None
    policies = [Policy("vanilla"), *[Policy(name) for name in NETWORK_POLICIES]]
    asked = {"replicates": 4, "seed": 3, "event_cost_ns": 150.0, "sample_cost_ns": 900.0}
    try:
        expected = whatif(frames, policies, **asked)
    except PolicyError as error:  # a policy that does not apply here must fail the same way from scans
        with pytest.raises(type(error), match=re.escape(str(error))):
            whatif(scans, policies, **asked)
        policies = [Policy("vanilla")]
        expected = whatif(frames, policies, **asked)
    assert json.dumps(whatif(scans, policies, **asked)) == json.dumps(expected)


def test_the_busiest_seconds_of_a_scan_are_drawn_as_from_frames(pair, tmp_path):
    frames, scans = pair
    drawn = {}
    for name, analysis in (("frames", frames), ("scans", scans)):
        events = analysis.events
        counters = None if events is None else counter_samples(events)
        third = analysis.intervals.lazy().select(pl.len()).collect().item() // 3
        drawn[name] = write_timeline(tmp_path / f"{name}.pftrace", events, analysis.intervals, analysis.requests,
                                     counters, max_items=third, irq_rate_bin_ns=5_000_000)
    assert drawn["frames"]["window"] is not None
    assert drawn["scans"]["window"] == drawn["frames"]["window"]
    assert (tmp_path / "scans.pftrace").read_bytes() == (tmp_path / "frames.pftrace").read_bytes()


SMALL = "simulated server with a NIC"


@pytest.mark.parametrize("pair", [SMALL], indirect=True)
def test_write_all_into_the_stored_directory_leaves_the_stored_tables_and_writes_the_rest(pair, tmp_path):
    frames, _ = pair
    scans = scanned(frames, tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.parquet")
              if p.stem in SCANNED.values()}
    assert before
    for path in [tmp_path / "meta.json", tmp_path / "attribution.parquet"]:
        path.unlink()
    summary = write_all(scans, tmp_path, build_summary(scans, predict=False))
    after = {name: ((tmp_path / name).stat().st_mtime_ns, (tmp_path / name).read_bytes()) for name in before}
    assert after == before
    for name in ("meta.json", "attribution.parquet", "summary.json", "report.html", "timeline.perfetto-trace.gz"):
        assert (tmp_path / name).stat().st_size > 0
    assert_frame_equal(pl.read_parquet(tmp_path / "attribution.parquet"), frames.attribution)
    assert summary["outputs"]["tables"] == sorted(frames.tables())


@pytest.mark.parametrize("pair", [SMALL], indirect=True)
def test_a_changed_scan_replaces_its_stored_file_and_the_outputs_read_the_new_one(pair, tmp_path):
    frames, _ = pair
    assert frames.requests is not None
    scans = scanned(frames, tmp_path)
    # As a windowed analysis may hand it: its requests stored before their fault marks.
    unmarked = tmp_path / "requests.parquet"
    frames.requests.drop("damaged", "fault_kinds").write_parquet(unmarked)
    marked = replace(scans, requests=faults.mark_requests(pl.scan_parquet(unmarked), frames.damaged_windows))
    write_all(marked, tmp_path, build_summary(marked, predict=False))
    assert_frame_equal(pl.read_parquet(unmarked), frames.requests)
    assert not list(tmp_path.glob("*.partial"))
