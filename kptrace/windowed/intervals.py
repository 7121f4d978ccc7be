"""The interval table built one time window of events at a time, equal row for row (ids and
`raised_in` included) to `build_intervals` of the whole event table.

Every pairing in kptrace.intervals looks at the next or previous row of one stream, so a
window needs, besides its own rows, only a few rows of earlier windows, carried over:

- hard IRQs and softirqs (per CPU) and syscalls (per task): an entry that is the last edge of
  its stream is *pending*: its interval is left out and its row carried into the next window,
  where the next edge closes it (or, after the last window, nothing: incomplete, as whole);
- NAPI polls: the last boundary per CPU (a poll starts there); its own poll was already made;
- task runs: the last task row per CPU (a row's missed-switch test reads the previous one),
  and the last start boundary per CPU, pending until the next boundary ends its run;
- lost-event marks, every one (few): a syscall that closes later is broken by one after its
  enter;
- per (CPU, softirq vector): the seq of its last run and the first raise after it with the
  hard IRQ / softirq found to enclose it so far (who raised the next run; an encloser exits
  before the run it raised starts, so it is found by then).

Every interval is made exactly once: in the window that holds the row that closes it (or,
for a NAPI poll, its napi_poll row). Numbering needs every interval's key (ts, depth, seq,
end_seq): an interval made in window k starts in it ("on time") or earlier ("late": one per
stream still open at the edge, few). Numbering is a second pass, window by window: window k's
ids are those of earlier windows, then its on-time intervals and the late ones that start in
its time range, in key order. `raised_in` cites an id: it is filled in that pass from the
encloser's (kind, seq), numbered in the same or an earlier window (it starts first).

Windows must be split where the time changes (rows sharing a timestamp in one window), as
kptrace.read.chunks splits them. Memory: one window, the carried rows, the late intervals and
the enclosers' keys; the on-time intervals of each window are kept here in a list (a caller
that must bound them writes them out between the passes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kptrace import intervals as iv

_EVENT = pl.col("event").cast(pl.Categorical)  # compared on its distinct names (intervals._NAMED)
_KEY = ["ts", "depth", "seq", "end_seq"]
_RAISE = {"raise_ts": pl.Int64, "raised_hard": pl.UInt32, "raised_soft": pl.UInt32}


def stack_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames of one shape stacked (empty ones skipped: a carry that holds nothing yet)."""
    frames = [f for f in frames if f.width]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _last(rows: pl.DataFrame, by: str) -> pl.DataFrame:
    """The last row (in record order) of each `by` group. Only the rows holding their group's
    greatest seq can be it: those few are sorted, not the whole window (all its columns)."""
    if not rows.height:
        return rows
    latest = rows.filter(pl.col("seq").eq_missing(pl.col("seq").max().over(by)))
    return latest.sort(by, "seq").group_by(by, maintain_order=True).last()


def _last_of(rows: pl.DataFrame, member: pl.Expr, by: str) -> pl.DataFrame:
    """The last row (in record order) of each `by` group among the rows where `member` holds:
    found on a few columns, then only those rows taken whole (not every member row)."""
    at = (rows.lazy().with_row_index("_at").filter(member).group_by(by).agg(pl.col("_at").sort_by("seq").last())
          .sort(by).collect()["_at"])
    return rows.select(pl.all().gather(at))


def _without(rows: pl.DataFrame, seqs: pl.DataFrame) -> pl.DataFrame:
    return rows.join(seqs.select("seq"), on="seq", how="anti") if seqs.height and rows.height else rows


def _open_entries(edges: pl.DataFrame, by: str) -> pl.DataFrame:
    """The seq of each stream's last edge when it is an entry: an interval still open."""
    if not edges.height:
        return pl.DataFrame({"seq": []}, schema={"seq": pl.UInt32})
    return _last(edges, by).filter(pl.col("edge") == 1).select("seq")


def _edges(stream: pl.LazyFrame, by: str) -> pl.DataFrame:
    """The columns _open_entries reads of an edge stream, collected alone."""
    return stream.select(by, "seq", "edge").collect()


@dataclass
class _Carry:
    """What crosses a window edge (module docstring); empty frames before the first window."""

    irq: pl.DataFrame = field(default_factory=pl.DataFrame)      # open hardirq/softirq entry rows
    syscall: pl.DataFrame = field(default_factory=pl.DataFrame)  # open sys_enter rows
    napi: pl.DataFrame = field(default_factory=pl.DataFrame)     # last NAPI boundary row per CPU
    task: pl.DataFrame = field(default_factory=pl.DataFrame)     # last task row per CPU
    run: pl.DataFrame = field(default_factory=pl.DataFrame)      # open run start per CPU
    gaps: pl.DataFrame = field(default_factory=pl.DataFrame)     # every lost mark: cpu, gap_seq
    raises: pl.DataFrame = field(default_factory=pl.DataFrame)   # per (cpu, name): after, first raise
    credits: pl.DataFrame = field(default_factory=pl.DataFrame)  # raise of each softirq run not yet made
    missed: int = 0  # task switches inferred so far (intervals.missed_switches of the windows read)


def _irqs(rows: pl.DataFrame, carry: _Carry, last: bool) -> pl.DataFrame:
    events = stack_frames([carry.irq, rows])
    made = iv.hard_and_soft_irqs(events.lazy()).collect()
    open_ = None if last else stack_frames([
        _open_entries(_edges(iv._irq_stream(events.lazy(), kind), "cpu"), "cpu") for kind in ("hardirq", "softirq")])
    made, carry.irq = _held_back(events, made, open_)
    return made


def _syscalls(rows: pl.DataFrame, carry: _Carry, last: bool) -> pl.DataFrame:
    events = stack_frames([carry.syscall, rows])
    made = iv.syscalls(events.lazy()).collect()
    open_ = None if last else _open_entries(_edges(iv.syscall_edges(events.lazy()), "tid"), "tid")
    made, carry.syscall = _held_back(events, made, open_)
    return made


def _held_back(events: pl.DataFrame, made: pl.DataFrame, open_: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the intervals to emit now, the rows to carry): an entry still open at the window's end
    waits for its exit in a later window, its row carried; in the last window (`open_` None)
    everything is emitted."""
    if open_ is None:
        return made, pl.DataFrame()
    return _without(made, open_), events.join(open_, on="seq", how="semi")


def _napi(rows: pl.DataFrame, carry: _Carry) -> pl.DataFrame:
    events = stack_frames([carry.napi, rows])
    made = _without(iv.napi_polls(events.lazy()).collect(), carry.napi)
    carry.napi = _last_of(events, iv.NAPI_BOUNDARY, "cpu")
    return made


def _task_runs(rows: pl.DataFrame, carry: _Carry, last: bool) -> pl.DataFrame:
    events = stack_frames([carry.task, rows])
    starts = _without(iv.run_boundaries(events.lazy()).collect(), carry.task)
    carry.missed += starts["missed"].sum()
    carry.task = _last_of(events, iv.TASK_ROW, "cpu")
    boundaries = stack_frames([carry.run, starts])
    made = iv.runs_between(boundaries.lazy()).collect()
    if last:
        carry.run = pl.DataFrame()
        return made
    open_ = _last(boundaries, "cpu").filter(~pl.col("subsystem").cast(pl.String).eq_missing("kptrace"))
    carry.run = open_
    return _without(made, open_)


def _enclosed(points: pl.DataFrame, made: pl.DataFrame, kind: str) -> pl.Series:
    """For each raise (cpu, raise_seq), the seq of the `kind` interval made in this window that
    encloses it, or null (intervals._raisers' rule)."""
    spans = made.filter(pl.col("kind") == kind).select("cpu", encloser="seq", w_ts="seq", w_end="end_seq")
    found = iv.inside(points.select("cpu", "raise_seq").lazy(), spans.lazy(), "cpu", at="raise_seq").collect()
    return points.join(found.select("raise_seq", "encloser"), on="raise_seq", how="left")["encloser"]


def _candidates(rows: pl.DataFrame, made: pl.DataFrame, carry: _Carry) -> pl.DataFrame:
    """The raises a run of this window or a later one can be credited with (each vector's
    carried first raise, and this window's), each with the hard IRQ and softirq made so far
    that encloses it (its `raised_in` candidates, by seq)."""
    raises = rows.lazy().filter(_EVENT == "softirq_raise").select(
        "cpu", name=pl.col("softirq").cast(pl.String), raise_seq="seq", raise_ts="ts").collect()
    carried = carry.raises.drop("after") if "raise_seq" in carry.raises.columns else pl.DataFrame()
    candidates = stack_frames([carried, raises])
    if not candidates.height:
        return pl.DataFrame()
    candidates = candidates.drop_nulls("raise_seq")
    for kind, column in (("hardirq", "raised_hard"), ("softirq", "raised_soft")):
        old = candidates[column] if column in candidates.columns else pl.lit(None, pl.UInt32)
        candidates = candidates.with_columns(pl.coalesce(old, _enclosed(candidates, made, kind)).cast(pl.UInt32)
                                             .alias(column))
    return candidates.with_columns(pl.col("cpu").cast(pl.Int16), pl.col("raise_seq").cast(pl.UInt32))


def _runs(rows: pl.DataFrame, before: pl.DataFrame | None) -> pl.DataFrame:
    """The window's softirq runs, each with `after`: the seq of its vector's previous run on its
    CPU (carried from an earlier window for the first), 0 when none."""
    runs = rows.lazy().filter(_EVENT == "softirq_entry").select(
        pl.col("cpu").cast(pl.Int16), name=pl.col("softirq").cast(pl.String), run_seq="seq").collect()
    runs = runs.sort("cpu", "name", "run_seq").with_columns(after=pl.col("run_seq").shift(1).over("cpu", "name"))
    if before is not None and runs.height:
        runs = runs.join(before.rename({"after": "carried"}), on=["cpu", "name"], how="left").with_columns(
            after=pl.coalesce("after", "carried")).drop("carried")
    return runs.with_columns(pl.col("after").fill_null(0).cast(pl.UInt32))


def _raise_state(before: pl.DataFrame | None, runs: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """Per (cpu, vector) after the window: the seq of its last run (`after`) and the first raise
    since (inclusive, as [after, seq) is), with its enclosers."""
    last_runs = runs.group_by("cpu", "name").agg(after=pl.col("run_seq").max()) if runs.height else None
    known = [f for f in (before, last_runs, candidates) if f is not None and f.height]
    if not known:
        return pl.DataFrame()
    state = stack_frames([f.select("cpu", "name") for f in known]).unique().with_columns(after=pl.lit(None, pl.UInt32))
    for f in (before, last_runs):  # the latest run wins
        if f is not None and f.height:
            state = state.join(f.rename({"after": "a"}), on=["cpu", "name"], how="left").with_columns(
                after=pl.coalesce("a", "after")).drop("a")
    state = state.with_columns(pl.col("after").fill_null(0).cast(pl.UInt32))
    if not candidates.height:
        return state
    first = (candidates.join(state, on=["cpu", "name"]).filter(pl.col("raise_seq") >= pl.col("after"))
             .sort("raise_seq").group_by("cpu", "name", maintain_order=True).first().drop("after"))
    return state.join(first, on=["cpu", "name"], how="left")


def _credit(rows: pl.DataFrame, made: pl.DataFrame, carry: _Carry) -> None:
    """Credit each softirq run of the window with the first raise of its vector on its CPU since
    the previous run (intervals._raisers), and update the per-vector state."""
    candidates = _candidates(rows, made, carry)
    before = carry.raises.select("cpu", "name", "after") if carry.raises.height else None
    runs = _runs(rows, before)
    if runs.height and candidates.height:
        windows = runs.lazy().select("run_seq", "cpu", "name", w_ts="after", w_end="run_seq")
        credited = iv.inside(candidates.lazy(), windows, ["cpu", "name"], at="raise_seq").collect()
        first = credited.sort("raise_seq").group_by("run_seq", maintain_order=True).first()
        carry.credits = stack_frames([carry.credits, first.select("run_seq", *_RAISE)])
    carry.raises = _raise_state(before, runs, candidates)


def _with_raises(made: pl.DataFrame, carry: _Carry) -> pl.DataFrame:
    """Each softirq run's credited raise (null when none), and the credits used dropped."""
    if not carry.credits.height:
        return made.with_columns([pl.lit(None, t).alias(c) for c, t in _RAISE.items()])
    out = made.join(carry.credits.rename({"run_seq": "seq"}).with_columns(
        _kind=pl.lit("softirq")), left_on=["seq", "kind"], right_on=["seq", "_kind"], how="left")
    used = made.filter(pl.col("kind") == "softirq").select("seq")
    carry.credits = carry.credits.join(used.rename({"seq": "run_seq"}), on="run_seq", how="anti")
    return out.with_columns([pl.col(c).cast(t) for c, t in _RAISE.items()])


def _window_intervals(rows: pl.DataFrame, carry: _Carry, last: bool) -> pl.DataFrame:
    """The intervals a window makes (unnumbered, with the seqs of their raisers' enclosers)."""
    made = pl.concat([_irqs(rows, carry, last), _napi(rows, carry), _syscalls(rows, carry, last),
                      _task_runs(rows, carry, last)])
    carry.gaps = stack_frames([carry.gaps, iv.lost_marks(rows.lazy()).collect()])
    if carry.gaps.height:
        made = iv.mark_lost_gaps(made.lazy(), carry.gaps.lazy()).collect()
    _credit(rows, made, carry)
    return _with_raises(made, carry)


def _numbered(batch: pl.DataFrame, base: int, enclosers: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A window's intervals in key order with ids from `base`, raised_in looked up in the
    enclosers numbered so far (this window's added first)."""
    batch = batch.sort(_KEY, nulls_last=True).with_row_index("id", offset=base)
    enclosers = stack_frames([enclosers, batch.filter(pl.col("kind").is_in(["hardirq", "softirq"])).select("kind", "seq", "id")])
    ids = {kind: enclosers.filter(pl.col("kind") == kind).select(pl.col("seq").alias(column), pl.col("id").alias(kind))
           for kind, column in (("hardirq", "raised_hard"), ("softirq", "raised_soft"))}
    batch = (batch.join(ids["hardirq"], on="raised_hard", how="left").join(ids["softirq"], on="raised_soft", how="left")
             .with_columns(raised_in=pl.coalesce("hardirq", "softirq")).drop("hardirq", "softirq", "raised_hard", "raised_soft"))
    return batch.with_columns([pl.col(c).cast(t) for c, t in iv.RAISE_SCHEMA.items()]), enclosers


@dataclass
class Inferred:
    """What building the intervals inferred (`missed_switches`: intervals.missed_switches of the
    events read), for the analysis notes: complete once every event window is read."""

    missed_switches: int = 0


def _spilled(frames: list, spill: Path | None) -> list:
    """Each window's on-time intervals kept, or written to `spill` (one Parquet file per
    window, read back when it is numbered) so that the first pass holds none of them."""
    if spill is None:
        return frames
    spill.mkdir(parents=True, exist_ok=True)
    path = spill / f"on-time-{len(frames):06d}.parquet"
    frames[-1].write_parquet(path, compression="lz4")
    frames[-1] = path
    return frames


def interval_windows(windows: Iterable[pl.DataFrame], spill: Path | None = None,
                     inferred: Inferred | None = None) -> Iterator[pl.DataFrame]:
    """build_intervals of the concatenated event windows, one numbered window at a time (in id
    order). Each window is a slice of the event table in order; a timestamp must not be split
    between two windows. With `spill`, the intervals awaiting their numbers wait there, not in
    memory; `inferred` is filled in as the windows are read."""
    carry, on_time, late, starts, offset, last_ts, raisers = _Carry(), [], [], [], 0, None, []
    windows = iter(windows)
    current = next(windows, None)
    while current is not None:
        following = next(windows, None)
        if current.height:
            if last_ts is not None and current["ts"][0] <= last_ts:
                raise ValueError("event windows must be split where the time changes")
            rows = current.with_row_index("seq", offset=offset)
            made = _window_intervals(rows, carry, following is None)
            lo = rows["ts"][0] if starts else None
            starts.append(lo)
            on_time.append(made if lo is None else made.filter(pl.col("ts") >= lo))
            raisers.append(_raiser_seqs(on_time[-1]))
            on_time = _spilled(on_time, spill)
            if lo is not None:
                late.append(made.filter(pl.col("ts") < lo))
            offset, last_ts = offset + rows.height, rows["ts"][-1]
            if inferred is not None:
                inferred.missed_switches = int(carry.missed)
        current = following
    late = stack_frames(late)
    wanted = stack_frames([*raisers, _raiser_seqs(late)]).unique()
    base, enclosers = 0, pl.DataFrame()
    for k, batch in enumerate(on_time):
        batch = pl.read_parquet(batch) if isinstance(batch, Path) else batch
        hi = starts[k + 1] if k + 1 < len(starts) else None
        if late.height:
            span = (pl.col("ts") >= starts[k] if starts[k] is not None else pl.lit(True)) & (
                pl.col("ts") < hi if hi is not None else pl.lit(True))
            batch = pl.concat([batch, late.filter(span)])
        numbered, enclosers = _numbered(batch, base, enclosers)
        if wanted.height:
            enclosers = enclosers.join(wanted, on="seq", how="semi")
        base += numbered.height
        on_time[k] = None  # let the window go once written
        yield numbered


def _raiser_seqs(made: pl.DataFrame) -> pl.DataFrame:
    """The seqs of the enclosers these intervals' raises cite (numbering keeps only their ids)."""
    if not made.height:
        return pl.DataFrame()
    return stack_frames([made.select(pl.col(c).alias("seq")).drop_nulls() for c in ("raised_hard", "raised_soft")])
