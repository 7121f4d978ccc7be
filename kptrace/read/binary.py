"""Typed event rows from binary ring-buffer pages, whatever file carried them.

A container reader (trace.dat, raw pages) hands over a `Capture`: the page bytes of every
per-CPU buffer and the kernel's format descriptions. This module walks all pages at once
(`kptrace.read.pages`), groups each event type's records side by side, then reads each type's
fields in compiled passes over them: the Python loops here run once per event type or field
(or per distinct value), never once per record. The typed fields go to
their family's table only (kptrace.read.table), never into full-length mostly-null columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from kptrace.read.fields import VECTOR_HANDLERS, state_letters
from kptrace.read.formats import EventFormat, Field, FormatTable, PageHeader
from kptrace.read.pages import (NO_FAMILY, Pages, Records, distinct_keys, family_places, field_span, grouped,
                                join_pages, read_field_bytes, read_field_ints, read_ints, small_codes, walk,
                                walk_in_time_order)
from kptrace.read.table import ROW, EventTable, held_type
from kptrace.schema import CORE_COLUMNS, EVENT_SCHEMA, FAMILIES, SOFTIRQ_NAMES

# Bits of a record's common_flags (kernel trace_entry flags, include/linux/trace_events.h).
_IRQS_OFF, _RESCHED_LAZY, _NEED_RESCHED, _HARDIRQ, _SOFTIRQ, _PREEMPT_RESCHED, _NMI, _BH_OFF = (
    1 << i for i in range(8))


@dataclass
class Capture:
    """What a binary container holds, ready to decode."""

    byte_order: str  # "<" little endian, ">" big endian
    header: PageHeader
    formats: FormatTable
    comms: dict[int, str]
    buffers: list[tuple[str, list[tuple[int, bytes]]]]  # (instance name, [(cpu, pages, any bytes-like)])
    warnings: list[str] = field(default_factory=list)
    header_texts: dict[str, str] = field(default_factory=dict)  # header_page, header_event as saved


def parse_cmdlines(text: str) -> dict[int, str]:
    """`saved_cmdlines`: `pid comm` per line."""
    comms = {}
    for line in text.splitlines():
        pid, _, comm = line.strip().partition(" ")
        if pid.isdigit():
            comms[int(pid)] = comm
    return comms


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values and each value's index among them, without sorting every value: a
    trace repeats a few tasks and states a million times. Integers in a small range are
    numbered through a table indexed by value (pages.small_codes); others are hashed
    (pages.distinct_keys)."""
    if values.dtype in (np.int32, np.int64) and len(values):
        low, high = int(values.min()), int(values.max())
        if high - low < 1 << 22:
            return small_codes(values, low, high)
    items = np.ascontiguousarray(values)
    width = items.itemsize
    which, first = distinct_keys(items.view(np.uint8).ravel(), np.arange(len(items), dtype=np.int64) * width,
                                 np.full(len(items), width, dtype=np.int64), cut_at_nul=False)
    return values[first], which


@dataclass
class _Coded:
    """Values of many records as their distinct values and each record's index among them: a
    text column is built from its codes in one gather at full length, not once per event type."""

    distinct: pl.Series
    codes: np.ndarray  # uint32 index into distinct, one per record

    def values(self) -> pl.Series:
        return self.distinct.gather(pl.Series(self.codes))  # a numpy index is gathered ~3x slower


def _int(pages: Pages, pos: np.ndarray, fmt: EventFormat, name: str) -> np.ndarray | None:
    f = fmt.field(name)
    return read_field_ints(pages, pos, f) if f is not None and not f.is_array else None


def _str(pages: Pages, pos: np.ndarray, fmt: EventFormat, name: str) -> _Coded | None:
    f = fmt.field(name)
    return _text(pages, pos, f) if f is not None and f.is_text else None


def _text(pages: Pages, pos: np.ndarray, f: Field) -> _Coded:
    """A text field of every record, each distinct text decoded once (invalid UTF-8, a damaged
    record, with U+FFFD)."""
    start, length = field_span(pages, pos, f)
    which, first = distinct_keys(pages.data, start, length, cut_at_nul=True)
    data = pages.data
    texts = [bytes(data[at: at + n]).partition(b"\0")[0].decode("utf-8", "replace")
             for at, n in zip(start[first].tolist(), length[first].tolist())]
    return _Coded(pl.Series(texts, dtype=pl.String), which)


def _irq_entry(p, pos, fmt):
    return {"irq": _int(p, pos, fmt, "irq"), "irq_name": _str(p, pos, fmt, "name")}


def _irq_exit(p, pos, fmt):
    ret = _int(p, pos, fmt, "ret")
    return {"irq": _int(p, pos, fmt, "irq"), "ret": None if ret is None else (ret != 0).astype(np.int64)}


def _vector(p, pos, fmt):
    return {"vector": _int(p, pos, fmt, "vector")}


def _softirq(p, pos, fmt):
    vec = _int(p, pos, fmt, "vec")
    if vec is None:
        return {"softirq_vec": None, "softirq": None}
    known = (vec >= 0) & (vec < len(SOFTIRQ_NAMES))
    codes = np.where(known, vec, len(SOFTIRQ_NAMES)).astype(np.uint32)  # an unknown vector: the null entry
    return {"softirq_vec": vec, "softirq": _Coded(_SOFTIRQS, codes)}


def _napi(p, pos, fmt):
    return {"dev": _str(p, pos, fmt, "dev_name"), "napi_work": _int(p, pos, fmt, "work"),
            "napi_budget": _int(p, pos, fmt, "budget")}


def _net(p, pos, fmt):
    return {"dev": _str(p, pos, fmt, "name"), "len": _int(p, pos, fmt, "len")}


def _sched_switch(p, pos, fmt):
    state = _int(p, pos, fmt, "prev_state")
    return {
        "prev_comm": _str(p, pos, fmt, "prev_comm"), "prev_pid": _int(p, pos, fmt, "prev_pid"),
        "prev_prio": _int(p, pos, fmt, "prev_prio"),
        "prev_state": None if state is None else _state_text(state),
        "next_comm": _str(p, pos, fmt, "next_comm"), "next_pid": _int(p, pos, fmt, "next_pid"),
        "next_prio": _int(p, pos, fmt, "next_prio"),
    }


def _state_text(state: np.ndarray) -> _Coded:
    """prev_state letters, made once per distinct state number."""
    distinct, which = _distinct(state)
    return _Coded(pl.select(state_letters(pl.lit(pl.Series(distinct)))).to_series(), which)


def _sched_task(p, pos, fmt):
    return {"task_comm": _str(p, pos, fmt, "comm"), "task_pid": _int(p, pos, fmt, "pid"),
            "task_prio": _int(p, pos, fmt, "prio"), "orig_cpu": _int(p, pos, fmt, "orig_cpu"),
            "target_cpu": next((v for v in (_int(p, pos, fmt, n) for n in ("target_cpu", "dest_cpu"))
                                if v is not None), None)}


def _first_of(fmt: EventFormat, names: tuple[str, ...]) -> Field | None:
    """The first field (in record order, as the text prints them) with one of `names`."""
    return next((f for f in fmt.own_fields if f.name in names and not f.is_array), None)


def _sys_enter(p, pos, fmt):
    fd, count = _first_of(fmt, ("fd", "epfd")), _first_of(fmt, ("count", "len", "size", "maxevents", "vlen"))
    return {"fd": None if fd is None else read_field_ints(p, pos, fd),
            "count": None if count is None else read_field_ints(p, pos, count)}


def _sys_exit(p, pos, fmt):
    return {"ret": _int(p, pos, fmt, "ret")}


def _is_int(f: Field) -> bool:
    return not f.is_array and f.size in (1, 2, 4, 8)


def _field_values(p: Pages, pos: np.ndarray, fields: tuple[Field, ...]) -> list[np.ndarray | pl.Series]:
    """Each field of every record as the text prints it: strings as they are (Series), integers
    (numpy; a u64 as unsigned; all of them read in one pass), other arrays in hex (Series)."""
    ints = [f for f in fields if _is_int(f) and not f.is_text]
    read = dict(zip(ints, read_ints(p, pos, ints))) if ints else {}
    values = []
    for f in fields:
        if f.is_text:
            values.append(_text(p, pos, f).values())
        elif f in read:
            values.append(read[f] if f.signed or f.size < 8 else read[f].view(np.uint64))
        else:
            values.append(pl.from_arrow(pa.array(read_field_bytes(p, pos, f))).bin.encode("hex"))
    return values


def _generic(p: Pages, pos: np.ndarray, fmt: EventFormat) -> dict:
    """`name=value ...` of every field, for events without typed columns. Records repeat (the
    same flags, devices, sizes): the text is made once per distinct record content."""
    if not fmt.own_fields:
        return {"fields": _Coded(pl.Series([""]), np.zeros(len(pos), dtype=np.uint32))}
    which, first = distinct_keys(p.data, *_content_spans(p, pos, fmt.own_fields), cut_at_nul=False)
    return {"fields": _Coded(_fields_text(p, pos[first], fmt), which)}


def _content_spans(p: Pages, pos: np.ndarray, fields: tuple[Field, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Each record's own fields as byte spans (start and length rows): the fixed part, then each
    dynamic array's content, so records with equal spans have equal field values."""
    low = min(f.offset for f in fields)
    fixed = (pos + low, np.full(len(pos), max(f.offset + f.size for f in fields) - low, dtype=np.int64))
    starts, lengths = zip(fixed, *(field_span(p, pos, f) for f in fields if f.is_dynamic))
    return np.stack(starts), np.stack(lengths)


#: Up to this many records, `name=value` text is joined in Python: a query's fixed cost is more.
_FEW_RECORDS = 64


def _fields_text(p: Pages, pos: np.ndarray, fmt: EventFormat) -> pl.Series:
    """The `name=value ...` text of each record, joined in one query over all fields (a query
    per field costs more than the joining itself)."""
    fields = fmt.own_fields
    values = _field_values(p, pos, fields)
    if len(pos) <= _FEW_RECORDS:
        rows = zip(*(v.tolist() if isinstance(v, np.ndarray) else v.to_list() for v in values))
        return pl.Series([" ".join(f"{f.name}={v}" for f, v in zip(fields, row)) for row in rows], dtype=pl.String)
    parts = [part for i, f in enumerate(fields)
             for part in (pl.lit(f"{' ' if i else ''}{f.name}="), pl.col(str(i)).cast(pl.String))]
    return pl.DataFrame({str(i): v for i, v in enumerate(values)}).select(pl.concat_str(parts)).to_series()


_Extractor = Callable[[Pages, np.ndarray, EventFormat], dict]


def _extractor(fmt: EventFormat) -> _Extractor:
    """The typed columns an event gets, chosen by name as the text readers choose them."""
    name = fmt.name
    by_name: dict[str, _Extractor] = {
        "irq_handler_entry": _irq_entry, "irq_handler_exit": _irq_exit, "napi_poll": _napi,
        **dict.fromkeys(("softirq_raise", "softirq_entry", "softirq_exit"), _softirq),
        **dict.fromkeys(("netif_receive_skb", "netif_rx", "net_dev_xmit"), _net),
        "sched_switch": _sched_switch,
        **dict.fromkeys(("sched_wakeup", "sched_waking", "sched_migrate_task"), _sched_task),
    }
    if name in by_name:
        return by_name[name]
    if fmt.system == "irq_vectors" or name in {f"{v}_{e}" for v in VECTOR_HANDLERS for e in ("entry", "exit")}:
        return _vector
    if name.startswith("sys_enter_"):
        return _sys_enter
    if name.startswith("sys_exit_"):
        return _sys_exit
    return _generic


def _masked(values: np.ndarray, valid: np.ndarray) -> pl.Series:
    """A Series of numeric `values`, null where `valid` is not set: the values and a validity
    bitmap handed over as Arrow buffers, without a copy (Polars' `set` to null copied the
    values and made a mask Series of every row)."""
    if valid.all():
        return pl.Series(values)
    values = np.ascontiguousarray(values)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pl.Series(_ArrowStream(pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                                        [bitmap, pa.py_buffer(values)])))


_SOFTIRQS = pl.Series([*SOFTIRQ_NAMES, None], dtype=pl.Categorical)  # an unknown vector: null


def _flags(flags: pl.Series, preempt: pl.Series) -> dict[str, pl.Series]:
    """The irq-info columns, bit by bit as the kernel prints its flags letters (null where the
    flags are: a lost-events row). Made in one Polars query: numpy would fill a byte array per
    bit test, fresh memory paid in page faults on the first read."""
    def bit(mask: int) -> pl.Expr:
        return (pl.col("flags") & pl.lit(mask, pl.UInt8)) != 0

    return pl.DataFrame({"flags": flags, "preempt": preempt}).select(
        irqs_off=bit(_IRQS_OFF), bh_off=bit(_BH_OFF), need_resched=bit(_NEED_RESCHED | _RESCHED_LAZY | _PREEMPT_RESCHED),
        in_hardirq=bit(_HARDIRQ), in_softirq=bit(_SOFTIRQ) & ~bit(_NMI), in_nmi=bit(_NMI),
        preempt_depth=(pl.col("preempt") & pl.lit(0xF, pl.UInt8)).cast(pl.Int8)).to_dict()


def _common(pages: Pages, rec: Records, formats: FormatTable) -> dict[str, np.ndarray]:
    sample = formats.any()
    need = ("common_type", "common_flags", "common_preempt_count", "common_pid")
    fields = {n: sample.field(n) for n in need} if sample else {}
    if not fields or any(f is None for f in fields.values()):
        raise ValueError("event formats lack the common fields (common_type, common_pid, ...)")
    if any(f.size not in (1, 2, 4, 8) for f in fields.values()):
        raise ValueError("event formats give a common field a size other than 1, 2, 4 or 8 bytes")
    # Read as the types kept (an event id fits an int32 unless its field is wider than 2 bytes).
    kinds = [np.int32 if fields["common_type"].size <= 2 else np.int64, np.uint8, np.uint8, np.int32]
    values = dict(zip(fields, read_ints(pages, rec.pos, list(fields.values()), kinds)))
    return {"tid": values["common_pid"], "type": values["common_type"], "flags": values["common_flags"],
            "preempt": values["common_preempt_count"]}


@dataclass
class _Rows:
    """Where every record and every lost-events marker goes in the time-ordered table."""

    ts: np.ndarray  # of every row
    record_row: np.ndarray | None  # the row of each record (ascending); None: no marker, record i is row i
    marker_row: np.ndarray  # the row of each lost-events marker (in the order of Records.missed_pages)

    @property
    def count(self) -> int:
        return len(self.ts)

    @classmethod
    def records_alone(cls, ts: np.ndarray) -> _Rows:
        """The rows of a table without lost-events markers: record i is row i."""
        return cls(ts=ts, record_row=None, marker_row=np.zeros(0, np.int64))


def _time_order(pages: Pages, rec: Records) -> tuple[_Rows, np.ndarray]:
    """Rows in time order, and the page-order index of each record in time order: a record
    before another of the same time keeps its place (page order), and a lost-events marker
    comes just before the first record of the page that reported the loss. Each CPU's pages are
    already in time order, so a stable sort on time alone merges these sorted runs."""
    if not len(rec.missed_pages):  # no loss reported: the records alone
        order = np.argsort(rec.ts, kind="stable")
        return _Rows.records_alone(rec.ts[order]), order
    after = np.searchsorted(rec.page, rec.missed_pages)
    nearest = np.minimum(after, max(len(rec.page) - 1, 0))
    same_cpu = (after < len(rec.page)) & (pages.cpu[rec.page[nearest]] == pages.cpu[rec.missed_pages])
    marker_ts = np.where(same_cpu, rec.ts[nearest], rec.missed_ts)
    slot_ts = np.insert(rec.ts, after, marker_ts)  # slots in page order, each marker before its record
    is_marker = np.insert(np.zeros(len(rec.ts), dtype=bool), after, True)
    order = np.argsort(slot_ts, kind="stable")
    marker_at = is_marker[order]
    record_of_slot = np.cumsum(~is_marker) - 1
    marker_row = np.empty(len(after), dtype=np.int64)  # in the order of rec.missed_pages
    marker_row[(np.cumsum(is_marker) - 1)[order[marker_at]]] = np.flatnonzero(marker_at)
    return (_Rows(ts=slot_ts[order], record_row=np.flatnonzero(~marker_at), marker_row=marker_row),
            record_of_slot[order[~marker_at]])


def _in_time_order(pages: Pages) -> tuple[Records, _Rows]:
    """Every record, ordered as the table's rows hold them, and the rows. Usually walked straight
    into time order (pages.walk_in_time_order), else walked in page order and sorted. The order
    is dropped here, and no row number is made for a table of records alone: on the first read
    of a process every array is fresh memory, paid in page faults."""
    rec = walk_in_time_order(pages)
    if rec is not None:
        return rec, _Rows.records_alone(rec.ts)
    rec = walk(pages)
    if not len(rec.pos):  # no record: no table (and no record to place a marker before)
        return rec, _Rows.records_alone(rec.ts)
    rows, order = _time_order(pages, rec)
    ts = rows.ts if rows.record_row is None else rows.ts[rows.record_row]  # the records' rows, no markers
    return Records(page=rec.page[order], pos=rec.pos[order], ts=ts, length=rec.length[order],
                   missed_pages=rec.missed_pages,
                   missed_counts=rec.missed_counts, missed_ts=rec.missed_ts), rows


def _numbers(count: int, pieces: list[tuple[np.ndarray, np.ndarray]], kind: np.dtype) -> pl.Series:
    """A numeric column of `count` rows of numpy type `kind` from (rows, values) pieces, null
    elsewhere; a value out of the type's range is null, as a non-strict cast makes it."""
    if len(pieces) == 1 and len(pieces[0][0]) == count and _fits(pieces[0][1], kind):
        return pl.Series(pieces[0][1].astype(kind, copy=False))  # every row, in order
    full = np.zeros(count, dtype=kind)
    valid = np.zeros(count, dtype=bool)
    for at, values in pieces:
        if _fits(values, kind):
            full[at] = values
            valid[at] = True
        else:
            bounds = np.iinfo(kind)
            fits = (values >= bounds.min) & (values <= bounds.max)
            full[at[fits]] = values[fits]
            valid[at[fits]] = True
    return _masked(full, valid)


def _fits(values: np.ndarray, kind: np.dtype) -> bool:
    """Every value is in the range of numpy type `kind`."""
    if kind.kind != "i" or kind.itemsize >= values.itemsize or not len(values):
        return True
    bounds = np.iinfo(kind)
    return bool(values.min() >= bounds.min and values.max() <= bounds.max)


#: A String column whose values fill fewer than one row in this many is scattered into nulls.
_SPARSE = 10


def _texts(count: int, pieces: list[tuple[np.ndarray, _Coded]], dtype: pl.DataType) -> pl.Series:
    """A text column of `count` rows from (rows, coded values) pieces (of different event types:
    their rows never overlap), null elsewhere: one gather of all the pieces' distinct values by
    one index. A String column of few rows (sched_switch's names among every event) is put at
    its rows of a null column instead: a gather by an index of every row wrote each row's string
    view (wide rows of the benchmark trace, its four such columns: ~17 ms each)."""
    distinct = pl.concat([coded.distinct.cast(dtype, strict=False) for _, coded in pieces], rechunk=True)
    offsets = np.cumsum([0, *(len(coded.distinct) for _, coded in pieces)])
    if dtype == pl.String and sum(len(at) for at, _ in pieces) * _SPARSE < count:
        at = np.concatenate([at for at, _ in pieces])
        index = np.concatenate([coded.codes + np.uint32(offset) for (_, coded), offset in zip(pieces, offsets)])
        return pl.repeat(None, count, dtype=dtype, eager=True).scatter(at, distinct.gather(pl.Series(index)))
    where = np.zeros(count, dtype=np.uint32)
    valid = np.zeros(count, dtype=bool)
    for (at, coded), offset in zip(pieces, offsets):
        where[at] = coded.codes + np.uint32(offset)
        valid[at] = True
    return distinct.gather(_masked(where, valid))


class _ArrowStream:
    """An Arrow array offered to Polars as an Arrow PyCapsule stream, taken without a copy: a
    pyarrow array given as such imports pyarrow.compute (~0.11 s on a process's first)."""

    def __init__(self, array: pa.Array) -> None:
        self.array = array

    def __arrow_c_stream__(self, requested_schema=None):
        return pa.chunked_array([self.array]).__arrow_c_stream__(requested_schema)


def _numpy_type(column: str, values: np.ndarray) -> np.dtype:
    """The numpy type of a table column (the schema's, else the values' own)."""
    dtype = EVENT_SCHEMA.get(column)
    return values.dtype if dtype is None else pl.Series(dtype=dtype).to_numpy().dtype


#: The family (kptrace.schema.FAMILIES) whose table an extractor's columns go to.
_FAMILY_OF = {_irq_entry: "irq", _irq_exit: "irq", _vector: "vectors", _softirq: "softirq", _napi: "net", _net: "net",
              _sched_switch: "sched_switch", _sched_task: "wakeups", _sys_enter: "syscalls", _sys_exit: "syscalls",
              _generic: "other"}

_Piece = tuple[np.ndarray, dict[str, "np.ndarray | _Coded"]]  # (table rows, values of each column there)


def _family_frame(pieces: list[_Piece], placed: tuple[np.ndarray, list[np.ndarray]] | None = None) -> pl.DataFrame:
    """One family's table from the pieces of its event types: their rows in ascending order
    (`row`), each column null on the rows of an event type that lacks it. `placed`: those rows
    (uint32) and where each piece's rows land among them, when known (_placed_families); else
    found by a sort."""
    if placed is None:
        rows = np.concatenate([at for at, _ in pieces])
        order = np.argsort(rows, kind="stable")
        place = np.empty(len(rows), dtype=np.int64)  # where each piece's row lands in the table
        place[order] = np.arange(len(rows))
        starts = np.cumsum([0, *(len(at) for at, _ in pieces)])
        placed = rows[order].astype(np.uint32), [place[start:start + len(at)] for (at, _), start in zip(pieces, starts)]
    rows, places = placed
    columns: dict[str, list] = {}
    for (_, values), where in zip(pieces, places):
        for column, value in values.items():
            columns.setdefault(column, []).append((where, value))
    out = {ROW: pl.Series(rows)}
    for column, parts in columns.items():
        sample = parts[0][1]
        out[column] = (_texts(len(rows), parts, held_type(column)) if isinstance(sample, _Coded)
                       else _numbers(len(rows), parts, _numpy_type(column, sample)))
    return pl.DataFrame(out)


@dataclass
class _Grouping:
    """Each record's type and the family each type's piece went to: what places the family
    tables' rows without a sort (_placed_families)."""

    kind: np.ndarray  # each record's type (uint32)
    bounds: np.ndarray  # grouped's: type k's records are its order[bounds[k]: bounds[k + 1]]
    family: list[str | None]  # of each type (None: no piece)
    record_row: np.ndarray | None  # _Rows'


def _held_columns(pages: Pages, rec: Records, rows: _Rows, formats: FormatTable
                  ) -> tuple[dict[str, pl.Series], dict[str, list[_Piece]], _Grouping]:
    """The core columns of every record (`rec` in time order) at full length, each family's
    pieces (only the rows of a family get that family's columns), and how they were grouped."""
    common = _common(pages, rec, formats)
    types = common.pop("type")
    only_records = rows.record_row is None
    core = {name: pl.Series(values) if only_records else _numbers(rows.count, [(rows.record_row, values)], values.dtype)
            for name, values in common.items()}
    core.update(_flags(core.pop("flags"), core.pop("preempt")))
    ids, kind = _distinct(types)  # kind: each record's type, as an index into ids
    fmts = [formats.get(int(ident)) for ident in ids]
    by_type = grouped(pages, rec, kind, len(ids))
    bounds = by_type.bounds
    records = [by_type.order[bounds[i]: bounds[i + 1]] for i in range(len(ids))]

    # One type after another: a pool of threads gained nothing (same wall time, measured side by
    # side): the many short steps of each type hold the GIL.
    extracted = [{} if fmt is None else _extractor(fmt)(by_type.pages, by_type.start[bounds[i]: bounds[i + 1]], fmt)
                 for i, fmt in enumerate(fmts)]
    families: dict[str, list[_Piece]] = {}
    family_of: list[str | None] = [None] * len(ids)
    for i, (fmt, at, out) in enumerate(zip(fmts, records, extracted)):
        values = {c: v for c, v in out.items() if v is not None}
        if values:
            family_of[i] = _FAMILY_OF[_extractor(fmt)]
            families.setdefault(family_of[i], []).append((at if only_records else rows.record_row[at], values))
    names = [fmt.name if fmt else f"unknown_event_{ident}" for fmt, ident in zip(fmts, ids)]
    systems = [fmt.system if fmt else "unknown" for fmt in fmts]
    if only_records:
        where = pl.Series(kind)
    else:
        where = np.full(rows.count, len(ids), dtype=np.uint32)  # a lost-events row: the last label
        where[rows.record_row] = kind
        where = pl.Series(where)
    for column, labels in (("event", names), ("subsystem", systems)):
        labels = pl.Series([*labels, "lost_events" if column == "event" else "kptrace"], dtype=pl.Categorical)
        core[column] = labels.gather(where)
    return core, families, _Grouping(kind, bounds, family_of, rows.record_row)


def _placed_families(grouping: _Grouping) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """For each family of event types, its table's rows (uint32, ascending) and where each of
    its pieces' rows land among them, in one compiled pass over the records (pages.family_places):
    a stable sort of each family's rows took a fresh array per step."""
    names = [f.name for f in FAMILIES]
    code = np.array([NO_FAMILY if f is None else names.index(f) for f in grouping.family], dtype=np.uint8)
    row, row_bounds, place = family_places(grouping.kind, grouping.bounds, code, len(names))
    placed = {}
    for f, name in enumerate(names):
        types = [k for k, family in enumerate(grouping.family) if family == name]
        if types:
            rows = row[row_bounds[f]: row_bounds[f + 1]]
            rows = rows if grouping.record_row is None else grouping.record_row[rows].astype(np.uint32)
            placed[name] = rows, [place[grouping.bounds[k]: grouping.bounds[k + 1]] for k in types]
    return placed


def _comm(tid: np.ndarray, null: np.ndarray, comms: dict[int, str], dtype: pl.DataType) -> pl.Series:
    """Task names as trace-cmd prints them: saved cmdlines, `<idle>` for 0, else `<...>`;
    each distinct task looked up once."""
    distinct, which = _distinct(tid)
    names = pl.Series(["<idle>" if t == 0 else comms.get(t, "<...>") for t in distinct.tolist()], dtype=dtype)
    return names.gather(_masked(which, ~null))


@dataclass
class _Decoded:
    """A capture's rows before they are held: the core columns at full length (the task name
    in the type asked for), and each family's pieces (rows, values)."""

    core: dict[str, pl.Series | np.ndarray]
    families: dict[str, list[_Piece]]
    count: int
    grouping: _Grouping


def _decoded(capture: Capture, names: pl.DataType) -> _Decoded | None:
    """Every record of every buffer, in time order: decode_table's parts (None when the capture
    holds no record or no format); `names`, the type of the task name column."""
    pages = join_pages([blob for _, blobs in capture.buffers for blob in blobs], capture.header, capture.byte_order)
    if not len(capture.formats):
        return None
    rec, rows = _in_time_order(pages)
    if not len(rec.pos):
        return None
    core, families, grouping = _held_columns(pages, rec, rows, capture.formats)
    if rows.record_row is None:
        cpu = pages.cpu[rec.page]
    else:
        cpu = np.empty(rows.count, dtype=np.int16)
        cpu[rows.record_row] = pages.cpu[rec.page]
        cpu[rows.marker_row] = pages.cpu[rec.missed_pages]
    marker = np.zeros(rows.count, dtype=bool)
    marker[rows.marker_row] = True
    counted = rec.missed_counts >= 0
    if counted.any():
        families["counters"] = [(rows.marker_row[counted], {"value": rec.missed_counts[counted]})]
    comm = _comm(core["tid"].fill_null(0).to_numpy(), marker, capture.comms, names)
    return _Decoded({"ts": rows.ts, "cpu": cpu, "tid": core.pop("tid"), "comm": comm, **core}, families, rows.count,
                    grouping)


def decode_table(capture: Capture) -> EventTable | None:
    """Every record of every buffer, in time order, held as kptrace.read.table holds events: a
    core of what every record has, and per family only its records' typed columns (None when
    the capture holds no record or no format).

    Each core column is built once at its full length; each event type's values are gathered
    from the pages and put straight at their rows of their family's table.
    """
    decoded = _decoded(capture, held_type("comm"))
    if decoded is None:
        return None
    held = pl.DataFrame(decoded.core)
    placed = _placed_families(decoded.grouping)  # the counters' rows (lost events) are not a type's: sorted
    return EventTable(held.select([c for c in CORE_COLUMNS if c in held.columns]),
                      {f.name: _family_frame(decoded.families[f.name], placed.get(f.name))
                       for f in FAMILIES if f.name in decoded.families})


def decode(capture: Capture) -> pl.DataFrame:
    """decode_table's records as the wide reader rows (the schema's columns, `seq` numbering
    the time order, `ts_resolution_ns`), for readers that handle rows (a capture's windows).
    Each typed column is put straight at its rows of the whole table, not first into its family's
    table and from there into the wide one (wide_rows)."""
    decoded = _decoded(capture, EVENT_SCHEMA["comm"])
    if decoded is None:
        return pl.DataFrame()
    pieces: dict[str, list] = {}
    for family in decoded.families.values():
        for at, values in family:
            for column, value in values.items():
                pieces.setdefault(column, []).append((at, value))
    count = decoded.count
    columns = {}
    for column, dtype in EVENT_SCHEMA.items():
        parts = pieces.get(column)
        if column in decoded.core:
            columns[column] = pl.Series(decoded.core[column]).cast(dtype)
        elif not parts:
            columns[column] = pl.repeat(None, count, dtype=dtype, eager=True)
        elif isinstance(parts[0][1], _Coded):
            columns[column] = _texts(count, parts, dtype)
        else:
            columns[column] = _numbers(count, parts, _numpy_type(column, parts[0][1]))
    return pl.DataFrame(columns).with_columns(seq=pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
                                              ts_resolution_ns=pl.lit(1, pl.Int64))


def wide_rows(table: EventTable) -> pl.DataFrame:
    """A binary reader's table as wide reader rows: the schema's columns, `seq` and `ts_resolution_ns`."""
    return table.rows_at(np.arange(table.height)).with_columns(seq=pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
                                                               ts_resolution_ns=pl.lit(1, pl.Int64))
