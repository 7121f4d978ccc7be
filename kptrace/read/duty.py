"""Duty-cycled bundles (`kptrace-record --every E --for F`): tracing was off between windows.

Nothing that spans a gap can be rebuilt: an IRQ, syscall or task run that opened before tracing
went off has lost its end, and one that closes after tracing came back has lost its start. A
`trace_gap` marker on every CPU at each window's start makes the later stages treat the gap as
they treat lost events (a breaking edge: kptrace.intervals keeps such intervals incomplete,
without a duration), and the traced time is the windows' time, not first to last event.
"""

from __future__ import annotations

import polars as pl

GAP_EVENT = "trace_gap"


def recorded_windows(manifest: dict | None) -> list[tuple[int, int]]:
    """(start_ns, end_ns) of each tracing window on the trace clock, in time order; empty when
    the manifest lists none or they are unusable (then the trace is read as one span)."""
    windows = (manifest or {}).get("windows")
    if not isinstance(windows, list):
        return []
    spans = []
    for window in windows:
        start, end = (window.get(k) if isinstance(window, dict) else None for k in ("start_ts", "end_ts"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end)) or end < start:
            return []
        spans.append((round(start * 1e9), round(end * 1e9)))
    return sorted(spans)


def gap_markers(windows: list[tuple[int, int]], cpus: list[int], first_seq: int) -> pl.DataFrame:
    """One `trace_gap` row per CPU at the start of every window after the first; `value` is the
    gap's length in ns. Window starts are read before tracing goes on, so each marker comes
    before the window's first event and after the previous window's last."""
    starts = [(start, start - previous_end) for (_, previous_end), (start, _) in zip(windows, windows[1:])]
    rows = [(start, cpu, gap) for start, gap in starts for cpu in sorted(cpus)]
    return pl.DataFrame(
        {"ts": [r[0] for r in rows], "cpu": [r[1] for r in rows], "value": [r[2] for r in rows]},
        schema={"ts": pl.Int64, "cpu": pl.Int64, "value": pl.Int64},
    ).with_columns(
        seq=pl.int_range(first_seq, first_seq + pl.len(), dtype=pl.Int64),
        subsystem=pl.lit("kptrace", pl.Categorical),
        event=pl.lit(GAP_EVENT, pl.Categorical),
    )


def traced_seconds(windows: list[tuple[int, int]]) -> float:
    """Time tracing was on, the denominator of every per-second rate of a duty-cycled trace."""
    return sum(end - start for start, end in windows) / 1e9
