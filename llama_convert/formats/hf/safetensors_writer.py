"""Streaming writer of one safetensors file.

The ``safetensors`` library's ``save_file`` needs every tensor of a file in memory at once;
a 5 GB shard of a 405B model would then cost 5 GB of RAM. The format is simple (8-byte
little-endian header length, JSON header, raw data), so we write the header from the plan
up front and stream tensor bytes after it, in bounded memory. Files are read back with the
``safetensors`` library in the tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

from ..stream import AppendingFile

__all__ = ["SafetensorsWriter", "safetensors_header"]


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


class SafetensorsWriter(AppendingFile):
    """Write a safetensors file whose tensors arrive in header order, in pieces."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: list[tuple[str, str, tuple[int, ...], int]],
        metadata: dict[str, str] | None = None,
        *,
        keep_cached: Collection[str] = (),
    ) -> None:
        """``keep_cached`` names tensors whose bytes stay in the page cache (to be read back soon after)."""
        self.path = Path(path)
        self._expected = sum(e[3] for e in entries)
        self._written = 0
        header = safetensors_header(entries, metadata)
        spans, offset = [], len(header)
        for name, _, _, nbytes in entries:
            if name in keep_cached:
                spans.append((offset, offset + nbytes))
            offset += nbytes
        keep = (spans[0][0], spans[-1][1]) if spans else None
        super().__init__(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), keep)
        self._write_all(header)

    def counted(self, n: int) -> None:
        self._written += n

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
