"""The outputs of an analysis: Parquet tables, summary.json, report.html, the Perfetto timeline.

kptrace.export.outputs writes them all (write_all). The package imports it only when one of its
names is asked for (PEP 562), so the light parts start without Polars: the report's chart
process imports kptrace.export.charts, which needs altair alone."""

from __future__ import annotations

#: What `from kptrace.export import ...` gives, from kptrace.export.outputs.
__all__ = ["EarlyOutputs", "predicted_timeline", "write_all", "write_tables_of"]


def __getattr__(name: str):
    if name in __all__:
        from kptrace.export import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'kptrace.export' has no attribute {name!r}")
