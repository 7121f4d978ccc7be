"""The notebook entry point: `kptrace.load(path)` gives the event table as a Polars LazyFrame."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass
class Trace:
    """A loaded trace: `events` follows kptrace.schema; `meta` is what meta.json holds."""

    events: pl.LazyFrame
    meta: dict


def load(path: str | Path) -> Trace:
    """Load an ingest output directory, a capture bundle, or a trace text file of any format."""
    path = Path(path)
    if path.is_dir() and (path / "events.parquet").exists():
        return Trace(events=pl.scan_parquet(path / "events.parquet"),
                     meta=json.loads((path / "meta.json").read_text()))
    from kptrace.normalize import normalize
    from kptrace.read import read_any

    normalized = normalize(read_any(path))
    return Trace(events=normalized.view(), meta=normalized.meta)
