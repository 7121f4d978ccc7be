"""Typed event rows from binary ring-buffer pages, whatever file carried them.

A container reader (trace.dat, raw pages) hands over a `Capture`: the page bytes of every
per-CPU buffer and the kernel's format descriptions. This module walks all pages at once
(`kptrace.read.pages`), then reads each event type's fields with numpy gathers: the Python
loops here run once per event type or field, never once per record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kptrace.read.fields import VECTOR_HANDLERS, state_letters
from kptrace.read.formats import EventFormat, Field, FormatTable, PageHeader
from kptrace.read.pages import Pages, Records, join_pages, read_field_bytes, read_field_ints, walk
from kptrace.schema import SOFTIRQ_NAMES

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
    buffers: list[tuple[str, list[tuple[int, bytes]]]]  # (instance name, [(cpu, pages)])
    warnings: list[str] = field(default_factory=list)


def parse_cmdlines(text: str) -> dict[int, str]:
    """`saved_cmdlines`: `pid comm` per line."""
    comms = {}
    for line in text.splitlines():
        pid, _, comm = line.strip().partition(" ")
        if pid.isdigit():
            comms[int(pid)] = comm
    return comms


def _text(values: np.ndarray) -> pl.Series:
    """NUL-cut byte strings as text; invalid UTF-8 (a damaged record) decoded with U+FFFD."""
    raw = pl.Series(values)
    try:
        return raw.cast(pl.String)
    except pl.exceptions.PolarsError:
        decoded = {b: b.decode("utf-8", "replace") for b in raw.unique().to_list()}
        return raw.replace_strict(decoded, return_dtype=pl.String)


def _int(pages: Pages, pos: np.ndarray, fmt: EventFormat, name: str) -> np.ndarray | None:
    f = fmt.field(name)
    return read_field_ints(pages, pos, f) if f is not None and not f.is_array else None


def _str(pages: Pages, pos: np.ndarray, fmt: EventFormat, name: str) -> pl.Series | None:
    f = fmt.field(name)
    return _text(read_field_bytes(pages, pos, f)) if f is not None and f.is_text else None


def _irq_entry(p, pos, fmt):
    return {"irq": _int(p, pos, fmt, "irq"), "irq_name": _str(p, pos, fmt, "name")}


def _irq_exit(p, pos, fmt):
    ret = _int(p, pos, fmt, "ret")
    return {"irq": _int(p, pos, fmt, "irq"), "ret": None if ret is None else (ret != 0).astype(np.int64)}


def _vector(p, pos, fmt):
    return {"vector": _int(p, pos, fmt, "vector")}


def _softirq(p, pos, fmt):
    vec = _int(p, pos, fmt, "vec")
    names = None if vec is None else pl.Series(vec).replace_strict(
        dict(enumerate(SOFTIRQ_NAMES)), default=None, return_dtype=pl.String)
    return {"softirq_vec": vec, "softirq": names}


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
        "prev_state": None if state is None else pl.select(state_letters(pl.lit(pl.Series(state)))).to_series(),
        "next_comm": _str(p, pos, fmt, "next_comm"), "next_pid": _int(p, pos, fmt, "next_pid"),
        "next_prio": _int(p, pos, fmt, "next_prio"),
    }


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


def _generic(p: Pages, pos: np.ndarray, fmt: EventFormat) -> dict:
    """`name=value ...` of every field, for events without typed columns."""
    parts = []
    for f in fmt.own_fields:
        if f.is_text:
            value = _text(read_field_bytes(p, pos, f))
        elif f.is_array or f.size not in (1, 2, 4, 8):
            value = pl.Series(read_field_bytes(p, pos, f)).bin.encode("hex")
        else:
            ints = pl.Series(read_field_ints(p, pos, f))
            value = (ints if f.signed or f.size < 8 else ints.reinterpret(signed=False)).cast(pl.String)
        parts.append(pl.lit(f"{f.name}=") + pl.lit(value).fill_null(""))
    if not parts:
        return {"fields": pl.Series([""] * len(pos), dtype=pl.String)}
    return {"fields": pl.select(pl.concat_str(parts, separator=" ")).to_series()}


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


def _flags(flags: np.ndarray, preempt: np.ndarray) -> dict[str, np.ndarray]:
    """The irq-info columns, bit by bit as the kernel prints its flags letters."""
    return {
        "irqs_off": (flags & _IRQS_OFF) != 0,
        "bh_off": (flags & _BH_OFF) != 0,
        "need_resched": (flags & (_NEED_RESCHED | _RESCHED_LAZY | _PREEMPT_RESCHED)) != 0,
        "in_hardirq": (flags & _HARDIRQ) != 0,
        "in_softirq": ((flags & _SOFTIRQ) != 0) & ((flags & _NMI) == 0),
        "in_nmi": (flags & _NMI) != 0,
        "preempt_depth": (preempt & 0xF).astype(np.int8),
    }


def _common(pages: Pages, rec: Records, formats: FormatTable) -> dict[str, np.ndarray]:
    sample = formats.any()
    need = ("common_type", "common_flags", "common_preempt_count", "common_pid")
    fields = {n: sample.field(n) for n in need} if sample else {}
    if not fields or any(f is None for f in fields.values()):
        raise ValueError("event formats lack the common fields (common_type, common_pid, ...)")
    values = {n: read_field_ints(pages, rec.pos, f) for n, f in fields.items()}
    return {"ts": rec.ts, "cpu": pages.cpu[rec.page], "tid": values["common_pid"].astype(np.int32),
            "type": values["common_type"], **_flags(values["common_flags"], values["common_preempt_count"])}


_DTYPES = {"irq": pl.Int32, "vector": pl.Int32, "softirq_vec": pl.Int8, "napi_work": pl.Int32,
           "napi_budget": pl.Int32, "len": pl.Int32, "prev_pid": pl.Int32, "next_pid": pl.Int32,
           "prev_prio": pl.Int16, "next_prio": pl.Int16, "task_pid": pl.Int32, "task_prio": pl.Int16,
           "target_cpu": pl.Int16, "orig_cpu": pl.Int16, "fd": pl.Int64, "count": pl.Int64, "ret": pl.Int64}


def _by_type(pages: Pages, rec: Records, common: dict[str, np.ndarray], formats: FormatTable,
             ) -> tuple[pl.DataFrame, np.ndarray]:
    """Every record as a typed row, grouped by event type; and each row's record index."""
    types = common.pop("type")
    order = np.argsort(types, kind="stable")
    ids, starts = np.unique(types[order], return_index=True)
    bounds = np.append(starts, len(order))
    parts = []
    for i, ident in enumerate(ids):
        rows = order[bounds[i]: bounds[i + 1]]
        fmt = formats.get(int(ident))
        name, system = (fmt.name, fmt.system) if fmt else (f"unknown_event_{ident}", "unknown")
        columns = {k: v for k, v in _extractor(fmt)(pages, rec.pos[rows], fmt).items() if v is not None} if fmt else {}
        frame = pl.DataFrame({**{k: v[rows] for k, v in common.items()}, **columns})
        parts.append(frame.with_columns(
            [pl.col(c).cast(t, strict=False) for c, t in _DTYPES.items() if c in columns],
            event=pl.lit(name, pl.Categorical), subsystem=pl.lit(system, pl.Categorical)))
    return pl.concat(parts, how="diagonal_relaxed"), order


def _markers(pages: Pages, rec: Records) -> pl.DataFrame:
    """One `lost_events` row per page that follows a loss, dated by that page's first record."""
    m = rec.missed_pages
    after = np.searchsorted(rec.page, m)
    has_next = after < len(rec.page)
    nearest = np.minimum(after, max(len(rec.page) - 1, 0))
    same_cpu = (after < len(rec.page)) & (pages.cpu[rec.page[nearest]] == pages.cpu[m]) if len(rec.page) else after < 0
    ts = np.where(same_cpu, rec.ts[nearest] if len(rec.ts) else 0, rec.missed_ts)
    return pl.DataFrame({
        "key": after * 2, "ts": ts, "cpu": pages.cpu[m],
        "value": pl.Series(rec.missed_counts).replace(-1, None),
    }).with_columns(subsystem=pl.lit("kptrace", pl.Categorical), event=pl.lit("lost_events", pl.Categorical))


def _comm(tid: pl.Expr, comms: dict[int, str]) -> pl.Expr:
    """Task names as trace-cmd prints them: saved cmdlines, `<idle>` for 0, else `<...>`."""
    return (pl.when(tid.is_null()).then(pl.lit(None, pl.String)).when(tid == 0).then(pl.lit("<idle>"))
            .otherwise(tid.replace_strict(comms, default="<...>", return_dtype=pl.String)))


def decode(capture: Capture) -> pl.DataFrame:
    """Every record of every buffer as a typed row, in time order (`seq` numbers that order).

    Rows are built grouped by event type, then put in time order by one gather: a record
    before another of the same time keeps its place (page order), and a lost-events marker
    comes just before the first record of the page that reported the loss.
    """
    pages = join_pages([blob for _, blobs in capture.buffers for blob in blobs], capture.header, capture.byte_order)
    rec = walk(pages)
    if not len(capture.formats) or not len(rec.pos):
        return pl.DataFrame()
    common = _common(pages, rec, capture.formats)
    rows, record = _by_type(pages, rec, common, capture.formats)
    markers = _markers(pages, rec)
    ts = np.concatenate([rec.ts[record], markers["ts"].to_numpy()])
    key = np.concatenate([record * 2 + 1, markers["key"].to_numpy()])
    rows = pl.concat([rows, markers.drop("key")], how="diagonal_relaxed")
    return rows[np.lexsort((key, ts))].with_columns(
        seq=pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
        ts_resolution_ns=pl.lit(1, pl.Int64),
        comm=_comm(pl.col("tid"), capture.comms).cast(pl.Categorical),
        tgid=pl.lit(None, pl.Int32),
    )
