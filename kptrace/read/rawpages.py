"""Raw tracefs ring-buffer pages, as the kptrace collector saves them in a bundle.

The layout, inside the bundle's `raw/` directory:

    raw/cpuN.raw                    pages read from the instance's per_cpu/cpuN/trace_pipe_raw, concatenated
    raw/format/SYSTEM/EVENT/format  copies of the instance's events/SYSTEM/EVENT/format
    raw/header_page, raw/header_event  copies of events/header_page and events/header_event

There are no saved command lines in this layout, so task names are `<...>` (the idle task
`<idle>`); the page data is the kernel's own, in the machine's byte order.
"""

from __future__ import annotations

import mmap
import re
import sys
from pathlib import Path

from kptrace.errors import TraceError
from kptrace.read.binary import Capture, parse_cmdlines
from kptrace.read.formats import FormatTable, check_header_event, parse_header_page

_CPU_FILE = re.compile(r"^cpu(\d+)\.raw$")


def is_raw_dir(path: Path) -> bool:
    return path.is_dir() and (path / "header_page").is_file() and any(path.glob("cpu*.raw"))


def _formats(directory: Path) -> FormatTable:
    formats = FormatTable()
    for file in sorted(directory.glob("format/*/*/format")):
        formats.add(file.read_text(errors="replace"), file.parent.parent.name)
    return formats


def _mapped(file: Path) -> mmap.mmap | bytes:
    """A file's bytes as a read-only memory map (an empty file cannot be mapped)."""
    with open(file, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if handle.seek(0, 2) else b""


def read_raw_dir(directory: Path, mapped: bool = False) -> Capture:
    """A `raw/` directory of a bundle (or any directory in that layout). `mapped` memory-maps the
    page files instead of reading them, for a reader that decodes a window of pages at a time."""
    try:
        header = parse_header_page((directory / "header_page").read_text())
        check_header_event((directory / "header_event").read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(directory, f"raw pages: {exc}") from None
    formats = _formats(directory)
    if not formats:
        raise TraceError(directory, "raw pages: no event formats under format/SYSTEM/EVENT/format")
    cpus = sorted((int(m[1]), f) for f in directory.glob("cpu*.raw") if (m := _CPU_FILE.match(f.name)))
    blobs = [(cpu, _mapped(f) if mapped else f.read_bytes()) for cpu, f in cpus]
    warnings = [f"{f.name}: {len(b) % header.page_size} bytes after the last whole page ignored"
                for (_, f), (_, b) in zip(cpus, blobs) if len(b) % header.page_size]
    cmdlines = directory / "saved_cmdlines"
    comms = parse_cmdlines(cmdlines.read_text(errors="replace")) if cmdlines.is_file() else {}
    order = "<" if sys.byteorder == "little" else ">"
    return Capture(byte_order=order, header=header, formats=formats, comms=comms,
                   buffers=[("", blobs)], warnings=warnings)
