"""The event table held as a core plus one table per event family (kptrace.read.table) gives back
exactly the schema's wide table, and a query of one family never reads the others."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import kptrace.read.table as table_module
from kptrace.normalize import idle_named, in_time_order, normalize
from kptrace.read import read_any
from kptrace.read.table import EventTable
from kptrace.schema import CORE_COLUMNS, EVENT_COLUMNS, EVENT_SCHEMA, FAMILIES

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
RECORDINGS = [
    *(DATA / f"{name}.txt.zst" for name in ("tracefs", "tracecmd", "tracecmd-ns", "tracecmd-raw", "perf")),
    *(DATA / "binary" / f"{name}.dat{ext}" for name, ext in (("v6", ".zst"), ("v6-extend", ".zst"), ("v7-zstd", ""),
                                                            ("v7-none", ".zst"), ("v7-drops", ".zst"))),
    DATA / "binary" / "raw",
    *sorted(p for p in (ROOT / "sample_traces").iterdir() if p.is_dir()),
]


def _wide(raw) -> pl.DataFrame:
    """The event table as normalize held it before it was split: conformed, in time order."""
    from kptrace.schema import conform

    return conform(in_time_order(idle_named(raw.rows))).collect()


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_view_equals_the_wide_table_on_every_recording(path):
    raw = read_any(path)
    wide = _wide(raw)
    view = normalize(raw).view()
    assert view.collect_schema() == pl.Schema(EVENT_SCHEMA)
    assert_frame_equal(view.collect(), wide, check_exact=True)  # every column, dtype and row, in order


@pytest.fixture(scope="module")
def tracefs():
    events = normalize(read_any(DATA / "tracefs.txt.zst"))
    return events.table, events.table.view().collect()


def test_a_family_table_holds_only_the_rows_and_columns_that_family_fills(tracefs):
    table, wide = tracefs
    irq_rows = wide.filter(pl.col("event").cast(pl.String).is_in(["irq_handler_entry", "irq_handler_exit"]))
    assert table.families["irq"].height == irq_rows.height > 0
    assert table.families["sched_switch"].height == wide.filter(pl.col("event") == "sched_switch").height > 0
    for frame in table.frames():
        assert all(frame[c].null_count() < frame.height for c in frame.columns)
    assert set(table.core.columns) <= set(CORE_COLUMNS)
    assert table.core.schema["comm"] == pl.Categorical()  # a name: 4 B a row, not a 16 B string view


def test_a_filtered_select_of_one_family_never_reads_another_family(tracefs):
    """sched_switch's table is replaced by one that fails if read: a query of irq rows still works."""
    table, wide = tracefs
    switches = table.families["sched_switch"]
    poisoned = EventTable(table.core, {**table.families,
                                       "sched_switch": switches.with_columns(prev_pid=pl.lit("not a number"))})
    query = (pl.col("event") == "irq_handler_entry", ["ts", "cpu", "irq", "irq_name"])
    got = poisoned.view().filter(query[0]).select(query[1])
    plan = got.explain()
    assert "FILTER" not in plan and "SELECTION" in plan and "PROJECT 5/40 COLUMNS" in plan  # both reach the scan
    assert_frame_equal(got.collect(), wide.filter(query[0]).select(query[1]))
    with pytest.raises(pl.exceptions.InvalidOperationError):
        poisoned.view().select("prev_pid").collect()  # the poison is real


QUERIES = {
    "filter on a core column": lambda f: f.filter(pl.col("cpu") == 1),
    "filter on a family column": lambda f: f.filter(pl.col("ret") < 0).select("ts", "event", "ret"),
    "first rows, then a filter": lambda f: f.head(1500).filter(pl.col("irq").is_not_null()),
    "a filter, then first rows": lambda f: f.filter(pl.col("softirq").is_not_null()).head(3),
    "a slice": lambda f: f.slice(1200, 7).filter(pl.col("cpu") == 1),
    "last rows": lambda f: f.tail(3),
    "an aggregate filter": lambda f: f.filter(pl.col("ts") == pl.col("ts").max()),
    "a window filter": lambda f: f.filter(pl.col("tid") == pl.col("tid").first().over("cpu")),
    "a count": lambda f: f.filter(pl.col("event") == "sched_switch").select(pl.len()),
    "a row number": lambda f: f.with_row_index("seq").filter(pl.col("seq") % 1000 == 7),
}


@pytest.mark.parametrize("name", QUERIES)
def test_queries_of_the_view_match_the_wide_table_across_batches(tracefs, monkeypatch, name):
    table, wide = tracefs
    monkeypatch.setattr(table_module, "VIEW_BATCH_ROWS", 1000)  # many batches, so queries cross their edges
    query = QUERIES[name]
    assert_frame_equal(query(table.view()).collect(), query(wide.lazy()).collect())


def _values(dtype: pl.DataType) -> st.SearchStrategy:
    if dtype == pl.Boolean:
        return st.booleans()
    if dtype in (pl.String, pl.Categorical):
        return st.sampled_from(["a", "b", "<idle>", "napi/eth0", "x y"])
    info = {pl.Int8: 7, pl.Int16: 15, pl.Int32: 31, pl.Int64: 63}[type(dtype)]
    return st.integers(-(1 << info), (1 << info) - 1)


@st.composite
def wide_tables(draw) -> pl.DataFrame:
    """Wide tables with any column filled on any row, whatever the event (so the split is tested
    on values outside the families' usual rows too); ts and event are always set."""
    n = draw(st.integers(0, 30))
    events = ["irq_handler_entry", "irq_handler_exit", "sys_exit_read", "sched_switch", "napi_poll", "lost_events", "x"]
    columns = {}
    for column in EVENT_COLUMNS:
        if column.name == "ts":
            values = sorted(draw(st.lists(st.integers(0, 1 << 40), min_size=n, max_size=n)))
        elif column.name == "event":
            values = draw(st.lists(st.sampled_from(events), min_size=n, max_size=n))
        else:
            values = draw(st.lists(st.none() | _values(column.dtype), min_size=n, max_size=n))
        columns[column.name] = pl.Series(column.name, values, dtype=column.dtype)
    return pl.DataFrame(columns)


@settings(max_examples=60, deadline=None)
@given(wide_tables(), st.integers(0, 30))
def test_split_then_view_gives_back_any_wide_table(wide, cut):
    assert_frame_equal(EventTable.split(wide).view().collect(), wide, check_exact=True)
    parts = EventTable.concat([EventTable.split(wide.head(cut)), EventTable.split(wide.slice(cut))])
    assert_frame_equal(parts.view().collect(), wide, check_exact=True)


def test_every_schema_column_is_held_by_the_core_or_a_family():
    held = set(CORE_COLUMNS) | {c for f in FAMILIES for c in f.columns}
    assert held == set(EVENT_SCHEMA)


BINARY = [p for p in RECORDINGS if p.parent.name == "binary"]


@pytest.mark.parametrize("path", BINARY, ids=lambda p: p.name)
def test_a_binary_table_kept_as_decoded_gives_the_meta_its_wide_rows_give(path):
    """normalize keeps a binary reader's table as it is (no idle naming, sort or conform): its
    figures are those the text path computes from the same rows built wide."""
    from kptrace.normalize import describe, tally

    raw = read_any(path)
    assert raw.table is not None
    rows = idle_named(raw.rows)
    assert normalize(raw).meta == describe(raw, tally(rows, _wide(raw)))


def test_dropping_rows_renumbers_the_family_tables(tracefs):
    table, wide = tracefs
    keep = (wide["cpu"] == 0).to_numpy()
    assert_frame_equal(table.take(keep).view().collect(), wide.filter(pl.col("cpu") == 0))
