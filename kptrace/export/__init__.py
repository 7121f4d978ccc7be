"""Every output of an analysis, written by one entry point that the CLI and library callers share."""

from __future__ import annotations

import json
from pathlib import Path

from kptrace.analysis import Analysis


def write_all(analysis: Analysis, out: str | Path, summary: dict | None = None, group: str = "measured") -> dict:
    """Write the Parquet tables and meta.json, summary.json, report.html and the Perfetto timeline
    (its tracks under `group`) into `out`; return the summary with an `outputs` entry naming them."""
    from kptrace.export.parquet import write_tables
    from kptrace.export.perfetto import write_timeline
    from kptrace.export.report import write_report
    from kptrace.summary import build_summary, counter_samples

    out = Path(out)
    summary = build_summary(analysis) if summary is None else summary
    write_tables(out, analysis.tables(), analysis.meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    counters = None if analysis.events is None else counter_samples(analysis.events)
    timeline = write_timeline(out / "timeline.perfetto-trace.gz", analysis.events, analysis.intervals,
                              analysis.requests, counters, group=group)
    report = write_report(out / "report.html", analysis, summary)
    summary["outputs"] = {"directory": str(out), "summary": str(out / "summary.json"), "report": str(report),
                          "timeline": str(timeline["path"]), "timeline_slices": sum(timeline["slices"].values()),
                          "tables": sorted(analysis.tables())}
    return summary
