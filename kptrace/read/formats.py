"""The kernel's own descriptions of its binary trace data: event formats and the page header.

Every tracepoint describes its record in `events/SYSTEM/EVENT/format` (field name, offset,
size, signedness); the ring-buffer page header is described the same way in
`events/header_page`. Reading the layout from these files, rather than assuming it, is what
lets one reader take every tracepoint of every kernel, 32- or 64-bit, either endianness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
                    r"(?:\s*signed:(?P<signed>\d+);)?", re.MULTILINE)
_ARRAY = re.compile(r"\[(\d*)\]\s*$")


@dataclass(frozen=True)
class Field:
    """One field of a record: where it is and how to read it."""

    name: str
    type: str
    offset: int
    size: int
    signed: bool

    @property
    def is_dynamic(self) -> bool:
        """`__data_loc` (offset from the record start) or `__rel_loc` (from the field's end)."""
        return self.type.startswith(("__data_loc", "__rel_loc"))

    @property
    def is_text(self) -> bool:
        """A NUL-terminated string: a dynamic char array or a fixed `char name[N]`."""
        return "char" in self.type and ("[" in self.type or self.is_dynamic)

    @property
    def is_array(self) -> bool:
        return "[" in self.type or self.is_dynamic


@dataclass(frozen=True)
class EventFormat:
    """One tracepoint's record layout."""

    id: int
    system: str
    name: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def own_fields(self) -> tuple[Field, ...]:
        """The event's fields after the common ones every record starts with."""
        return tuple(f for f in self.fields if not f.name.startswith("common_"))


#: No field of a record, nor a ring-buffer page, comes near this many bytes; a format that says
#: otherwise is damaged (and numpy offsets computed from it would overflow).
_MAX_FIELD_BYTES = 1 << 20


def _field(match: re.Match) -> Field:
    offset, size = int(match["offset"]), int(match["size"])
    if not (0 <= offset < _MAX_FIELD_BYTES and 0 <= size < _MAX_FIELD_BYTES):
        raise ValueError(f"a field at offset {offset} of size {size}: past any record (a damaged format)"[:200])
    decl = match["decl"].strip()
    array = _ARRAY.search(decl)
    head = decl[: array.start()] if array else decl
    name = head.split()[-1].lstrip("*")
    type_ = head[: head.rstrip().rfind(name)].strip() + (array.group(0) if array else "")
    return Field(name=name, type=type_, offset=offset, size=size, signed=match["signed"] == "1")


def parse_format(text: str, system: str | None = None) -> EventFormat:
    """An `events/SYSTEM/EVENT/format` file; `system` when the file does not say it."""
    name = re.search(r"^name:\s*(\S+)", text, re.MULTILINE)
    ident = re.search(r"^ID:\s*(\d+)", text, re.MULTILINE)
    if not name or not ident:
        raise ValueError("not an event format (no name: or ID: line)")
    fields = tuple(_field(m) for m in _FIELD.finditer(text))
    return EventFormat(id=int(ident[1]), system=system or "unknown", name=name[1], fields=fields)


class FormatTable:
    """Event formats by id, parsed on first use: a trace.dat saves thousands, a trace uses few."""

    _ID = re.compile(r"^ID:\s*(\d+)", re.MULTILINE)

    def __init__(self) -> None:
        self._texts: dict[int, tuple[str, str]] = {}
        self._parsed: dict[int, EventFormat | None] = {}

    def add(self, text: str, system: str) -> None:
        if (ident := self._ID.search(text)) is not None:
            self._texts[int(ident[1])] = (system, text)

    def get(self, ident: int) -> EventFormat | None:
        if ident not in self._parsed:
            system, text = self._texts.get(ident, ("", ""))
            try:
                self._parsed[ident] = parse_format(text, system) if text else None
            except ValueError:
                self._parsed[ident] = None
        return self._parsed[ident]

    def texts(self) -> dict[int, tuple[str, str]]:
        """(system, format file text) by event id, as saved."""
        return dict(self._texts)

    def any(self) -> EventFormat | None:
        """Some parsable format (every one starts with the same common fields)."""
        return next((f for f in map(self.get, self._texts) if f is not None), None)

    def __len__(self) -> int:
        return len(self._texts)


@dataclass(frozen=True)
class PageHeader:
    """Where a ring-buffer page keeps its start time, its commit word and its records."""

    timestamp_offset: int
    commit_offset: int
    commit_size: int
    data_offset: int
    data_size: int

    @property
    def page_size(self) -> int:
        return self.data_offset + self.data_size


def parse_header_page(text: str) -> PageHeader:
    """`events/header_page`: the commit field's size is the kernel's long size."""
    fields = {f.name: f for f in map(_field, _FIELD.finditer(text))}
    missing = {"timestamp", "commit", "data"} - set(fields)
    if missing:
        raise ValueError(f"header_page lacks {', '.join(sorted(missing))}")
    if fields["commit"].size not in (4, 8) or fields["timestamp"].size != 8:
        raise ValueError(f"header_page: a {fields['commit'].size}-byte commit or {fields['timestamp'].size}-byte "
                         "timestamp (a kernel writes 4 or 8, and 8)")
    return PageHeader(fields["timestamp"].offset, fields["commit"].offset, fields["commit"].size,
                      fields["data"].offset, fields["data"].size)


def check_header_event(text: str) -> None:
    """The record header this reader knows: 5-bit type_len, 27-bit delta, types 29-31 special."""
    wanted = (r"type_len\s*:\s*5 bits", r"time_delta\s*:\s*27 bits", r"padding\s*:\s*type == 29",
              r"time_extend\s*:\s*type == 30")
    if not all(re.search(p, text) for p in wanted):
        raise ValueError("header_event describes a record header this reader does not know")
