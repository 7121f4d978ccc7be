"""`requests.build_requests` from the numbered interval table one window at a time, equal row
for row (request and disruption ids included) to build_requests of the whole table.

Everything a request reads belongs to its thread: its syscalls, the interrupt work that ran on
the thread (`tid`: the task interrupted) and its off-CPU gaps. A thread's requests live in one
epoll iteration: a request ends at its last send, and one task's syscalls do not overlap, so
every request of a thread ends at or before the thread's next epoll call. Cut a thread at a
complete epoll call E: its calls before E (in the (ts, end, id) order requests sort them by)
and its work and gaps that start before E's time go to one part, the rest waits, and no item
of either side can fall inside a request of the other (an earlier request ends by E; a later
one starts after E). A cut is taken only where the rest of the evidence is in: at or before
the end of the thread's last complete run (its gap waits for the next run) and the earliest
softirq whose charged work is still held (disruption_windows). A thread that never calls epoll
is kept to the end.

Each part goes through `requests.requests_of`; requests are numbered by (ts, first_id) and
disruptions by root at the end, over the requests and hits of all parts (a caller that must
bound them writes the parts out and sorts the keys).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import polars as pl

from kptrace.requests import EPOLL, REQUEST_SCHEMA, off_cpu_gaps, requests_of
from kptrace.windowed.disruptions import ChargedWork
from kptrace.windowed.intervals import stack_frames

#: build_requests' hits table.
HIT_SCHEMA = {"request_id": pl.UInt32, "disruption_id": pl.UInt32, "source": pl.String, "span_ns": pl.Int64}
_CALL = (pl.col("kind") == "syscall") & pl.col("complete")
_RUN = (pl.col("kind") == "running") & pl.col("complete")


def _cuts(calls: pl.DataFrame, last_runs: pl.DataFrame, held_from: int | None) -> pl.DataFrame:
    """Per thread, the (ts, end, id) of the latest complete epoll call a cut can be made at: at
    or before the end of its last run (whose gap waits for the next run) and the earliest
    softirq whose charged work is held."""
    epolls = calls.filter(pl.col("name").is_in(EPOLL))
    if last_runs.height:
        limit = last_runs.select("tid", limit=pl.col("ts") + pl.col("dur"))
        epolls = epolls.join(limit, on="tid", how="left").filter(
            pl.col("limit").is_null() | (pl.col("ts") <= pl.col("limit")))
    if held_from is not None:
        epolls = epolls.filter(pl.col("ts") <= held_from)
    return (epolls.with_columns(end=pl.col("ts") + pl.col("dur")).sort("tid", "ts", "end", "id")
            .group_by("tid", maintain_order=True).last().select("tid", cut_ts="ts", cut_end="end", cut_id="id"))


def _split(buffers: tuple[pl.DataFrame, ...], cuts: pl.DataFrame) -> tuple[tuple, tuple]:
    """(part, rest) of the calls, work and gaps at each thread's cut: calls before the cut call
    in (ts, end, id) order, work and gaps that start before its time."""
    end = pl.col("ts") + pl.col("dur")
    before_call = (pl.col("ts") < pl.col("cut_ts")) | ((pl.col("ts") == pl.col("cut_ts")) & (
        (end < pl.col("cut_end")) | ((end == pl.col("cut_end")) & (pl.col("id") < pl.col("cut_id")))))
    parts, rests = [], []
    for frame, before in zip(buffers, (before_call, pl.col("ts") < pl.col("cut_ts"), pl.col("ts") < pl.col("cut_ts"))):
        tagged = frame.join(cuts, on="tid", how="left").with_columns(_before=before.fill_null(False))
        parts.append(tagged.filter("_before").select(frame.columns))
        rests.append(tagged.filter(~pl.col("_before")).select(frame.columns))
    return tuple(parts), tuple(rests)


def _part(calls: pl.DataFrame, work: pl.DataFrame, gaps: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """requests_of one part; disruption ids stand as their root's interval id until the end, and
    a hit carries its request's (ts, first_id) in place of its id (`request_ts`, `first_id`)."""
    if not calls.height:
        return pl.DataFrame(), pl.DataFrame()
    roots = work.select("root", disruption_id="root").unique()
    requests, hits = pl.collect_all(requests_of(calls.lazy(), work.lazy(), roots.lazy(), gaps.lazy(), keep_first_id=True))
    hits = hits.join(requests.select("request_id", "first_id", request_ts="ts"), on="request_id")
    return requests, hits.drop("request_id")


def _new_gaps(runs: pl.DataFrame, last_runs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The gaps this window's complete runs close (each thread's last run waits for its next),
    and each thread's last run after the window."""
    every = stack_frames([last_runs, runs])
    if not every.height:
        return pl.DataFrame(schema={"tid": pl.Int32, "ts": pl.Int64, "next_ts": pl.Int64, "next_cpu": pl.Int16}), every
    return off_cpu_gaps(every.lazy()).collect(), every.sort("tid", "ts", "id").group_by("tid", maintain_order=True).last()


def _with_calls(buffers: tuple[pl.DataFrame, ...]) -> tuple[pl.DataFrame, ...]:
    """The waiting work and gaps of threads that have waiting calls. Any other item can fall in
    no request: an earlier one ended by the thread's last cut (the item starts after it), and
    a later one starts with a call not seen yet, so after every item seen (the idle task's
    interrupts, most of them, go here)."""
    calls, work, gaps = buffers
    tids = calls.select("tid").unique()
    return calls, work.join(tids, on="tid", how="semi"), gaps.join(tids, on="tid", how="semi")


def request_parts(batches: Iterable[pl.DataFrame], part: Callable[[pl.DataFrame, pl.DataFrame], None],
                  work: Callable[[pl.DataFrame], None] = lambda rows: None) -> np.ndarray:
    """build_requests of the numbered interval windows `batches` (interval_windows: id order,
    split by time), a part at a time: `part` hears each part's (requests, hits) unnumbered (see
    _part) and `work` the charged-work rows as they are made final (charged_work_windows).
    Returns every root id, sorted: the disruption ids are their ranks."""
    charged = ChargedWork()
    buffers: tuple[pl.DataFrame, ...] | None = None
    last_runs, roots = pl.DataFrame(), []

    def heard(done: pl.DataFrame) -> None:
        work(done)
        roots.append(done.filter(pl.col("root") == pl.col("id"))["id"].to_numpy())

    def found(requests: pl.DataFrame, hits: pl.DataFrame) -> None:
        if requests.height:
            part(requests, hits)

    for batch in batches:
        done = charged.add(batch)
        if done.height:
            heard(done)
        gaps, last_runs = _new_gaps(batch.filter(_RUN).select("tid", "ts", "dur", "id", "cpu"), last_runs)
        new = (batch.filter(_CALL), done if done.height else empty_work(), gaps)
        buffers = new if buffers is None else tuple(stack_frames([b, n]) for b, n in zip(buffers, new))
        ready, buffers = _split(buffers, _cuts(buffers[0], last_runs, charged.held_from))
        found(*_part(*ready))
        buffers = _with_calls(buffers)
    if buffers is not None:
        done = charged.finish()
        if done.height:
            heard(done)
            buffers = (buffers[0], stack_frames([buffers[1], done]), buffers[2])
        found(*_part(*buffers))
    return np.sort(np.concatenate(roots)) if roots else np.zeros(0, np.uint32)


def requests_of_windows(batches: Iterable[pl.DataFrame],
                        work: Callable[[pl.DataFrame], None] = lambda rows: None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(requests, hits) of the numbered interval windows, equal to build_requests of the whole
    table, collected (request_parts, every part held)."""
    requests, hits = [], []
    roots = request_parts(batches, lambda r, h: (requests.append(r), hits.append(h)), work)
    if not requests:
        return pl.DataFrame(schema=REQUEST_SCHEMA), pl.DataFrame(schema=HIT_SCHEMA)
    return _numbered(pl.concat(requests), pl.concat(hits), roots)


def empty_work() -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.UInt32, "cpu": pl.Int16, "tid": pl.Int32, "ts": pl.Int64, "end": pl.Int64,
                                "kind": pl.String, "complete": pl.Boolean, "own_ns": pl.Int64, "glue_ns": pl.Int64,
                                "charged_ns": pl.Int64, "root": pl.UInt32, "source": pl.String,
                                "disruptive": pl.Boolean})


def _numbered(requests: pl.DataFrame, hits: pl.DataFrame, roots: np.ndarray,
              first: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Requests numbered by (ts, first_id) from `first`, and their hits with disruptions
    numbered by the rank of their root among every root (as requests._chains numbers them)."""
    every = requests.sort("ts", "first_id").with_columns(
        request_id=pl.int_range(first, first + pl.len(), dtype=REQUEST_SCHEMA["request_id"]))
    numbered = every.select(REQUEST_SCHEMA.keys())
    rank = pl.Series(np.searchsorted(roots, hits["disruption_id"].to_numpy()), dtype=HIT_SCHEMA["disruption_id"])
    hits = (hits.with_columns(disruption_id=rank).join(every.select("first_id", "request_id"), on="first_id")
            .select(HIT_SCHEMA.keys()).sort("request_id", "disruption_id"))
    return numbered, hits


def _from(ts: int, first_id: int) -> pl.Expr:
    """Rows whose request sorts at or after (ts, first_id)."""
    return (pl.col("ts") > ts) | ((pl.col("ts") == ts) & (pl.col("first_id") >= first_id))


def numbered_in_parts(requests: pl.LazyFrame, hits: pl.LazyFrame, roots: np.ndarray,
                      append: Callable[[pl.DataFrame, pl.DataFrame], None], rows_per_part: int = 1 << 20) -> int:
    """The stored parts (request_parts) numbered as requests_of_windows numbers them, handed to
    `append` in request_id order, `rows_per_part` requests at a time: the ranges are cut in a
    sorted read of the requests' keys (12 bytes each), and each range is read from the parts,
    sorted and numbered from the count of requests before it. Returns how many requests."""
    keys = requests.select("ts", "first_id").collect().sort("ts", "first_id")
    hits = hits.rename({"request_ts": "ts"})
    for first in range(0, keys.height, rows_per_part):
        in_range = _from(*keys.row(first))
        if first + rows_per_part < keys.height:
            in_range &= ~_from(*keys.row(first + rows_per_part))
        append(*_numbered(requests.filter(in_range).collect(), hits.filter(in_range).collect(), roots, first))
    return keys.height
