"""Per-CPU intervals rebuilt from entry/exit event pairs.

Hard IRQ handlers (device IRQs and APIC vectors) do not nest within one CPU, nor do softirq
runs, so within each (cpu, kind) stream an entry pairs with the next event when that is the
matching exit. Anything else — an exit without entry at the trace start, an entry cut off by a
lost-event gap or the trace end — is kept with `complete = false` and no invented duration.
"""

from __future__ import annotations

import polars as pl

INTERVAL_SCHEMA = {
    "ts": pl.Int64, "dur": pl.Int64, "cpu": pl.Int16, "tid": pl.Int32, "kind": pl.String,
    "name": pl.String, "complete": pl.Boolean,
}


def _edges(events: pl.LazyFrame) -> pl.LazyFrame:
    """Entry (+1) and exit (-1) edges with the interval kind and the source's name."""
    event = pl.col("event").cast(pl.String)
    is_vector = pl.col("subsystem").cast(pl.String) == "irq_vectors"
    kind = (
        pl.when(event.is_in(["irq_handler_entry", "irq_handler_exit"]) | is_vector).then(pl.lit("hardirq"))
        .when(event.is_in(["softirq_entry", "softirq_exit"])).then(pl.lit("softirq"))
    )
    name = (
        pl.when(is_vector).then(event.str.replace(r"_(entry|exit)$", ""))
        .when(event.str.starts_with("irq_handler")).then(pl.col("irq").cast(pl.String))
        .otherwise(pl.col("softirq").cast(pl.String))
    )
    lost = pl.col("subsystem").cast(pl.String) == "kptrace"
    return (
        events.with_columns(kind=kind, name=name)
        .filter(pl.col("kind").is_not_null() | lost)
        .with_columns(
            edge=pl.when(lost).then(0).when(event.str.ends_with("_entry")).then(1).otherwise(-1),
            irq_name=pl.col("irq_name").forward_fill().over("cpu", "irq"),
        )
    )


def irq_intervals(events: pl.LazyFrame) -> pl.LazyFrame:
    """Hard IRQ and softirq intervals per CPU: ts, dur (ns), cpu, tid, kind, name, complete.

    `name` is the device IRQ's handler name (`virtio1-req.0`), the APIC vector's handler
    (`local_timer`) or the softirq (`NET_RX`).
    """
    edges = _edges(events.with_row_index("seq"))
    lost = pl.col("edge") == 0
    streams = [
        edges.filter((pl.col("kind") == kind) | lost)
        .with_columns(kind=pl.lit(kind))
        .sort("cpu", "seq")
        .with_columns(
            next_edge=pl.col("edge").shift(-1).over("cpu"),
            next_name=pl.col("name").shift(-1).over("cpu"),
            next_ts=pl.col("ts").shift(-1).over("cpu"),
        )
        for kind in ("hardirq", "softirq")
    ]
    paired = pl.concat(streams)
    complete = (pl.col("next_edge") == -1) & (pl.col("next_name") == pl.col("name"))
    # A name for device IRQs that people recognise: the handler name from the entry event.
    name = pl.when(pl.col("irq_name").is_not_null()).then(pl.col("irq_name")).otherwise(pl.col("name"))
    return (
        paired.filter(pl.col("edge") == 1)
        .select(
            "ts",
            dur=pl.when(complete).then(pl.col("next_ts") - pl.col("ts")),
            cpu="cpu", tid="tid", kind="kind", name=name,
            complete=complete.fill_null(False),
        )
        .cast(INTERVAL_SCHEMA)
        .sort("ts")
    )
