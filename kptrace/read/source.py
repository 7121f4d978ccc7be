"""Open a trace file, whatever its compression, or say clearly why it cannot be read.

`read_bytes` gives the decompressed content for any reader to recognise by its first bytes;
`read_source` is the text readers' view of it.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from kptrace.errors import TraceError

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
}


@dataclass
class SourceText:
    """Decoded text of one input file and what went wrong while getting it."""

    path: Path
    text: str
    compression: str | None
    warnings: list[str] = field(default_factory=list)


#: Bytes plain ASCII text is made of: whitespace and printable characters.
_ASCII_TEXT = bytes(range(9, 14)) + bytes(range(32, 127))


def _compression_of(head: bytes) -> str | None:
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def _zstd(path: Path, warnings: list[str]) -> bytes:
    """zstd frames one after another; a frame without its end is a truncated file."""
    data = path.read_bytes()
    chunks: list[bytes] = []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        try:
            chunks.append(frame.decompress(data))
        except zstandard.ZstdError as exc:
            if not chunks:
                raise TraceError(path, f"cannot decompress zstd data ({exc})") from None
            warnings.append(f"zstd stream is corrupt ({exc}); read the first {sum(map(len, chunks))} bytes only")
            break
        if not frame.eof:
            warnings.append(f"zstd stream is truncated; read the first {sum(map(len, chunks))} bytes only")
            break
        data = frame.unused_data
    return b"".join(chunks)


def _decompress(path: Path, compression: str, warnings: list[str]) -> bytes:
    """Decompress in chunks so a truncated stream still yields what was written before the cut."""
    if compression == "zstd":
        return _zstd(path, warnings)
    chunks: list[bytes] = []
    opener = gzip.open if compression == "gzip" else lzma.open
    try:
        with opener(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                chunks.append(chunk)
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:   # zlib.error: corrupt deflate data
        if not chunks:
            raise TraceError(path, f"cannot decompress {compression} data ({exc})") from None
        warnings.append(f"{compression} stream is truncated or corrupt ({exc}); read the first "
                        f"{sum(map(len, chunks))} bytes only")
    return b"".join(chunks)


@dataclass
class SourceBytes:
    """Decompressed content of one input file and what went wrong while getting it."""

    path: Path
    data: bytes
    compression: str | None
    warnings: list[str] = field(default_factory=list)


def read_bytes(path: str | Path) -> SourceBytes:
    """Read ``path``, decompressing gzip, zstd or xz by their magic bytes."""
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file")
    if path.is_dir():
        raise TraceError(path, "is a directory, not a trace file or bundle")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if not head:
            raise TraceError(path, "empty file")
        warnings: list[str] = []
        compression = _compression_of(head)
        raw = _decompress(path, compression, warnings) if compression else path.read_bytes()
    except OSError as exc:
        raise TraceError(path, f"cannot read: {exc.strerror or exc}") from None
    return SourceBytes(path=path, data=raw, compression=compression, warnings=warnings)


def looks_like_text(head: bytes) -> bool:
    """Text, not binary data, judged on the first 64 KiB: at most 1% NUL bytes and at most 30%
    bytes that are neither printable ASCII nor whitespace.

    Binary files are NUL-heavy (perf.data, ELF) or mostly high and control bytes (compressed or
    random data). A text trace stays text when a bit flip made one NUL (that line alone is
    unreadable) or when a busy thread is named with control characters or UTF-8: the traced
    programs must not be able to make their own trace unreadable by their names.
    """
    sample = head[: 1 << 16]
    return (sample.count(0) <= len(sample) // 100
            and len(sample.translate(None, _ASCII_TEXT)) <= len(sample) * 3 // 10)


def check_text(source: SourceBytes) -> None:
    """A clear error when the content holds no text trace."""
    raw, path = source.data, source.path
    # isspace() stops at the first other byte, where strip() would copy the whole file.
    if not raw or raw.isspace():
        raise TraceError(path, "contains no trace lines")
    if not looks_like_text(raw):
        raise TraceError(path, "binary data, not trace text nor a trace.dat (a perf.data needs `perf script`)")


def as_text(source: SourceBytes) -> SourceText:
    """The content as UTF-8 text, or a clear error when it holds no text trace."""
    check_text(source)
    text = source.data.decode("utf-8", errors="replace")
    return SourceText(path=source.path, text=text, compression=source.compression, warnings=source.warnings)


def read_source(path: str | Path) -> SourceText:
    """Read ``path`` as UTF-8 text, decompressing gzip, zstd or xz by their magic bytes."""
    return as_text(read_bytes(path))
