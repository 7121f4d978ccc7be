"""The fleet's tables (OUT/fleet/*.parquet, declared in kptrace.tables.FLEET_TABLES) and fleet.json:
each input's small tables gathered under its keys, one row per input, and the rankings across
inputs that the report and the terminal show."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kptrace.tables import FLEET_KEYS, FLEET_TABLES

#: Tables each task sends back, gathered into OUT/fleet/<name>.parquet.
GATHERED = ("attribution", "requests", "whatif")
#: How many rows of each ranking fleet.json, the report and the terminal show.
TOP = 20


def fleet_schema(name: str) -> dict[str, pl.DataType]:
    """{column: dtype} of a fleet table, in declared order."""
    return {c.name: c.dtype for c in FLEET_TABLES[f"fleet/{name}"].columns}


def _keys(result: dict) -> dict[str, str]:
    return {"input": result["input"]} | {c.name: result["identity"][c.name] for c in FLEET_KEYS[1:]}


def gathered_table(results: list[dict], name: str) -> pl.DataFrame:
    """One per-input table of every ok input, in input order, each row led by its input's keys."""
    frames = [result["tables"][name].select(**{k: pl.lit(v, pl.String) for k, v in _keys(result).items()},
                                            **{c: pl.col(c) for c in result["tables"][name].columns})
              for result in results if result["status"] == "ok" and result["tables"][name] is not None]
    schema = fleet_schema(name)
    return pl.concat(frames).select(list(schema)) if frames else pl.DataFrame(schema=schema)


def worst_cpu(attribution: pl.DataFrame) -> dict:
    """The CPU whose sources took the most capacity (their `capacity_loss` summed; a source without
    one, as on a CPU that served no request, counts 0), with that sum, the sum of the sources'
    half-widths, and its costliest source."""
    loss = pl.col("capacity_loss").fill_null(0)
    per_cpu = (attribution.group_by("cpu").agg(
        capacity_loss=loss.sum(), capacity_loss_ci=pl.col("capacity_loss_ci").fill_null(0).sum(),
        top_source=pl.col("source").sort_by(loss, descending=True).first())
        .sort(["capacity_loss", "cpu"], descending=[True, False]))
    if per_cpu.height == 0:
        return {"worst_cpu": None, "capacity_loss": None, "capacity_loss_ci": None, "top_source": None}
    row = per_cpu.row(0, named=True)
    return {"worst_cpu": row["cpu"], "capacity_loss": row["capacity_loss"],
            "capacity_loss_ci": row["capacity_loss_ci"], "top_source": row["top_source"]}


def inputs_table(results: list[dict]) -> pl.DataFrame:
    """fleet/inputs: one row per input, failed ones with their error and null figures."""
    rows = []
    for result in results:
        ok = result["status"] == "ok"
        figures = worst_cpu(result["tables"]["attribution"]) if ok else {}
        rows.append(_keys(result) | {"path": result["path"], "status": result["status"], "error": result.get("error"),
                                     "events": result.get("events"), "duration_s": result.get("duration_s")}
                    | figures)
    return pl.DataFrame(rows, schema=fleet_schema("inputs"))


def fleet_tables(results: list[dict]) -> dict[str, pl.DataFrame]:
    """Every fleet table; `whatif` only when some input has what-if results."""
    tables = {name: gathered_table(results, name) for name in GATHERED}
    if tables["whatif"].height == 0:
        del tables["whatif"]
    return tables | {"inputs": inputs_table(results)}


def host_ranking(inputs: pl.DataFrame) -> pl.DataFrame:
    """Inputs that were analysed, most capacity lost first."""
    return inputs.filter(pl.col("status") == "ok").sort(["capacity_loss", "input"], descending=[True, False],
                                                        nulls_last=True)


def source_ranking(attribution: pl.DataFrame) -> pl.DataFrame:
    """(input, CPU, source) rows across the fleet, most capacity lost first."""
    return attribution.filter(pl.col("capacity_loss").is_not_null()).sort(
        ["capacity_loss", "input", "cpu", "source"], descending=[True, False, False, False]).select(
        "input", "host", "cpu", "source", "rate_per_s", "capacity_loss", "capacity_loss_ci")


def policy_ranking(whatif: pl.DataFrame | None) -> pl.DataFrame:
    """(input, server, policy) predictions other than vanilla, largest predicted capacity gain first."""
    if whatif is None:
        return pl.DataFrame(schema={"input": pl.String, "host": pl.String, "server": pl.String,
                                    "policy": pl.String, "capacity_ratio": pl.Float64,
                                    "capacity_ratio_lo": pl.Float64, "capacity_ratio_hi": pl.Float64})
    return whatif.filter(pl.col("policy") != "vanilla").sort(
        ["capacity_ratio", "input", "server", "policy"], descending=[True, False, False, False]).select(
        "input", "host", "server", "policy", "capacity_ratio", "capacity_ratio_lo", "capacity_ratio_hi")


def _declared(table: str, frame: pl.DataFrame) -> dict:
    """Rows with the units and provenance of their columns, from the declarations."""
    cols = {c.name: c for c in FLEET_TABLES[f"fleet/{table}"].columns}
    shown = [cols[name] for name in frame.columns if name in cols]
    return {"units": {c.name: c.unit for c in shown if c.unit},
            "provenance": {c.name: c.provenance for c in shown}, "rows": frame.head(TOP).to_dicts()}


def fleet_summary(tables: dict[str, pl.DataFrame], out: Path) -> dict:
    """fleet.json: every input with its status and error, and the rankings across the fleet."""
    inputs = tables["inputs"]
    failed = inputs.filter(pl.col("status") == "failed").height
    return {
        "inputs": inputs.with_columns(output=pl.concat_str(pl.lit(f"{out}/"), pl.col("input"))).to_dicts(),
        "counts": {"inputs": inputs.height, "ok": inputs.height - failed, "failed": failed},
        "hosts_by_capacity_lost": _declared("inputs", host_ranking(inputs).select(
            "input", "host", "kernel", "cpu_model", "nic", "worst_cpu", "capacity_loss", "capacity_loss_ci",
            "top_source")),
        "sources_by_capacity_lost": _declared("attribution", source_ranking(tables["attribution"])),
        "policies_by_predicted_gain": _declared("whatif", policy_ranking(tables.get("whatif"))),
        "tables": {name: str(out / "fleet" / f"{name}.parquet") for name in tables},
        "report": str(out / "fleet.html"),
    }


def write_fleet(out: Path, results: list[dict]) -> dict:
    """Write OUT/fleet/*.parquet and OUT/fleet.json; return fleet.json's content."""
    tables = fleet_tables(results)
    (out / "fleet").mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.write_parquet(out / "fleet" / f"{name}.parquet", compression="zstd")
    summary = fleet_summary(tables, out)
    (out / "fleet.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
