"""The declared table contracts (kptrace/tables.py): docs/tables.md is generated from them, and the
Parquet files `analyze` writes for a simulated trace and for a real capture bundle have exactly
the declared columns, in order, with the declared types."""

from __future__ import annotations

import contextlib
from pathlib import Path

import polars as pl
import pytest

from kptrace import tables
from kptrace.analysis import analyze
from kptrace.export.outputs import write_all
from kptrace.schema import PROVENANCES, Column
from kptrace.simulate import Scenario, write_simulation

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "memcached-diskirq-same-core"

#: The estimated or modelled figures without an interval column; each declaration says why (NO_INTERVAL).
WITHOUT_INTERVAL = {("attribution", "cost_per_irq_ns"), ("ipc", "gain_at_clean_ipc")}


def test_tables_doc_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "tables.md").read_text() == tables.tables_markdown()


def test_the_doc_lists_every_declared_column_of_every_table():
    text = tables.tables_markdown()
    for name, table in tables.TABLES.items():
        if name != "events":  # docs/schema.md holds those
            assert f"## {name}.parquet" in text
            for c in table.columns:
                assert f"| `{c.name}` | {c.dtype} | {c.unit} | {c.provenance} |" in text, (name, c.name)


def test_a_column_must_say_where_its_figure_comes_from():
    with pytest.raises(ValueError, match="provenance 'guessed'"):
        Column("x", pl.Float64(), "ns", "a figure", "guessed")


def test_every_declared_interval_is_a_column_of_the_same_table_with_the_same_unit_and_provenance():
    pairs = [(table, c, name) for table in tables.TABLES.values() for c in table.columns
             for name in (c.ci, *c.bounds) if name]
    assert {c.name for _, c, _ in pairs} >= {"direct_per_irq_ns", "indirect_per_irq_ns", "share_of_cpu",
                                              "capacity_loss", "capacity_rps", "capacity_ratio"}
    for table, figure, name in pairs:
        interval = tables.column(table.name, name)
        assert (interval.unit, interval.provenance, interval.dtype) == (figure.unit, figure.provenance, figure.dtype)
        assert f"`{figure.name}`" in interval.meaning


def _estimated_figures() -> list[tuple[str, Column]]:
    """Every numeric estimated or modelled column that is not itself an interval."""
    intervals = {name for t in tables.TABLES.values() for c in t.columns for name in (c.ci, *c.bounds) if name}
    return [(table.name, c) for table in tables.TABLES.values() for c in table.columns
            if c.provenance != "measured" and c.dtype.is_numeric() and c.name not in intervals]


@pytest.mark.parametrize(("table", "figure"), _estimated_figures(), ids=lambda v: getattr(v, "name", v))
def test_an_estimated_or_modelled_figure_declares_its_95_percent_interval_or_why_it_has_none(table, figure):
    if (table, figure.name) in WITHOUT_INTERVAL:
        assert not figure.ci and not figure.bounds
        reason = figure.meaning.split(tables.NO_INTERVAL + ": ", 1)
        assert len(reason) == 2 and len(reason[1]) > 20, figure.meaning
    else:
        assert figure.ci or figure.bounds
        assert all(tables.column(table, name).provenance == figure.provenance for name in (figure.ci, *figure.bounds) if name)


def test_the_list_of_figures_without_an_interval_is_exact():
    """A new figure without an interval must be added to WITHOUT_INTERVAL on purpose, and one that
    gains its interval must leave it."""
    lacking = {(t, c.name) for t, c in _estimated_figures() if not c.ci and not c.bounds}
    assert lacking == WITHOUT_INTERVAL


def test_the_whatif_declaration_holds_every_figure_the_replay_predicts():
    from kptrace.whatif.predict import FIGURES, PROVENANCE

    for figure in FIGURES:
        declared = tables.column("whatif", figure)
        assert declared.bounds == (f"{figure}_lo", f"{figure}_hi") and declared.provenance == "modelled"
    assert PROVENANCE.startswith("modelled")
    assert {"capacity_ratio", "capacity_ratio_lo", "capacity_ratio_hi", "throughput_ratio", "p99_ratio"} <= {
        c.name for c in tables.columns("whatif")}


def test_stage_modules_build_their_tables_from_the_declarations():
    from kptrace import attribute, intervals, requests

    assert requests.REQUEST_SCHEMA == tables.polars_schema("requests")
    assert requests.DISRUPTION_SCHEMA == tables.polars_schema("disruptions")
    assert attribute.ATTRIBUTION_SCHEMA == tables.polars_schema("attribution")
    assert ["id", *intervals.INTERVAL_SCHEMA, *intervals.RAISE_SCHEMA] == list(tables.polars_schema("intervals"))


def test_the_per_row_provenance_words_are_the_declarations(written):
    attribution = pl.read_parquet(written["real-sample"] / "attribution.parquet")
    direct = tables.column("attribution", "direct_per_irq_ns")
    assert set(attribution["direct_provenance"]) == {f"{direct.provenance}: {direct.meaning}"}
    indirect = tables.column("attribution", "indirect_per_irq_ns")
    estimated = attribution.filter(pl.col("indirect_per_irq_ns").is_not_null())["indirect_provenance"]
    assert estimated.len() and all(p.startswith(f"{indirect.provenance}: {indirect.meaning}") for p in estimated)


def test_provenance_vocabulary_is_the_three_words_the_docs_use():
    used = {c.provenance for t in tables.TABLES.values() for c in t.columns}
    assert used == set(PROVENANCES) == {"measured", "estimated", "modelled"}


def test_polars_schema_is_the_declaration_in_order():
    schema = tables.polars_schema("request_hits")
    assert list(schema.items()) == [("request_id", pl.UInt32()), ("disruption_id", pl.UInt32()),
                                    ("source", pl.String()), ("span_ns", pl.Int64())]
    with pytest.raises(KeyError, match="table attribution declares no column kind"):
        tables.column("attribution", "kind")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Output directories of two analyses, written as `analyze` writes them: a simulated perf trace
    (every table, IPC included, as perf reads cycles and instructions) and a real capture bundle
    (software counters only); both have requests, so both get whatif.parquet."""
    base = tmp_path_factory.mktemp("tables")
    simulated = write_simulation(base / "sim", Scenario(duration_s=0.2, seed=4), fmt="perf")
    with contextlib.chdir(ROOT):
        inputs = {"simulated-perf": simulated, "real-sample": SAMPLE.relative_to(ROOT)}
        for name, path in inputs.items():
            write_all(analyze(path), base / name)
    return {name: base / name for name in inputs}


EXPECTED_TABLES = {
    "simulated-perf": set(tables.TABLES),
    "real-sample": set(tables.TABLES) - {"ipc"},
}


@pytest.mark.parametrize("source", sorted(EXPECTED_TABLES))
def test_analyze_writes_exactly_the_declared_tables(written, source):
    assert {p.stem for p in written[source].glob("*.parquet")} == EXPECTED_TABLES[source]


def _written_cases() -> list:
    return [pytest.param(source, name, id=f"{source}/{name}")
            for source, names in sorted(EXPECTED_TABLES.items()) for name in sorted(names)]


@pytest.mark.parametrize(("source", "table"), _written_cases())
def test_written_columns_and_types_equal_the_declaration(written, source, table):
    schema = pl.read_parquet_schema(written[source] / f"{table}.parquet")
    assert list(schema.items()) == list(tables.written_schema(table).items())


@pytest.fixture(scope="module")
def simulated_summary(tmp_path_factory) -> dict:
    from kptrace.summary import build_summary

    trace = write_simulation(tmp_path_factory.mktemp("summary"), Scenario(duration_s=0.2, seed=4), fmt="perf")
    return build_summary(analyze(trace))


def test_summary_json_units_and_provenance_are_the_declarations_of_the_columns_it_holds(simulated_summary):
    for name in ("attribution", "ipc"):
        section = simulated_summary[name]
        present = list(section["rows"][0])
        assert list(section["provenance"]) == present
        assert section["provenance"] == {c: tables.column(name, c).provenance for c in present}
        assert section["units"] == {c: tables.column(name, c).unit for c in present if tables.column(name, c).unit}
    assert simulated_summary["attribution"]["provenance"]["capacity_loss"] == "modelled"
    assert simulated_summary["attribution"]["units"]["direct_ci_ns"] == "ns/interrupt"


def test_the_printed_legend_follows_the_declarations(simulated_summary, monkeypatch):
    from dataclasses import replace

    from kptrace.summary import render_summary

    assert "lost % modelled" in render_summary(simulated_summary)
    attribution = tables.TABLES["attribution"]
    columns = tuple(replace(c, provenance="estimated") if c.name == "capacity_loss" else c
                    for c in attribution.columns)
    monkeypatch.setitem(tables.TABLES, "attribution", replace(attribution, columns=columns))
    text = render_summary(simulated_summary)
    assert "lost % estimated" in text and "lost % modelled" not in text


def test_the_counter_source_is_a_structured_value(simulated_summary):
    assert simulated_summary["input"]["counters"] == {"kind": "hardware-pmu", "names": ["cycles", "instructions"]}
    from kptrace.summary import counters_text

    assert counters_text(simulated_summary["input"]["counters"]) == "hardware-pmu (cycles, instructions): IPC measured"
    assert counters_text({"kind": "none", "names": []}) == "none: no IPC; indirect costs measured in time"


def test_plus_minus_is_the_one_figure_with_interval_format():
    from kptrace.summary import plus_minus

    assert plus_minus(10_540.0, 130.0, scale=1e3, digits=1) == "10.5±0.1"
    assert plus_minus(0.2078, 0.0015, scale=0.01, digits=2) == "20.78±0.15"
    assert plus_minus(1_234_567, None, digits=0) == "1,234,567"
    assert plus_minus(5.0, float("nan")) == "5.0"
    assert plus_minus(None, 1.0) == plus_minus(float("nan"), 1.0) == "–"


@pytest.fixture(scope="module")
def without_indirect_cost(tmp_path_factory):
    """A simulated server whose interrupts slow nothing down: most indirect estimates are n.s."""
    trace = write_simulation(tmp_path_factory.mktemp("flat"), Scenario(duration_s=0.3, seed=2, indirect_scale=0))
    return analyze(trace)


def test_a_non_significant_indirect_estimate_reads_ns_with_its_interval_never_as_a_loss(without_indirect_cost):
    from kptrace.summary import build_summary, plus_minus, render_summary

    summary = build_summary(without_indirect_cost)
    rows = [r for r in summary["attribution"]["rows"] if r["indirect_significant"] is False]
    assert rows and summary["attribution"]["provenance"]["indirect_significant"] == "estimated"
    assert summary["attribution"]["units"]["indirect_lo_ns"] == "ns/interrupt"
    lines = render_summary(summary).splitlines()
    for row in rows:
        line = next(li for li in lines if li.startswith(f"{row['cpu']:>3} {row['source']} "))
        assert f"n.s. [{row['indirect_lo_ns'] / 1e3:,.1f}, {row['indirect_hi_ns'] / 1e3:,.1f}]" in line
        assert plus_minus(row["indirect_per_irq_ns"], row["indirect_ci_ns"], 1e3, 1) not in line
        assert row["cost_per_irq_ns"] == row["direct_per_irq_ns"]  # counted as 0
