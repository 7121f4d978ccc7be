"""Counters-only estimate (issue 12): what an interrupt costs the serving cores and what removing
interrupts would win, from counters cheap enough to keep on (runs tables, counters bundles)."""

from __future__ import annotations

from pathlib import Path

from kptrace.estimate.fit import estimate_group
from kptrace.estimate.inputs import read_inputs

__all__ = ["estimate", "estimate_group", "read_inputs"]


def estimate(paths: list[Path], serving_cpus: list[int] | None = None) -> dict:
    """The JSON contract of docs/estimate.md: one entry per group, in the order groups first appear.
    `serving_cpus` overrides the serving CPUs named in counters-only bundles' manifests."""
    runs, warnings = read_inputs(paths, serving_cpus)
    groups = runs["group"].unique(maintain_order=True).to_list()
    return {"groups": [estimate_group(name, runs.filter(runs["group"] == name)) for name in groups],
            "warnings": warnings}
