"""Streaming writer of one safetensors file.

The ``safetensors`` library's ``save_file`` needs every tensor of a file in memory at once;
a 5 GB shard of a 405B model would then cost 5 GB of RAM. The format is simple (8-byte
little-endian header length, JSON header, raw data), so we write the header from the plan
up front and stream tensor bytes after it, in bounded memory. Files are read back with the
``safetensors`` library in the tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
from pathlib import Path

import numpy as np

from ...errors import InputError

__all__ = ["SafetensorsWriter", "safetensors_header"]

WRITEBACK_WINDOW = 64 << 20  # bytes; see _Writeback


class _Writeback:
    """Stream output to disk at a steady pace instead of letting dirty pages pile up.

    Without this the kernel lets gigabytes of dirty page cache accumulate, then throttles the
    writer and leaves a long fsync at the end. Every ``WRITEBACK_WINDOW`` bytes we start writeback
    of the window just written (``sync_file_range(WRITE)``, non-blocking), wait for the window
    before it, and drop that one from the page cache (``POSIX_FADV_DONTNEED``): the disk stays
    busy, and page cache and memory use stay flat. Python's ``os`` has no ``sync_file_range``,
    hence ctypes; where it is unavailable this does nothing.
    """

    _WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._flushed = 0  # start of the window whose writeback was started last
        self._pending = 0  # bytes written since then
        self._call = _sync_file_range()

    def wrote(self, n: int) -> None:
        self._pending += n
        if self._call is None or self._pending < WRITEBACK_WINDOW:
            return
        start = self._flushed
        self._call(self._fd, start, self._pending, self._WRITE)
        if start:
            previous = max(0, start - WRITEBACK_WINDOW)
            self._call(self._fd, previous, start - previous, self._WAIT_BEFORE | self._WRITE | self._WAIT_AFTER)
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(self._fd, previous, start - previous, os.POSIX_FADV_DONTNEED)
        self._flushed += self._pending
        self._pending = 0


def _sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def safetensors_header(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None = None
) -> bytes:
    """Header bytes (length prefix included) for ``(name, dtype code, shape, nbytes)`` entries, in order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, code, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


class SafetensorsWriter:
    """Write a safetensors file whose tensors arrive in header order, in pieces."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: list[tuple[str, str, tuple[int, ...], int]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._expected = sum(e[3] for e in entries)
        self._written = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._writeback = _Writeback(self._fd)
        self._write_all(safetensors_header(entries, metadata))

    def _write_all(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._writeback.wrote(n)

    def write(self, block: np.ndarray) -> int:
        """Append a C-contiguous block of tensor data; returns the bytes written."""
        data = np.ascontiguousarray(block)
        self._write_all(memoryview(data.reshape(-1).view(np.uint8)))
        self._written += data.nbytes
        return data.nbytes

    def copy_from(self, src_fd: int, offset: int, nbytes: int, advance=lambda n: None) -> None:
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
            self._written += n
            advance(n)
            offset += n

    def close(self, *, sync: bool = True) -> None:
        """Check that every planned byte arrived, flush to disk and close."""
        try:
            if self._written != self._expected:
                raise RuntimeError(f"{self.path}: wrote {self._written} of {self._expected} data bytes")
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)
