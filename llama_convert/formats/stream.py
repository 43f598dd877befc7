"""Appending to an output file in bounded memory: row blocks written through, verbatim byte ranges of a
source copied in the kernel, and writeback paced so that dirty pages never pile up. Every sink that streams
tensor data (safetensors, GGUF) appends through this."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["COPY_CHUNK", "WRITEBACK_WINDOW", "AppendingFile", "Writeback"]

WRITEBACK_WINDOW = 64 << 20  # bytes; see Writeback
COPY_CHUNK = 32 << 20  # bytes of a remote source asked for per read while copying a verbatim range


class Writeback:
    """Stream output to disk at a steady pace instead of letting dirty pages pile up.

    Without this the kernel lets gigabytes of dirty page cache accumulate, then throttles the
    writer and leaves a long fsync at the end. Every ``WRITEBACK_WINDOW`` bytes we start writeback
    of the window just written (``sync_file_range(WRITE)``, non-blocking), wait for the window
    before it, and drop that one from the page cache (``POSIX_FADV_DONTNEED``): the disk stays
    busy, and page cache and memory use stay flat. Python's ``os`` has no ``sync_file_range``,
    hence ctypes; where it is unavailable this does nothing.
    """

    _WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4

    def __init__(self, fd: int, keep: tuple[int, int] | None = None) -> None:
        self._fd = fd
        self._keep = keep  # a byte range that stays in the page cache (read back soon after)
        # Windows start where the writes do: at the end of what a resumed file kept, not at 0.
        self._previous = self._flushed = os.lseek(fd, 0, os.SEEK_CUR)  # the window last started, and its end
        self._pending = 0  # bytes written since then
        self._call = _sync_file_range()

    def wrote(self, n: int) -> None:
        self._pending += n
        if self._call is None or self._pending < WRITEBACK_WINDOW:
            return
        start, previous = self._flushed, self._previous
        self._call(self._fd, start, self._pending, self._WRITE)
        if start > previous:  # the window before (a write can make a window longer than WRITEBACK_WINDOW)
            self._call(self._fd, previous, start - previous, self._WAIT_BEFORE | self._WRITE | self._WAIT_AFTER)
            self._drop(previous, start)
        self._previous, self._flushed = start, start + self._pending
        self._pending = 0

    def _drop(self, start: int, end: int) -> None:
        spans = [(start, end)]
        if self._keep is not None:
            spans = [(start, min(end, self._keep[0])), (max(start, self._keep[1]), end)]
        for a, b in spans:
            if a < b:
                with contextlib.suppress(OSError, AttributeError):
                    os.posix_fadvise(self._fd, a, b - a, os.POSIX_FADV_DONTNEED)


@functools.cache
def _sync_file_range():
    # The C library this process already has (dlopen(NULL)) before ctypes.util.find_library, which runs ldconfig.
    func = None
    for find in (lambda: None, lambda: "libc.so.6", lambda: ctypes.util.find_library("c")):
        with contextlib.suppress(OSError, AttributeError):
            func = ctypes.CDLL(find(), use_errno=True).sync_file_range
            break
    if func is None:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


class AppendingFile:
    """An open file that output is appended to; ``counted(n)`` is told of every data byte appended through
    ``write`` or ``copy_from`` (subclasses count per tensor or per file). The bytes of ``keep_cached`` (a file
    range) stay in the page cache when the rest is dropped behind the writeback."""

    def __init__(self, fd: int, keep_cached: tuple[int, int] | None = None) -> None:
        self._fd = fd
        self._writeback = Writeback(fd, keep_cached)

    def counted(self, n: int) -> None:
        """Called with the size of every data piece appended."""

    def _write_all(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._writeback.wrote(n)

    def write(self, block: np.ndarray) -> int:
        """Append a block of tensor data (made C-contiguous); returns the bytes written."""
        data = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
        self._write_all(memoryview(data))
        self.counted(data.nbytes)
        return data.nbytes

    def copy_from(self, src_fd: int, offset: int, nbytes: int, advance: Callable[[int], None] = lambda n: None) -> None:
        """Append ``nbytes`` of another file from ``offset`` without passing them through user space
        (``copy_file_range``; plain reads and writes where the kernel or filesystem cannot)."""
        end = offset + nbytes
        while offset < end:
            step = min(end - offset, 64 << 20)
            try:
                n = os.copy_file_range(src_fd, self._fd, step, offset)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (
                    errno.EXDEV,
                    errno.ENOSYS,
                    errno.EINVAL,
                    errno.EOPNOTSUPP,
                ):
                    raise
                n = 0
            if n <= 0:  # unsupported here (or a short source): copy through a buffer instead
                data = os.pread(src_fd, step, offset)
                if not data:
                    raise InputError(
                        f"a source file ended at byte {offset} while copying; it was truncated during the run."
                    )
                self._write_all(data)
                n = len(data)
            else:
                self._writeback.wrote(n)
            self.counted(n)
            advance(n)
            offset += n

    def copy_range(
        self, source: Any, offset: int, nbytes: int, advance: Callable[[int], None] = lambda n: None
    ) -> None:
        """Append ``nbytes`` of ``source`` (a ``formats.storage.ByteSource``) from ``offset``: in the kernel
        for a local file, else written from the fetched bytes themselves, chunk by chunk (the source reads ahead)."""
        fd = source.fileno()
        if fd is not None:
            self.copy_from(fd, offset, nbytes, advance)
            return
        for start in range(offset, offset + nbytes, COPY_CHUNK):
            n = min(COPY_CHUNK, offset + nbytes - start)
            for _, piece in source.read_pieces(start, n):
                self._write_all(piece)
            self.counted(n)
            advance(n)
