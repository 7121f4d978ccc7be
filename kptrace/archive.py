"""Bundle archives (BUNDLE.tar.zst as `kptrace record --tar` writes it, .tar.gz, .tar.xz, .tar),
read without unpacking by hand.

An archive is untrusted: it was copied off a machine the user may not control. It is unpacked
member by member into a private folder inside the output folder, after tarfile's `data` filter
and checks of our own: a member may only be a plain file or a folder whose path stays inside
the archive; links, devices, FIFOs and anything else are refused, and so is an archive whose
members, one or all together, unpack past the size limits (a decompression bomb). The first
bad member stops the unpacking with one TraceError naming it; the private folder goes away.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import zstandard

from kptrace.errors import TraceError

_OPENERS = {
    b"\x1f\x8b": lambda handle: gzip.GzipFile(fileobj=handle),
    b"\x28\xb5\x2f\xfd": lambda handle: zstandard.ZstdDecompressor().stream_reader(handle),
    b"\xfd7zXZ\x00": lambda handle: lzma.LZMAFile(handle),
}
_TAR_MAGIC_AT = 257  # "ustar" in every POSIX (and GNU) tar header block
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How much an archive may unpack to. A real bundle is one trace of a few GB at most and a
    few dozen small files; zstd packs trace text about 10:1, so 200:1 is far past any trace."""

    total_bytes: int = 32 << 30
    member_bytes: int = 16 << 30
    members: int = 10_000
    ratio: float = 200.0
    #: Below this many unpacked bytes the ratio is not checked (tar's zero padding packs to nothing).
    ratio_floor: int = 64 << 20


def _open_stream(handle: BinaryIO) -> BinaryIO:
    head = handle.read(8)
    handle.seek(0)
    opener = next((open_ for magic, open_ in _OPENERS.items() if head.startswith(magic)), None)
    return opener(handle) if opener else handle


def is_archive(path: str | Path) -> bool:
    """Whether `path` is a file holding a tar archive (compressed or not), by its content."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            header = _open_stream(handle).read(512)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError, zlib.error):   # damaged data: not an archive
        return False
    return len(header) == 512 and header[_TAR_MAGIC_AT:_TAR_MAGIC_AT + 5] == b"ustar"


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be unpacked, checked before tarfile's own filter sees it."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith("\\") or (name.parts and ":" in name.parts[0]):
        return "has an absolute path"
    if ".." in name.parts:
        return "has a `..` path that leads outside the archive"
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "is a device or FIFO"
    if not (member.isreg() or member.isdir()):
        return "is neither a file nor a folder"
    return None


def _copy_counted(source: BinaryIO, target: Path, budget: int) -> int:
    """Copy at most `budget` bytes; more means the member lied about its size."""
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > budget:
                break
            out.write(chunk)
    return written


def unpack(archive: Path, into: Path, limits: Limits = Limits()) -> None:
    """Unpack `archive` into the existing folder `into`, member by member, or raise TraceError
    at the first member that is not safe to unpack or would pass a limit."""
    packed = archive.stat().st_size
    # Stop copying once the ratio is passed, not after the member is written out.
    by_ratio = max(limits.ratio_floor, int(limits.ratio * packed))
    total = 0
    count = 0
    try:
        with open(archive, "rb") as handle, tarfile.open(fileobj=_open_stream(handle), mode="r|") as tar:
            for member in tar:
                count += 1
                if count > limits.members:
                    raise TraceError(archive, f"holds more than {limits.members} members; refused")
                problem = _member_problem(member)
                if problem is None:
                    try:
                        member = tarfile.data_filter(member, str(into))
                    except tarfile.FilterError as error:
                        problem = f"is refused by tarfile's data filter ({type(error).__name__})"
                if problem:
                    raise TraceError(archive, f"member {member.name!r} {problem}; refused, nothing kept")
                target = into / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                if member.size > limits.member_bytes:
                    raise TraceError(archive, f"member {member.name!r} unpacks to {member.size:,} bytes, over the "
                                              f"{limits.member_bytes:,}-byte limit (a decompression bomb?); refused")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                budget = min(limits.member_bytes, limits.total_bytes - total, by_ratio - total)
                total += _copy_counted(tar.extractfile(member), target, budget)
                if total > limits.total_bytes:
                    raise TraceError(archive, f"unpacks to more than {limits.total_bytes:,} bytes (a decompression "
                                              "bomb?); refused")
                if total > by_ratio:
                    raise TraceError(archive, f"unpacks to over {limits.ratio:.0f} times its {packed:,} bytes "
                                              "(a decompression bomb?); refused")
    except (tarfile.TarError, EOFError, lzma.LZMAError, zstandard.ZstdError, zlib.error, gzip.BadGzipFile) as error:
        raise TraceError(archive, f"damaged archive after {count} members ({type(error).__name__}: {error})") from None
    except OSError as error:
        raise TraceError(archive, f"cannot unpack: {error.strerror or error}") from None


def bundle_root(folder: Path, archive: Path) -> Path:
    """The bundle inside an unpacked archive: the folder holding manifest.json, either the top
    level or its one subfolder (as `tar -C parent -cf - BUNDLE` makes it)."""
    if (folder / "manifest.json").is_file():
        return folder
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(subfolders) == 1 and (subfolders[0] / "manifest.json").is_file():
        return subfolders[0]
    raise TraceError(archive, "archive holds no bundle (no manifest.json at its top or in its one folder)")


@contextlib.contextmanager
def opened(path: Path, out: Path, limits: Limits = Limits()) -> Iterator[Path]:
    """The path to read: `path` itself, or, for a bundle archive, the bundle unpacked into a
    private folder inside `out` (mode 0700), removed again when the block ends."""
    if not is_archive(path):
        yield path
        return
    out.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".unpacked-", dir=out))
    try:
        unpack(path, private, limits)
        yield bundle_root(private, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
