"""Normalize raw reader rows into the schema's event table, and describe the input in meta.json.

The table's row order is the order of record, and later stages rely on it to break ties
(kptrace.intervals numbers events by row): time, then the readers' sequence number (`seq`: the
input line for text, the record order for binary pages; unique across a bundle's files).
Within one CPU the tracer writes events in the order they happened, so at microsecond
resolution the input order is the true order of events that share a timestamp. Every summary here is sorted by its key, so meta.json is the same each run.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

import kptrace
from kptrace.read import RawTrace
from kptrace.read.duty import GAP_EVENT, recorded_windows, traced_seconds
from kptrace.schema import conform

#: The idle task is `<idle>` in tracefs and trace-cmd, `swapper` in perf: use one name.
IDLE_COMM = "<idle>"


@dataclass
class Events:
    """The normalized event table and its meta.json description."""

    events: pl.DataFrame
    meta: dict


def _order(rows: pl.DataFrame, warnings: list[str]) -> pl.DataFrame:
    """Sort by time (stable, so same-time events keep file order), saying how much moved."""
    backwards = int((rows["ts"].diff() < 0).sum())
    if backwards:
        warnings.append(f"{backwards} lines were out of time order; sorted by timestamp")
    # Text rows carry their field text; binary rows are compared on every typed column.
    key = (["ts", "cpu", "tid", "event", "payload"] if "payload" in rows.columns
           else [c for c in rows.columns if c not in ("seq", "ts_resolution_ns")])
    # Only rows sharing a time and CPU can repeat each other: check those (few) on every key.
    same_time = rows.filter(rows.select("ts", "cpu").is_duplicated())
    duplicates = int(same_time.select(key).is_duplicated().sum())
    if duplicates:
        warnings.append(f"{duplicates} event rows repeat another row exactly (same time, CPU, task and "
                        "fields); kept, since microsecond timestamps can make real repeats identical")
    return rows.sort("ts", "seq", maintain_order=True) if backwards else rows


def _per_cpu(events: pl.DataFrame) -> list[dict]:
    stats = (
        events.group_by("cpu")
        .agg(
            events=(pl.col("subsystem") != "kptrace").sum(),
            lost_events=pl.col("value").filter(pl.col("event") == "lost_events").sum(),
            lost_markers=(pl.col("event") == "lost_events").sum(),
            buffer_wrapped=(pl.col("event") == "buffer_started").any(),
        )
        .sort("cpu")
    )
    return stats.to_dicts()


def _accounting(raw: RawTrace, events: pl.DataFrame) -> dict:
    """Where every input line (or binary record) went: `input` = `events` + `markers` +
    `unreadable` + `ignored` + `repeated`, so that nothing is lost without a count."""
    marks = events.filter(pl.col("subsystem") == "kptrace")
    # A duty cycle's gap marks stand for no input line or record (kptrace.read.duty).
    markers = marks.filter(pl.col("event") != GAP_EVENT).height
    return {"unit": raw.unit, "input": raw.units, "events": events.height - marks.height,
            "markers": markers if raw.unit == "lines" else 0, "unreadable": raw.unparsed_count,
            "ignored": raw.ignored_count, "repeated": raw.repeated_count}


def normalize(raw: RawTrace) -> Events:
    """Conform to the schema, order by time, and summarise what the input held and lacked."""
    warnings = list(raw.warnings)
    rows = _order(raw.rows.with_columns(
        comm=pl.when(pl.col("tid") == 0).then(pl.lit(IDLE_COMM)).otherwise(pl.col("comm"))
    ), warnings)
    events = conform(rows).collect()
    real = events.filter(pl.col("subsystem") != "kptrace")
    per_cpu = _per_cpu(events)
    lost_markers = sum(c["lost_markers"] for c in per_cpu)
    if lost_markers:
        warnings.append(f"the tracer lost events {lost_markers} times "
                        f"({sum(c['lost_events'] or 0 for c in per_cpu)} events counted); "
                        "intervals across those gaps are marked incomplete")
    wrapped = [c["cpu"] for c in per_cpu if c["buffer_wrapped"]]
    if wrapped:
        warnings.append(f"the ring buffer of CPU {', '.join(map(str, wrapped))} wrapped: its oldest events "
                        "were overwritten, so that CPU's trace starts later than the others")
    unknown = real.filter(pl.col("subsystem") == "unknown")["event"].unique().sort().to_list()
    resolution = raw.rows["ts_resolution_ns"].max()
    manifest = raw.manifest or {}
    span_s = (int(real["ts"].max()) - int(real["ts"].min())) / 1e9
    if len(windows := recorded_windows(manifest)) > 1:
        warnings.append(f"duty-cycled recording: {len(windows)} windows, {traced_seconds(windows):.3f} s traced "
                        f"in {span_s:.3f} s; intervals across the {len(windows) - 1} gaps are marked incomplete "
                        "and rates are per traced second")
    meta = {
        "kptrace_version": kptrace.__version__,
        "source_format": raw.source_format,
        "files": raw.files,
        "clock": manifest.get("trace_clock", "unknown (not recorded in this format)"),
        "ts_resolution_ns": int(resolution) if resolution is not None else None,
        "start_ns": int(real["ts"].min()),
        "end_ns": int(real["ts"].max()),
        "duration_s": traced_seconds(windows) if len(windows) > 1 else span_s,
        "event_count": real.height,
        "event_counts": dict(sorted(
            real.group_by(pl.col("event").cast(pl.String)).len().iter_rows(), key=lambda kv: kv[0]
        )),
        "per_cpu": per_cpu,
        "unknown_events": unknown,
        "unparsed_lines": raw.unparsed_count,
        "unparsed_examples": raw.unparsed_examples,
        "input_accounting": _accounting(raw, events),
        "warnings": warnings,
    }
    if len(windows) > 1:
        meta["windows"] = [{"start_ns": start, "end_ns": end} for start, end in windows]
    if raw.manifest is not None:
        meta["bundle"] = {k: manifest.get(k) for k in ("created_utc", "hostname", "command", "counters",
                                                       "not_recorded", "workload", "per_cpu", "events",
                                                       "tracing_cost")}
    return Events(events=events, meta=meta)
