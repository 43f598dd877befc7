"""Random access to one source file's bytes: ``pread`` on a local file, range reads on a remote one."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ...errors import InputError

__all__ = ["ByteSource", "LocalBytes", "RangeFile", "open_bytes"]


class ByteSource(Protocol):
    """One file opened for reads at offsets. ``verify`` reads are tensor data: a remote source hashes
    them against checklist.chk while a conversion streams; index reads (zip directory, headers) pass False."""

    name: str  # for messages: the path or URL
    size: int
    memo: dict[str, Any] | None  # remote: shared by every opening of the file in one run; local: None

    def read_into(self, offset: int, out: memoryview, *, verify: bool = True) -> None: ...

    def read_pieces(self, offset: int, nbytes: int, *, verify: bool = True) -> list[tuple[int, memoryview]]:
        """The bytes ``offset:offset + nbytes`` as (offset, bytes) pieces in order, without copying them again."""
        ...

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes | memoryview]: ...

    def fileno(self) -> int | None: ...

    def close(self) -> None: ...


class LocalBytes:
    """A local file read with ``preadv`` straight into the caller's buffers (the descriptor opened lazily,
    so that a kernel copy — ``copy_file_range`` — can use it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.size = path.stat().st_size
        self.memo = None  # a local index is read again quickly, and the file may change between runs
        self._fd: int | None = None

    def fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read_into(self, offset: int, out: memoryview, *, verify: bool = True) -> None:
        fd, done, total = self.fileno(), 0, len(out)
        while done < total:
            n = os.preadv(fd, [out[done:]], offset + done)
            if n == 0:
                raise InputError(f"{self.path} is truncated (read past the end); download it again.")
            done += n

    def read_pieces(self, offset: int, nbytes: int, *, verify: bool = True) -> list[tuple[int, memoryview]]:
        out = memoryview(bytearray(nbytes))
        self.read_into(offset, out)
        return [(offset, out)] if nbytes else []

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fd = self.fileno()
        return [os.pread(fd, end - start, start) for start, end in ranges]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RangeFile(io.RawIOBase):
    """A read-only, seekable file object over a ByteSource (for ``zipfile``, which wants one)."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._source.size - self._pos))
        if n:
            self._source.read_into(self._pos, view[:n], verify=False)
            self._pos += n
        return n


def open_bytes(path: Any) -> ByteSource:
    """The file at ``path`` (a ``Path`` or a ``RemotePath``) opened for reads at offsets."""
    opener = getattr(path, "open_bytes", None)
    if opener is not None:
        return opener()
    return LocalBytes(Path(path))


def open_file(source: ByteSource, buffer_size: int = 1 << 16) -> io.BufferedReader:
    """A buffered file object over ``source``."""
    return io.BufferedReader(RangeFile(source), buffer_size)
