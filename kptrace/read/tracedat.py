"""trace-cmd's `trace.dat`, versions 6 and 7, read without trace-cmd.

Both versions hold the same things: the page and event header descriptions, every event's
format, saved command lines, options, and for each buffer instance its per-CPU ring-buffer
pages. Version 6 stores them one after another; version 7 stores them in sections found
through options, optionally compressed (zstd or zlib), the page data in compressed chunks.
The pages themselves are decoded by `kptrace.read.binary`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from kptrace.read.binary import Capture, parse_cmdlines
from kptrace.read.formats import FormatTable, check_header_event, parse_header_page
from kptrace.read.pages import SLACK, at_once

MAGIC = b"\x17\x08\x44tracing"

# Option ids (trace-cmd.dat.v6/v7(5)).
_DONE, _BUFFER = 0, 3
_HEADER_INFO, _EVENT_FORMATS, _CMDLINES = 16, 18, 21
_COMPRESSED = 1


def is_tracedat(head: bytes) -> bool:
    return head.startswith(MAGIC)


#: CPU ids are kept as Int16 (kptrace.schema).
_MAX_CPU = (1 << 15) - 1


class TraceDatError(ValueError):
    """The file is not a trace.dat this reader understands, or is cut short."""


_NUMBER_CODES = {2: "H", 4: "I", 8: "Q"}


@dataclass
class _Cursor:
    """Reads numbers in the file's byte order and NUL-terminated strings, from a position."""

    data: bytes
    pos: int
    order: str = "<"

    def take(self, n: int) -> bytes:
        start = self.skip(n)
        return self.data[start: self.pos]

    def skip(self, n: int) -> int:
        """Moves past n bytes without copying them; returns where they start."""
        if n < 0 or self.pos + n > len(self.data):
            raise TraceDatError(f"file ends inside a record at byte {self.pos} (wanted {n} more bytes)")
        self.pos += n
        return self.pos - n

    def num(self, size: int) -> int:
        return struct.unpack_from(self.order + _NUMBER_CODES[size], self.data, self.skip(size))[0]

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise TraceDatError(f"unterminated string at byte {self.pos}")
        text = self.data[self.pos: end].decode("utf-8", "replace")
        self.pos = end + 1
        return text

    def at(self, pos: int) -> _Cursor:
        return _Cursor(self.data, pos, self.order)


def _decompressor(name: str):
    """(packed bytes, out) -> bytes written: inflates into the writable buffer `out`, at most
    its length (the stated unpacked size); a damaged chunk is a TraceDatError. zstd writes in
    place, so the page data of every chunk is written once, where it stays."""
    if name == "zstd":
        zstd = zstandard.ZstdDecompressor()  # one context for every chunk

        def inflate(chunk, out: memoryview) -> int:
            reader, done = zstd.stream_reader(chunk), 0
            while done < len(out) and (got := reader.readinto(out[done:])):
                done += got
            if done == len(out) and reader.read(1):
                raise zstandard.ZstdError(f"more than the {len(out)} bytes stated")
            return done
    elif name == "zlib":
        def inflate(chunk, out: memoryview) -> int:
            data = zlib.decompress(chunk)
            if len(data) > len(out):
                raise zlib.error(f"{len(data)} bytes where {len(out)} were stated")
            out[: len(data)] = data
            return len(data)
    else:
        raise TraceDatError(f"compression {name!r} is not supported (zstd, zlib, none are)")

    def checked(chunk, out: memoryview) -> int:
        try:
            return inflate(chunk, out)
        except (zstandard.ZstdError, zlib.error) as exc:
            raise TraceDatError(f"damaged {name} data ({exc})") from None
    return checked


@dataclass
class _Meta:
    """Everything but the page data, collected from either version's layout."""

    header_page: str = ""
    header_event: str = ""
    formats: FormatTable | None = None
    cmdlines: str = ""


def _header_info(c: _Cursor, meta: _Meta) -> None:
    for name in ("header_page", "header_event"):
        if c.cstr() != name:
            raise TraceDatError(f"expected {name} at byte {c.pos}")
        setattr(meta, name, c.take(c.num(8)).decode("utf-8", "replace"))


def _skip_ftrace_formats(c: _Cursor) -> None:
    for _ in range(c.num(4)):
        c.skip(c.num(8))


def _event_formats(c: _Cursor, meta: _Meta) -> None:
    formats = FormatTable()
    for _ in range(c.num(4)):
        system = c.cstr()
        for _ in range(c.num(4)):
            formats.add(c.take(c.num(8)).decode("utf-8", "replace"), system)
    meta.formats = formats


def _cpu_table(c: _Cursor, cpus: int) -> list[tuple[int, int, int]]:
    """(cpu, offset, size) for each CPU, as version 6 lists them after `flyrecord`."""
    if c.take(10) != b"flyrecord\0":
        raise TraceDatError(f"expected flyrecord data at byte {c.pos - 10}")
    return [(cpu, c.num(8), c.num(8)) for cpu in range(cpus)]


def _v6(c: _Cursor) -> tuple[_Meta, list[tuple[str, list[tuple[int, bytes]]]]]:
    meta = _Meta()
    _header_info(c, meta)
    _skip_ftrace_formats(c)
    _event_formats(c, meta)
    c.skip(c.num(4))  # kallsyms
    c.skip(c.num(4))  # trace_printk formats
    meta.cmdlines = c.take(c.num(8)).decode("utf-8", "replace")
    cpus = c.num(4)
    tables = []
    if c.data[c.pos: c.pos + 10] == b"options  \0":
        c.take(10)
        while (option := c.num(2)) != _DONE:
            body = c.at(c.pos)
            size = c.num(4)
            c.skip(size)
            if option == _BUFFER:
                body.num(4)
                offset, name = body.num(8), body.cstr()
                tables.append((name, _cpu_table(c.at(offset), cpus)))
    if c.data[c.pos: c.pos + 10] == b"latency  \0":
        raise TraceDatError("holds a latency-tracer text trace, not ring-buffer pages")
    tables.insert(0, ("", _cpu_table(c, cpus)))
    buffers = [(name, [(cpu, _span(c, off, size)) for cpu, off, size in table if size]) for name, table in tables]
    return meta, buffers


def _span(c: _Cursor, offset: int, size: int) -> bytes:
    """`size` bytes of page data at `offset`, which must all be in the file."""
    return c.at(offset).take(size)


def _section(c: _Cursor, inflate) -> tuple[int, _Cursor]:
    """A version 7 section's id and its (decompressed) body."""
    ident, flags = c.num(2), c.num(2)
    c.num(4)  # description string id
    size = c.num(8)
    if not flags & _COMPRESSED:
        return ident, c.at(c.pos)
    packed, unpacked = c.num(4), c.num(4)
    body = bytearray(unpacked)
    return ident, _Cursor(bytes(body[: inflate(c.take(packed), memoryview(body))]), 0, c.order)


def _chunk_list(c: _Cursor) -> list[tuple[int, int, int]]:
    """Version 7 compressed page data: a count, then (packed size, unpacked size, bytes) chunks;
    (file offset, packed size, unpacked size) of each. Both sizes are read by one precompiled
    struct: two cursor calls per chunk cost ~3 ms on the benchmark trace's 1324 chunks."""
    sizes, chunks = struct.Struct(c.order + "II"), []
    for _ in range(c.num(4)):
        packed, unpacked = sizes.unpack_from(c.data, c.skip(8))
        chunks.append((c.skip(packed), packed, unpacked))
    return chunks


def _inflate_side_by_side(c: _Cursor, per_cpu: list[list[tuple[int, int, int]]], compression: str) -> list[memoryview]:
    """Each CPU's chunks inflated into one array, the CPUs side by side and SLACK zero bytes
    after, so the page reader takes them as they lie (pages.join_pages); a chunk shorter than
    stated leaves no gap in its CPU's pages. The chunks are inflated in two halves at once, each
    at its stated place (zstd lets go of the GIL: 1324 chunks, 54 MB, took 0.05-0.09 s in one
    thread on the benchmark trace)."""
    stated = [sum(unpacked for _, _, unpacked in chunks) for chunks in per_cpu]
    out = np.empty(sum(stated) + SLACK, dtype=np.uint8)
    out[sum(stated):] = 0
    places = np.cumsum([0, *(unpacked for chunks in per_cpu for _, _, unpacked in chunks)]).tolist()
    spans = [(start, packed, at, unpacked) for (start, packed, unpacked), at in
             zip((chunk for chunks in per_cpu for chunk in chunks), places)]
    middle = int(np.searchsorted(places, places[-1] / 2))
    whole, data = memoryview(out), memoryview(c.data)

    def inflate_all(part: list[tuple[int, int, int, int]]) -> list[int]:
        inflate = _decompressor(compression)  # a context of its own: one is not shared by threads
        return [inflate(data[start: start + packed], whole[at: at + unpacked]) for start, packed, at, unpacked in part]

    halves = at_once(lambda: inflate_all(spans[:middle]), lambda: inflate_all(spans[middle:]))
    done = [n for half in halves for n in half]
    blobs, chunk, at = [], 0, 0
    for chunks, size in zip(per_cpu, stated):
        end = at
        for place, n in zip(places[chunk: chunk + len(chunks)], done[chunk: chunk + len(chunks)]):
            if place != end:  # after a short chunk: moved up to close the gap
                out[end: end + n] = out[place: place + n]
            end += n
        blobs.append(whole[at: end])
        chunk, at = chunk + len(chunks), at + size
    return blobs


def _v7(c: _Cursor) -> tuple[_Meta, list[tuple[str, list[tuple[int, bytes]]]]]:
    compression = c.cstr()
    c.cstr()  # compression library version
    inflate = None if compression == "none" else _decompressor(compression)  # for the sections
    meta, buffers = _Meta(), []
    readers = {_HEADER_INFO: _header_info, _EVENT_FORMATS: _event_formats,
               _CMDLINES: lambda s, m: setattr(m, "cmdlines", s.take(s.num(8)).decode("utf-8", "replace"))}
    next_options = c.num(8)
    while next_options:
        _, options = _section(c.at(next_options), inflate)
        next_options = 0
        while True:
            option, size = options.num(2), options.num(4)
            body = options.at(options.pos)
            options.skip(size)
            if option == _DONE:
                next_options = body.num(8)
                break
            if option in readers:
                _, section = _section(c.at(body.num(8)), inflate)
                readers[option](section, meta)
            elif option == _BUFFER:
                buffers.append(_v7_buffer(c, body, None if inflate is None else compression))
    return meta, buffers


def _v7_buffer(c: _Cursor, body: _Cursor, compression: str | None) -> tuple[str, list[tuple[int, bytes]]]:
    """A BUFFER option: offset of its section, instance name, clock, page size, then for each
    CPU its id and the offset and size of its pages (compressed size when the section is;
    `compression` None when the file's sections are not)."""
    section_offset, name = body.num(8), body.cstr()
    body.cstr()  # trace clock
    body.num(4)  # page size
    compressed = compression is not None and c.at(section_offset + 2).num(2) & _COMPRESSED
    cpus = []
    for _ in range(body.num(4)):
        cpu, offset, size = body.num(4), body.num(8), body.num(8)
        if not size:
            continue
        if cpu > _MAX_CPU:
            raise TraceDatError(f"buffer {name!r} names CPU {cpu}, past any machine's (a damaged file)"[:200])
        cpus.append((cpu, _chunk_list(c.at(offset)) if compressed else _span(c, offset, size)))
    if compressed:
        blobs = _inflate_side_by_side(c, [chunks for _, chunks in cpus], compression)
        return name, list(zip([cpu for cpu, _ in cpus], blobs))
    return name, cpus


def read_tracedat(data: bytes) -> Capture:
    """Parse a whole trace.dat held in memory."""
    c = _Cursor(data, len(MAGIC))
    version = c.cstr()
    endian, long_size = c.take(2)
    c.order = ">" if endian else "<"
    c.num(4)  # page size (the header_page description gives the same)
    if version == "6":
        meta, buffers = _v6(c)
    elif version == "7":
        meta, buffers = _v7(c)
    else:
        raise TraceDatError(f"trace.dat version {version!r} is not supported (6 and 7 are)")
    if not meta.header_page or not meta.formats:
        raise TraceDatError("holds no page header description or no event formats")
    check_header_event(meta.header_event)
    return Capture(byte_order=c.order, header=parse_header_page(meta.header_page), formats=meta.formats,
                   comms=parse_cmdlines(meta.cmdlines), buffers=[b for b in buffers if b[1]],
                   header_texts={"header_page": meta.header_page, "header_event": meta.header_event})
