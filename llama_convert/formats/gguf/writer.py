"""Streaming writer of one GGUF file (the caller stages it beside the destination, see ``output``).

``gguf.GGUFWriter`` (llama.cpp's own) writes the header, the metadata and the tensor infos. Its tensor
data path needs every tensor whole in memory (``add_tensor`` keeps the arrays until
``write_tensors_to_file``) or spools them all to a temporary file first, so a 16 GB model would cost
16 GB of RAM or a second full write. We let it write everything up to the data section, then stream each
tensor's bytes ourselves — row blocks, or kernel copies of verbatim source ranges — with the same
alignment padding it uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ...errors import ConversionError
from ..stream import AppendingFile

__all__ = ["GGUFStreamWriter", "TensorEntry"]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: GGUF name, numpy-order shape, type and byte size."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    nbytes: int


class GGUFStreamWriter(AppendingFile):
    """Write the header, metadata and tensor infos held by ``writer``, then take each tensor's bytes in
    order, in pieces (``write`` / ``copy_from``), closing each tensor with ``end_tensor``."""

    def __init__(
        self,
        path: Path,
        writer: GGUFWriter,
        tensors: list[TensorEntry],
        *,
        resume: tuple[int, int] | tuple[int, int, int] | None = None,
    ) -> None:
        """``resume`` = (tensors already complete, file size then[, bytes of the next tensor in it]): continue a
        file an interrupted run wrote, if its header is byte for byte the one ``writer`` makes (else start over).
        ``resumed`` says which. Resumed part way into a tensor, the first ``in_tensor`` bytes the caller gives
        for it are dropped (they are in the file): callers that can start later skip them (``skip``)."""
        for t in tensors:
            # numpy-order shape (GGUFWriter writes it reversed, as ggml's ne); a non-uint8 dtype keeps it as is
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        header = path.with_name(path.name + ".header") if resume else path
        writer.write_header_to_file(header)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        writer.write_padding(writer.fout[0], writer.fout[0].tell())
        writer.close()
        self.path = path
        self._alignment = writer.data_alignment
        self._tensors = list(tensors)
        self._index = 0
        self._in_tensor = 0
        self._skip = 0  # bytes of the current tensor still to drop (in the file from an interrupted run)
        self.resumed = False
        if resume is not None:
            self.resumed = _same_prefix(header, path, resume[1])
            if self.resumed:
                self._index = resume[0]
                self._in_tensor = self._skip = resume[2] if len(resume) > 2 else 0
                with open(path, "r+b") as f:
                    f.truncate(resume[1])
            else:
                os.replace(header, path)
            header.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY)
        os.lseek(fd, 0, os.SEEK_END)  # before the writeback starts counting: a resumed file continues there
        super().__init__(fd)

    @property
    def index(self) -> int:
        """Tensors complete so far."""
        return self._index

    def sync(self) -> None:
        """Flush what was written to disk (before recording a checkpoint)."""
        os.fsync(self._fd)

    @property
    def in_tensor(self) -> int:
        """Bytes of the current tensor in the file so far."""
        return self._in_tensor

    @property
    def skip(self) -> int:
        """Bytes at the start of the current tensor that are in the file already (from an interrupted run)."""
        return self._skip

    def counted(self, n: int) -> None:
        self._in_tensor += n

    def _take_skip(self, n: int) -> int:
        """How many of the next ``n`` bytes given are in the file already (and so dropped)."""
        drop = min(self._skip, n)
        self._skip -= drop
        return drop

    def write(self, block: np.ndarray) -> int:
        """Append a block of tensor data; returns the bytes written (after dropping any still to skip)."""
        if not self._skip:
            return super().write(block)
        data = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
        drop = self._take_skip(data.nbytes)
        return super().write(data[drop:]) if drop < data.nbytes else 0

    def copy_range(
        self, source: Any, offset: int, nbytes: int, advance: Callable[[int], None] = lambda n: None
    ) -> None:
        drop = self._take_skip(nbytes)
        if drop < nbytes:
            super().copy_range(source, offset + drop, nbytes - drop, advance)

    def skipped(self, n: int) -> None:
        """The caller left out ``n`` of the bytes still to skip (it started the tensor later)."""
        if n > self._skip:
            name = self._tensors[self._index].name
            raise ConversionError(f"{self.path}: {n} bytes of {name} skipped where {self._skip} were written")
        self._skip -= n

    def end_tensor(self) -> None:
        """Check the current tensor's size and pad to the alignment."""
        entry = self._tensors[self._index]
        if self._in_tensor != entry.nbytes or self._skip:
            raise ConversionError(f"{self.path}: {entry.name} got {self._in_tensor} bytes, expected {entry.nbytes}.")
        pad = -entry.nbytes % self._alignment
        if pad:  # as GGUFWriter does, after every tensor
            self._write_all(bytes(pad))
        self._index += 1
        self._in_tensor = 0

    def close(self, *, sync: bool = True) -> None:
        """Check that every tensor arrived, flush to disk and close."""
        try:
            if self._index != len(self._tensors):
                raise ConversionError(f"{self.path}: wrote {self._index} of {len(self._tensors)} tensors.")
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


def _same_prefix(header: Path, path: Path, size: int) -> bool:
    """Whether ``path`` (at least ``size`` bytes long) starts with the bytes of ``header``."""
    want = header.read_bytes()
    try:
        with open(path, "rb") as f:
            return len(want) <= size and f.read(len(want)) == want
    except OSError:
        return False
