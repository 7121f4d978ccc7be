"""`requests.charged_work` built from the numbered interval table one window at a time
(kptrace.windowed.intervals yields it so), equal row for row to charged_work of the whole table.

charged_work reads hard IRQs and softirqs per CPU in seq order, which for them is time order
(an interval starts at its entry row), so the windows are consecutive per CPU. Carried per CPU:
the running maximum of interval ends (a softirq's `gap`), the last adjacency head (who a
softirq with no traced raise joins), and the last softirq (a hard IRQ nested in it adds to its
`nested_ns`). A softirq's row waits until a window starts after its end, since a hard IRQ
nested in it starts before that end. Every parent (`raised_in`, the adjacency head) is an
earlier interval, so roots are resolved with a root-of-id array (4 bytes per interval) and
each root's kind and name (5 bytes). Chains (`requests._chains`) group the rows by root, in
ranges of CHAIN_PART_ROOTS consecutive roots (chains_in_parts), so no group-by holds every chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import polars as pl

from kptrace.intervals import inside
from kptrace.requests import CHAIN_GAP_NS, DISRUPTION_SCHEMA, _chains
from kptrace.windowed.intervals import stack_frames

#: Disruptions grouped at a time: each range holds this many roots' chains in memory.
CHAIN_PART_ROOTS = 1 << 20
_COLUMNS = ["id", "cpu", "tid", "ts", "end", "kind", "complete", "own_ns", "glue_ns", "charged_ns", "root",
            "source", "disruptive"]
_SOFT = pl.col("kind") == "softirq"


class _Roots:
    """Root, kind and name of every hard IRQ and softirq numbered so far, by id."""

    def __init__(self) -> None:
        self.root = np.zeros(0, np.uint32)
        self.hard = np.zeros(0, bool)
        self.name = np.zeros(0, np.int32)
        self.names: dict[str, int] = {}

    def add(self, ids: np.ndarray, parent: np.ndarray, hard: np.ndarray, names: list[str]) -> np.ndarray:
        """Record one window's intervals (parents at earlier ids or in the window); their roots."""
        if len(ids) and ids.max() >= len(self.root):
            size = int(ids.max()) + 1
            self.root = np.concatenate([self.root, np.arange(len(self.root), size, dtype=np.uint32)])
            self.hard = np.concatenate([self.hard, np.zeros(size - len(self.hard), bool)])
            self.name = np.concatenate([self.name, np.zeros(size - len(self.name), np.int32)])
        self.root[ids] = parent
        self.hard[ids] = hard
        self.name[ids] = [self.names.setdefault(n, len(self.names)) for n in names]
        roots = self.root[ids]
        while not np.array_equal(self.root[roots], roots):  # pointer doubling, as requests._roots
            roots = self.root[roots]
        self.root[ids] = roots
        return roots

    def source(self, roots: np.ndarray) -> tuple[pl.Series, pl.Series]:
        """Each root's source (its hard IRQ's name, or inline:<softirq>) and whether it disrupts."""
        labels = np.array(list(self.names), dtype=object)
        names = labels[self.name[roots]] if len(roots) else np.zeros(0, object)
        hard = self.hard[roots]
        return (pl.Series([n if h else f"inline:{n}" for n, h in zip(names, hard)], dtype=pl.String),
                pl.Series(hard, dtype=pl.Boolean))


def _finished(rows: pl.DataFrame) -> pl.DataFrame:
    own = (pl.col("dur").fill_null(0) - pl.col("nested_ns").fill_null(0)).clip(0)
    return rows.with_columns(own_ns=own).with_columns(charged_ns=pl.col("own_ns") + pl.col("glue_ns")).select(_COLUMNS)


class ChargedWork:
    """charged_work fed the numbered interval windows one at a time (`add`, then `finish`);
    `held_from`: the earliest start of a softirq whose row is still held (None: none), so every
    row of an interval that starts before it and before the next window has been returned."""

    def __init__(self) -> None:
        self.roots, self.carry, self.pending, self.last_soft = _Roots(), pl.DataFrame(), pl.DataFrame(), pl.DataFrame()

    @property
    def held_from(self) -> int | None:
        return self.pending["ts"].min() if self.pending.height else None

    def finish(self) -> pl.DataFrame:
        done, self.pending = self.pending, pl.DataFrame()
        return _finished(done) if done.height else pl.DataFrame()

    def add(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The rows made final by this window (its hard IRQs, softirqs of earlier windows that
        ended before it started); the window's softirqs are held."""
        irq = (batch.filter(pl.col("kind").is_in(["hardirq", "softirq"]))
               .select("id", "cpu", "tid", "ts", "dur", "kind", "name", "complete", "seq", "end_seq", "raise_ts",
                       "raised_in")
               .with_columns(end=pl.col("ts") + pl.col("dur").fill_null(0))
               .sort("cpu", "seq"))
        if not irq.height:
            return pl.DataFrame()
        out = []
        if self.pending.height:  # no hard IRQ of this window or later can be nested in these
            done = self.pending.filter(pl.col("end") < irq["ts"].min())
            self.pending = self.pending.filter(pl.col("end") >= irq["ts"].min())
            if done.height:
                out.append(_finished(done))
        if self.carry.height:
            irq = irq.join(self.carry, on="cpu", how="left")
        else:
            irq = irq.with_columns(carried_end=pl.lit(None, pl.Int64), carried_head=pl.lit(None, pl.UInt32))
        before = pl.max_horizontal(pl.col("end").cum_max().shift(1).over("cpu"), pl.col("carried_end"))
        irq = irq.with_columns(gap=pl.col("ts") - before).with_columns(
            adjacent=(pl.col("gap") <= CHAIN_GAP_NS).fill_null(False))
        head = pl.when((pl.col("kind") == "hardirq") | ~pl.col("adjacent")).then(pl.col("id"))
        irq = irq.with_columns(head=pl.coalesce(head.forward_fill().over("cpu"), pl.col("carried_head")))
        irq = irq.with_columns(
            glue_ns=pl.when(_SOFT & pl.col("adjacent")).then(pl.col("gap").clip(0)).otherwise(0),
            parent=pl.when(~_SOFT).then(pl.col("id")).when(pl.col("raise_ts").is_not_null())
            .then(pl.coalesce("raised_in", "id")).otherwise(pl.col("head")),
        )
        now = irq.group_by("cpu").agg(carried_end=pl.max_horizontal(pl.col("end").max(), pl.col("carried_end").max()),
                                      carried_head=pl.col("head").last())
        self.carry = pl.concat([self.carry.join(now, on="cpu", how="anti"), now]) if self.carry.height else now
        found = self.roots.add(irq["id"].to_numpy(), irq["parent"].to_numpy(),
                               (irq["kind"] == "hardirq").to_numpy(), irq["name"].to_list())
        source, disruptive = self.roots.source(found)
        irq = irq.with_columns(root=pl.Series(found, dtype=pl.UInt32), source=source, disruptive=disruptive)
        # Hard IRQs nested in a softirq of this window or the last one of an earlier window.
        softs = irq.filter(_SOFT)
        spans = stack_frames([self.last_soft, softs.select("cpu", soft_id="id", w_ts="seq", w_end="end_seq")])
        if spans.height:
            self.last_soft = spans.sort("cpu", "w_ts").group_by("cpu", maintain_order=True).last()
        nested = inside(irq.lazy().filter(~_SOFT).select("cpu", "seq", nested_ns=pl.col("dur").fill_null(0)),
                        spans.lazy(), "cpu", at="seq").group_by("soft_id").agg(pl.col("nested_ns").sum()).collect()
        self.pending = stack_frames([self.pending, softs.with_columns(nested_ns=pl.lit(0, pl.Int64))])
        if nested.height:
            added = self.pending.join(nested.rename({"nested_ns": "add"}), left_on="id", right_on="soft_id", how="left")
            self.pending = added.with_columns(nested_ns=pl.col("nested_ns") + pl.col("add").fill_null(0)).drop("add")
        out.append(_finished(irq.filter(~_SOFT).with_columns(nested_ns=pl.lit(None, pl.Int64))))
        return pl.concat(out)


def charged_work_windows(batches: Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """charged_work of the numbered interval windows `batches` (in id order, split by time):
    each window's final rows (a softirq's row may come a window or more later)."""
    work = ChargedWork()
    for batch in batches:
        rows = work.add(batch)
        if rows.height:
            yield rows
    rows = work.finish()
    if rows.height:
        yield rows


def charged_work_of_windows(batches: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """charged_work(whole intervals).collect(), from the windows (rows in id order)."""
    return pl.concat(list(charged_work_windows(batches))).sort("id")


def chains_in_parts(work: pl.LazyFrame, roots: np.ndarray, append: Callable[[pl.DataFrame], None],
                    roots_per_part: int = CHAIN_PART_ROOTS) -> None:
    """`requests._chains(work)` handed to `append` in order, a range of `roots_per_part`
    consecutive roots at a time: `roots` is every root id, sorted (a chain is numbered by its
    root's rank). The work is written roughly in id order and a root is at or before its
    members, so each range reads few of the work file's row groups."""
    if not len(roots):
        append(pl.DataFrame(schema=DISRUPTION_SCHEMA))
    for first in range(0, len(roots), roots_per_part):
        in_range = pl.col("root") >= int(roots[first])
        if first + roots_per_part < len(roots):
            in_range &= pl.col("root") < int(roots[first + roots_per_part])
        append(_chains(work.filter(in_range), first).collect())
