"""What-if: predict, from a trace of the unmodified system, what an interrupt policy would win.

`whatif(analysis, ...)` gives, per epoll server of the trace, its calibration (the vanilla replay
against the measured trace) and per policy the predicted figures with 95% intervals and their
ratio to vanilla (kptrace.whatif.predict). Inputs: kptrace.whatif.inputs; the replay:
kptrace.whatif.replay; policies: kptrace.whatif.policies. Model and limits: docs/whatif.md.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import polars as pl

from kptrace.analysis import Analysis
from kptrace.intervals import inside
from kptrace.read.fields import VECTOR_HANDLERS
from kptrace.whatif.policies import NETWORK_POLICIES, POLICIES, Policy, PolicyError
from kptrace.whatif.overhead import tracing_cost
from kptrace.whatif.predict import predict

__all__ = ["NETWORK_POLICIES", "POLICIES", "Policy", "PolicyError", "servers", "whatif"]

#: A vanilla replay further than this from the measured trace is reported as not calibrated.
CALIBRATION_TOLERANCE = 0.05


def servers(analysis: Analysis) -> list[dict]:
    """The epoll servers of a trace: {comm, pids, tids, cpus}, one per process (by thread-group
    id where the trace records it, else by thread name), busiest first."""
    requests = analysis.requests.lazy().select("tid", "cpu").collect()
    tids = requests["tid"].unique().implode()
    names = (analysis.intervals.lazy().filter((pl.col("kind") == "running") & pl.col("tid").is_in(tids))
             .select("tid", "name").collect().group_by("tid").agg(comm=pl.col("name").last()))
    threads = requests.group_by("tid").agg(n=pl.len(), cpus=pl.col("cpu").unique()).join(names, on="tid", how="left")
    if analysis.events is not None and _any_tgid(analysis.events):
        threads = threads.join(_first_tgids(analysis.events, tids), on="tid", how="left")
    else:
        threads = threads.with_columns(pid=pl.lit(None, pl.Int32))
    threads = threads.with_columns(comm=pl.col("comm").fill_null(pl.format("tid {}", "tid")))
    key = pl.when(pl.col("pid").is_not_null()).then(pl.format("pid {}", "pid")).otherwise(pl.col("comm"))
    grouped = (
        threads.with_columns(key=key).group_by("key")
        .agg(comm=pl.col("comm").sort_by("n", descending=True).first(), pids=pl.col("pid").drop_nulls().unique().sort(),
             tids=pl.col("tid").sort(), cpus=pl.col("cpus").explode().unique().sort(), n=pl.col("n").sum())
        .sort("n", "key", descending=[True, False])
    )
    return grouped.drop("key", "n").to_dicts()


def _any_tgid(events: pl.DataFrame | pl.LazyFrame) -> bool:
    return events.lazy().select(pl.col("tgid").is_not_null().any()).collect(engine="streaming").item()


def _first_tgids(events: pl.DataFrame | pl.LazyFrame, tids: pl.Series) -> pl.DataFrame:
    """tid, pid: the first thread-group id recorded for each of `tids`. The first row of each is
    found by an order-free minimum (streamed over a scan), then only those rows are read."""
    rows = events.lazy().with_row_index("seq").filter(pl.col("tgid").is_not_null() & pl.col("tid").is_in(tids))
    first = rows.group_by("tid").agg(pl.col("seq").min()).collect(engine="streaming")["seq"]
    return rows.filter(pl.col("seq").is_in(first.implode())).select("tid", pid="tgid").collect()


def select_server(found: list[dict], wanted: str) -> dict:
    """The server named by `--server`: a thread or process name, or a tid or pid."""
    for server in found:
        if wanted == server["comm"] or (wanted.isdigit() and int(wanted) in server["tids"] + server["pids"]):
            return server
    raise PolicyError(f"--server {wanted}: no epoll server of that name, tid or pid in this trace (found: "
                      + ", ".join(f"{s['comm']} (tids {', '.join(map(str, s['tids']))})" for s in found) + ")")


def nic_sources(analysis: Analysis) -> set[str]:
    """Hard IRQs whose chain polls a real network device (napi_poll of a device, not loopback)."""
    polls = (analysis.intervals.lazy()
             .filter((pl.col("kind") == "napi") & (pl.col("name") != "(no_device)") & pl.col("complete"))
             .select("cpu", "ts").collect())
    if polls.height == 0:
        return set()
    chains = analysis.disruptions.lazy().filter("disruptive").select("cpu", "source", w_ts="ts", w_end="end").collect()
    polled = inside(polls.lazy(), chains.lazy(), "cpu").collect()
    return set(polled["source"].drop_nulls().unique().to_list())


def costliest_device_irq(analysis: Analysis, cpus: list[int]) -> str | None:
    """The device IRQ source (not an APIC vector) that costs the serving cores most."""
    rows = analysis.attribution.filter(pl.col("cpu").is_in(cpus) & ~pl.col("source").is_in(list(VECTOR_HANDLERS)))
    rows = rows.group_by("source").agg(cost=pl.col("share_of_cpu").sum()).sort("cost", "source", descending=[True, False])
    return rows["source"][0] if rows.height else None


def default_policies(analysis: Analysis, cpus: list[int]) -> list[Policy]:
    """`--policy all`: every policy with its default parameters; move-irqs and remove act on the
    device IRQ that costs the serving cores most (none: they change nothing, and say so)."""
    device = costliest_device_irq(analysis, cpus)
    sources = [device] if device else []
    return [Policy("vanilla"), Policy("move-irqs", {"source": sources, "to_cpu": None}),
            Policy("remove", {"source": sources}), *[Policy(name) for name in NETWORK_POLICIES]]


def whatif(analysis: Analysis, policies: list[Policy] | None = None, server: str | None = None,
           replicates: int = 20, seed: int = 0, event_cost_ns: float | None = None,
           sample_cost_ns: float | None = None) -> list[dict]:
    """One result per server (the JSON contract of `kptrace whatif`, docs/whatif.md). The
    tracing overhead is taken out with the cost per event given, else the one the bundle's
    manifest records (kptrace.whatif.overhead)."""
    cost = tracing_cost(analysis.meta, event_cost_ns, sample_cost_ns)
    if analysis.requests is None:
        raise PolicyError("no requests in this trace, so nothing to replay: " + next(
            (n for n in analysis.notes if "per-request" in n or "no requests" in n), "record syscall events"))
    found = servers(analysis)
    chosen = [select_server(found, server)] if server else found
    nic = nic_sources(analysis)

    def predicted(entry: dict) -> dict:
        # Policies the user named must apply; of the defaults, those that cannot are listed as skipped.
        return predict(analysis, entry["tids"], policies or default_policies(analysis, entry["cpus"]), nic,
                       replicates=replicates, seed=seed, strict=policies is not None, cost=cost)

    # Each server's replay on a thread of its own: most of it is Polars queries and compiled
    # stepping, which release the GIL, so two servers overlap on two cores.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="whatif") as threads:
        predictions = list(threads.map(predicted, chosen))
    results = []
    for entry, prediction in zip(chosen, predictions, strict=True):
        calibration = prediction["calibration"]
        calibration["within_tolerance"] = all(
            abs(calibration[key]) <= CALIBRATION_TOLERANCE for key in ("capacity_error", "p50_error", "p99_error"))
        results.append({"input": analysis.meta.get("files") or analysis.meta.get("source_format"),
                        "server": {k: entry[k] for k in ("comm", "pids", "tids", "cpus")}, **prediction})
    return results
