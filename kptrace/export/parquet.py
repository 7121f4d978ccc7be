"""Write tables as zstd Parquet and the input description as meta.json."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def write_tables(out_dir: str | Path, tables: dict[str, pl.DataFrame], meta: dict) -> list[Path]:
    """Write each table as `<name>.parquet` and `meta.json` into `out_dir`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        target = out / f"{name}.parquet"
        table.write_parquet(target, compression="zstd")
        written.append(target)
    meta_path = out / "meta.json"
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    written.append(meta_path)
    return written
