"""Readers: every input file kptrace accepts becomes raw event rows plus notes about the input.

Only this package opens input files. A reader picks the format from the content, never the
file name, and reports damage (unreadable lines, truncation, lost events) instead of hiding it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kptrace.errors import TraceError
from kptrace.read.fields import type_fields
from kptrace.read.lines import detect_format, split_lines
from kptrace.read.source import read_source


@dataclass
class RawTrace:
    """Typed event rows (schema columns plus `line_no`, `ts_resolution_ns`) and input notes."""

    rows: pl.DataFrame
    source_format: str
    files: list[str]
    warnings: list[str] = field(default_factory=list)
    unparsed_count: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    manifest: dict | None = None


def read_text_trace(path: str | Path) -> RawTrace:
    """Read one tracefs, trace-cmd report or perf script text file (optionally compressed)."""
    source = read_source(path)
    text = source.text
    warnings = list(source.warnings)
    if not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        warnings.append(f"last line is incomplete (file ends mid-line); dropped: {text[cut:][:80]!r}")
        text = text[:cut]
    fmt = detect_format(text)
    if fmt is None:
        raise TraceError(source.path, "unknown format: no line looks like tracefs text, "
                                      "`trace-cmd report` or `perf script` output")
    split = split_lines(text, fmt)
    if split.rows.filter(pl.col("subsystem").ne_missing("kptrace")).height == 0:
        raise TraceError(source.path, f"no events found (read as {fmt}; "
                                      f"{split.unparsed_count} lines not understood)")
    if split.unparsed_count:
        warnings.append(f"skipped {split.unparsed_count} lines that are not {fmt} events, e.g. "
                        + "; ".join(split.unparsed_examples[:2]))
    return RawTrace(
        rows=type_fields(split.rows),
        source_format=fmt,
        files=[str(source.path)],
        warnings=warnings,
        unparsed_count=split.unparsed_count,
        unparsed_examples=split.unparsed_examples,
    )


def read_bundle(directory: str | Path) -> RawTrace:
    """Read a kptrace-record bundle: its trace text, and counters sampled by perf if present."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise TraceError(manifest_path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    files = manifest.get("files") or {}
    if not files.get("trace"):
        raise TraceError(manifest_path, "names no trace file under files.trace")
    parts = [read_text_trace(directory / files["trace"])]
    if files.get("perf_counters"):
        # Its tracepoint rows only anchor the samples and repeat events the trace already has.
        counters = read_text_trace(directory / files["perf_counters"])
        counters.rows = counters.rows.filter(pl.col("subsystem") == "counter")
        parts.append(counters)
    line_offset = 0
    frames = []
    for part in parts:
        frames.append(part.rows.with_columns(pl.col("line_no") + line_offset))
        line_offset += int(part.rows["line_no"].max() or 0)
    return RawTrace(
        rows=pl.concat(frames, how="diagonal_relaxed").sort("ts", "line_no", nulls_last=False),
        source_format="kptrace-bundle (" + "+".join(p.source_format for p in parts) + ")",
        files=[f for p in parts for f in p.files],
        warnings=[w for p in parts for w in p.warnings],
        unparsed_count=sum(p.unparsed_count for p in parts),
        unparsed_examples=[e for p in parts for e in p.unparsed_examples][:3],
        manifest=manifest,
    )


def read_any(path: str | Path) -> RawTrace:
    """A bundle directory (with manifest.json) or a single trace text file."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").exists():
        return read_bundle(path)
    return read_text_trace(path)
