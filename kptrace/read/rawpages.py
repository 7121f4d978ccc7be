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

import numpy as np

from kptrace.errors import TraceError
from kptrace.read.binary import Capture, parse_cmdlines
from kptrace.read.formats import FormatTable, check_header_event, parse_header_page
from kptrace.read.pages import SLACK

_CPU_FILE = re.compile(r"^cpu(\d+)\.raw$")


def is_raw_dir(path: Path) -> bool:
    return path.is_dir() and (path / "header_page").is_file() and any(path.glob("cpu*.raw"))


def _formats(directory: Path) -> FormatTable:
    formats = FormatTable()
    # Sorted by their parts, the order of the paths themselves (Path's own comparison cost ~20 ms
    # for the ~1,100 files of a tracefs).
    for file in sorted(directory.glob("format/*/*/format"), key=lambda path: path.parts):
        formats.add(file.read_text(errors="replace"), file.parent.parent.name)
    return formats


def _mapped(file: Path) -> mmap.mmap | bytes:
    """A file's bytes as a read-only memory map (an empty file cannot be mapped)."""
    with open(file, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if handle.seek(0, 2) else b""


def _read_end_to_end(files: list[Path]) -> list[memoryview]:
    """The files' bytes read into one array end to end, SLACK zero bytes after them, as views of
    it: the page reader takes them as they lie (pages.join_pages), where a bytes object per file
    was copied once more into one array (~40 ms for the benchmark trace's 54 MB)."""
    sizes = [file.stat().st_size for file in files]
    whole = np.empty(sum(sizes) + SLACK, dtype=np.uint8)
    whole[sum(sizes):] = 0
    views, at = [], 0
    for file, size in zip(files, sizes):
        with open(file, "rb") as handle:  # a file that shrank since: its view is shorter, then copied after all
            views.append(memoryview(whole)[at: at + handle.readinto(memoryview(whole)[at: at + size])])
        at += size
    return views


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
    files = [f for _, f in cpus]
    blobs = list(zip([cpu for cpu, _ in cpus], [_mapped(f) for f in files] if mapped else _read_end_to_end(files)))
    warnings = [f"{f.name}: {len(b) % header.page_size} bytes after the last whole page ignored"
                for (_, f), (_, b) in zip(cpus, blobs) if len(b) % header.page_size]
    cmdlines = directory / "saved_cmdlines"
    comms = parse_cmdlines(cmdlines.read_text(errors="replace")) if cmdlines.is_file() else {}
    order = "<" if sys.byteorder == "little" else ">"
    return Capture(byte_order=order, header=header, formats=formats, comms=comms,
                   buffers=[("", blobs)], warnings=warnings)
