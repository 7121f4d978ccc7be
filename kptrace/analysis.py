"""The stages in order, from an input path to every table `kptrace analyze` reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kptrace.attribute import HARDWARE_COUNTERS, attribute, counter_iterations, ipc_decomposition
from kptrace.intervals import build_intervals, serving_load
from kptrace.normalize import normalize
from kptrace.read import read_any
from kptrace.requests import EPOLL, RECEIVES, SENDS, build_requests, disruptions, request_counters

#: Syscall exits a request view needs, one of each family, and how to get them.
REQUEST_FAMILIES = {"epoll_wait": EPOLL, "a receive": RECEIVES, "a send": SENDS}
REQUEST_HINT = "record syscall events (kptrace record does by default; with --events, add syscalls)"
#: Events without which interrupt costs are undercounted.
INTERRUPT_EVENTS = {"irq_handler_entry", "irq_handler_exit", "softirq_entry", "softirq_exit", "local_timer_entry"}
INTERRUPT_HINT = "record irq:* and irq_vectors:* (kptrace record does by default)"


@dataclass
class Analysis:
    """Every table of one analysis; `requests` and `hits` are None when the trace cannot give them."""

    meta: dict
    events: pl.DataFrame
    intervals: pl.DataFrame
    disruptions: pl.DataFrame
    requests: pl.DataFrame | None
    hits: pl.DataFrame | None
    attribution: pl.DataFrame
    notes: list[str]
    ipc: pl.DataFrame | None = None
    request_counters: pl.DataFrame | None = None

    def tables(self) -> dict[str, pl.DataFrame]:
        tables = {"events": self.events, "intervals": self.intervals, "disruptions": self.disruptions,
                  "attribution": self.attribution}
        if self.requests is not None:
            tables |= {"requests": self.requests, "request_hits": self.hits}
        if self.request_counters is not None:
            tables |= {"request_counters": self.request_counters}
        if self.ipc is not None:
            tables |= {"ipc": self.ipc}
        return tables


def _missing_request_families(event_counts: dict) -> list[str]:
    return [family for family, calls in REQUEST_FAMILIES.items()
            if not any(f"sys_exit_{call}" in event_counts for call in calls)]


def analyze(path: str | Path, progress: Callable[[str], None] = lambda stage: None) -> Analysis:
    """Read, normalize, rebuild intervals, requests and disruptions, and attribute costs;
    `progress` hears one line as each stage ends."""
    normalized = normalize(read_any(path))
    meta, events = normalized.meta, normalized.events
    progress(f"read {meta['event_count']:,} events ({meta['source_format']})")
    notes = []
    intervals = build_intervals(events.lazy()).collect()
    chains = disruptions(intervals.lazy()).collect()
    progress(f"rebuilt {intervals.height:,} intervals and {chains.height:,} interrupt chains")
    if incomplete := intervals.filter(~pl.col("complete")).height:
        notes.append(f"{incomplete:,} of {intervals.height:,} intervals lack their entry or exit (trace edges, "
                     "lost events or a damaged trace): kept as incomplete, without a duration")
    requests = hits = None
    if missing := _missing_request_families(meta["event_counts"]):
        notes.append(f"no per-request view: this trace has no syscall events for {' or '.join(missing)}; "
                     + REQUEST_HINT)
    else:
        requests_lazy, hits_lazy = build_requests(intervals.lazy())
        requests, hits = requests_lazy.collect(), hits_lazy.collect()
        if requests.height == 0:
            notes.append("no requests found: no thread read data and answered on the same fd between "
                         "epoll_wait calls (kptrace's request model is an epoll server)")
            requests = hits = None
    progress(f"found {0 if requests is None else requests.height:,} requests")
    # An event the recorder enabled that never fired is not missing.
    enabled = {name.split(":")[-1] for name in ((meta.get("bundle") or {}).get("events") or {}).get("enabled", [])}
    if missing_irq := INTERRUPT_EVENTS - set(meta["event_counts"]) - enabled:
        notes.append(f"interrupt costs may be undercounted: no {', '.join(sorted(missing_irq))} events; "
                     + INTERRUPT_HINT)
    load = None if requests is None else serving_load(intervals.lazy(), chains.lazy(), requests.lazy())
    attribution = attribute(chains.lazy(), None if requests is None else requests.lazy(), load, meta["duration_s"])
    ipc = counters = None
    if requests is not None and (events["subsystem"] == "counter").any():
        counters = request_counters(events.lazy(), requests.lazy()).collect()
    if counters is not None and all(name in meta["event_counts"] for name in HARDWARE_COUNTERS):
        ipc = ipc_decomposition(counter_iterations(counters.lazy(), requests.lazy()).collect())
    elif requests is not None:
        notes.append("no IPC/IPQ decomposition: it needs cycles and instructions read at each epoll_wait return "
                     "(kptrace record does so where the CPU exposes a PMU; this trace has none)")
    return Analysis(meta=meta, events=events, intervals=intervals, disruptions=chains, requests=requests,
                    hits=hits, attribution=attribution, notes=notes, ipc=ipc, request_counters=counters)
