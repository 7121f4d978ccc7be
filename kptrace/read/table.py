"""The event table as it is held: a narrow core of what every event has, and one table per family
of events (kptrace.schema.FAMILIES) with only that family's rows.

The schema's wide table (EVENT_SCHEMA) has ~40 columns, most null in most rows, and a String
column costs 16 bytes a row even when null: held wide, a trace costs ~220 B/event. Held this way
a column costs only on the rows that fill it. `EventTable.view()` gives the wide table back as a
LazyFrame in exactly the schema's types, column order and row order; filters and selects push
down into the parts, so a consumer that wants one family's rows never builds the wide table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
from polars.io.plugins import register_io_source

from kptrace.schema import CORE_COLUMNS, EVENT_COLUMNS, EVENT_SCHEMA, FAMILIES, HELD_AS_NAMES

#: The core's row number in a family table: which event a family row belongs to.
ROW = "row"
#: Rows the view builds at a time: a whole-table query holds its result and one batch's parts.
VIEW_BATCH_ROWS = 1 << 20


def held_type(column: str) -> pl.DataType:
    """The type a column is held in: names as Categorical, everything else as the schema says."""
    return pl.Categorical() if column in HELD_AS_NAMES else EVENT_SCHEMA[column]


def _shared() -> frozenset[str]:
    """Columns more than one family fills (`ret`: irq_handler_exit and syscall exits)."""
    seen: dict[str, int] = {}
    for family in FAMILIES:
        for column in family.columns:
            seen[column] = seen.get(column, 0) + 1
    return frozenset(c for c, n in seen.items() if n > 1)


SHARED = _shared()


@dataclass
class EventTable:
    """The core (every event, in table order) and the family tables (`row`, then the family's
    columns, for the rows that fill any of them, in ascending `row`). A column null in every row
    of a part is not held at all; the view gives it back as nulls."""

    core: pl.DataFrame
    families: dict[str, pl.DataFrame]

    @property
    def height(self) -> int:
        return self.core.height

    def frames(self) -> list[pl.DataFrame]:
        """Every frame held, for measuring what the table costs."""
        return [self.core, *self.families.values()]

    def view(self) -> pl.LazyFrame:
        """The wide event table (EVENT_SCHEMA: its types, column order, and this table's row order).

        A scan of this table: Polars hands it the columns a query selects and the filter it
        applies, and it builds only those columns, only at the rows the filter keeps (a filter on
        core columns is applied before any family column is read), VIEW_BATCH_ROWS rows at a time."""
        return register_io_source(self._scan, schema=EVENT_SCHEMA)

    def _scan(self, columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
              batch_size: int | None) -> Iterator[pl.DataFrame]:
        """Polars' scan contract: the first `n_rows` rows (before the filter), those `predicate`
        keeps, with `columns`."""
        columns = columns if columns is not None else list(EVENT_SCHEMA)
        end = self.height if n_rows is None else min(n_rows, self.height)
        for start in range(0, end, VIEW_BATCH_ROWS):
            rows = np.arange(start, min(start + VIEW_BATCH_ROWS, end), dtype=np.int64)
            if predicate is not None:
                tested = self._columns_at(rows, predicate.meta.root_names())
                rows = rows[tested.with_row_index(ROW).filter(predicate)[ROW].to_numpy()]
            yield self._columns_at(rows, columns)

    def rows_at(self, rows: np.ndarray) -> pl.DataFrame:
        """The wide rows at `rows` (ascending core row numbers), built directly, without a scan."""
        return self._columns_at(rows, list(EVENT_SCHEMA))

    def take(self, keep: np.ndarray) -> EventTable:
        """The table of the rows where `keep` (a boolean per row) is set, numbered afresh."""
        renumbered = (np.cumsum(keep) - 1).astype(np.uint32)
        families = {}
        for name, frame in self.families.items():
            rows = frame[ROW].to_numpy()
            kept = keep[rows]
            if kept.any():
                families[name] = frame.filter(pl.Series(kept)).with_columns(pl.Series(ROW, renumbered[rows[kept]]))
        return EventTable(self.core.filter(pl.Series(keep)), families)

    def _columns_at(self, rows: np.ndarray, columns: list[str]) -> pl.DataFrame:
        """Wide columns at `rows` (ascending core rows), in the schema's types. A family column is
        put at its rows of the result (a scatter of the family's rows, not a gather at every row),
        cast while it has only its family's rows."""
        whole = len(rows) == 0 or rows[-1] - rows[0] + 1 == len(rows)  # a run of rows: slice, not gather
        core = self.core.slice(int(rows[0]), len(rows)) if whole and len(rows) else self.core[rows]
        out = {}
        placed: dict[str, _Placed] = {}
        for column in dict.fromkeys(columns):
            if column in core.columns:
                out[column] = core[column].cast(EVENT_SCHEMA[column])
                continue
            held = [(name, frame) for name, frame in self.families.items() if column in frame.columns]
            for name, frame in held:
                if name not in placed:
                    placed[name] = _placed(frame[ROW].to_numpy(), rows, whole)
            out[column] = _wide(column, [(placed[name], frame[column]) for name, frame in held], len(rows))
        if not out:  # no column asked for (a count): the rows alone
            return pl.DataFrame({ROW: rows}).drop(ROW)
        return pl.DataFrame(out)

    @staticmethod
    def split(wide: pl.DataFrame) -> EventTable:
        """The held form of a wide event table (EVENT_SCHEMA columns, in its row order). Every
        non-null value is held once: a family holds its columns wherever they are filled, and a
        shared column (`ret`) goes to the family that claims the row."""
        numbered = wide.with_row_index(ROW)
        core = _without_nulls(numbered.select([_held(c) for c in CORE_COLUMNS if c in wide.columns]))
        families = {}
        for family in FAMILIES:
            columns = [c for c in family.columns if c in wide.columns]
            values = {c: _claimed(c, family.claims) for c in columns}
            filled = pl.any_horizontal([v.is_not_null() for v in values.values()]) if values else pl.lit(False)
            rows = numbered.filter(filled).select(ROW, *[v.cast(held_type(c)).alias(c) for c, v in values.items()])
            if rows.height:
                families[family.name] = _without_nulls(rows)
        return EventTable(core, families)

    @staticmethod
    def concat(tables: list[EventTable]) -> EventTable:
        """Tables of consecutive parts (time windows) as one table."""
        offsets, total = [], 0
        for table in tables:
            offsets.append(total)
            total += table.height
        core = pl.concat([t.core for t in tables], how="diagonal") if tables else pl.DataFrame()
        families = {}
        for family in FAMILIES:
            parts = [t.families[family.name].with_columns((pl.col(ROW) + offset).cast(pl.UInt32))
                     for t, offset in zip(tables, offsets) if family.name in t.families]
            if parts:
                families[family.name] = pl.concat(parts, how="diagonal")
        return EventTable(core, families)


@dataclass
class _Placed:
    """Where a family's rows among some core rows are: at[i] in those rows, src[i] in the family."""

    at: np.ndarray
    src: np.ndarray


def _placed(held: np.ndarray, rows: np.ndarray, run: bool) -> _Placed:
    """The family rows (its ascending `row` column is `held`) among `rows`: a run of consecutive
    rows is found by two binary searches."""
    if run and len(rows):
        lo, hi = np.searchsorted(held, [rows[0], rows[-1] + 1])
        return _Placed(held[lo:hi].astype(np.int64) - rows[0], np.arange(lo, hi))
    near = np.minimum(np.searchsorted(held, rows), max(len(held) - 1, 0))
    found = held[near] == rows if len(held) else np.zeros(len(rows), dtype=bool)
    return _Placed(np.flatnonzero(found), near[found])


def _numpy_kind(dtype: pl.DataType) -> np.dtype:
    return pl.Series(dtype=dtype).to_numpy().dtype


def _wide(column: str, parts: list[tuple[_Placed, pl.Series]], count: int) -> pl.Series:
    """A column of `count` rows from its families' values placed there (null elsewhere, and where a
    family's value is null); where two families hold a row, the first's value (a coalesce).
    Integers are scattered in numpy; other types are gathered once from the families' values,
    cast to the schema's type while they are only the family's rows."""
    dtype = EVENT_SCHEMA[column]
    if not parts:
        return pl.repeat(None, count, dtype=dtype, eager=True).alias(column)
    kept = []
    for place, series in parts:
        series = series.cast(dtype)
        if len(place.src) < len(series):
            series = series.gather(place.src)
        at = place.at
        if series.null_count():
            present = series.is_not_null().to_numpy()
            series, at = series.filter(pl.Series(present)), at[present]
        kept.append((at, series))
    valid = np.zeros(count, dtype=bool)
    if dtype.is_integer():
        full = np.zeros(count, dtype=_numpy_kind(dtype))
        for at, series in reversed(kept):  # the first family written last: its values stay
            full[at] = series.to_numpy()
            valid[at] = True
        values = pl.Series(column, full)
        return values if valid.all() else values.set(pl.Series(~valid), None)
    where = np.zeros(count, dtype=np.uint32)
    offsets = np.cumsum([0, *(len(series) for _, series in kept)])
    for (at, _), offset in reversed(list(zip(kept, offsets))):
        where[at] = np.arange(offset, offset + len(at), dtype=np.uint32)
        valid[at] = True
    source = pl.concat([series for _, series in kept])
    index = pl.Series(where)
    return source.gather(index if valid.all() else index.set(pl.Series(~valid), None)).alias(column)


def _held(column: str) -> pl.Expr:
    return pl.col(column).cast(held_type(column))


def _claimed(column: str, claims: pl.Expr | None) -> pl.Expr:
    """A family's values of a column: only on the rows it claims when another family shares it."""
    if column in SHARED and claims is not None:
        return pl.when(claims).then(pl.col(column)).alias(column)
    return pl.col(column)


def _without_nulls(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame without columns that are null in every row (the view makes them again); the
    row number and the time stay, so the frame keeps its height."""
    return frame.select([c for c in frame.columns if c in (ROW, "ts") or frame[c].null_count() < frame.height])
