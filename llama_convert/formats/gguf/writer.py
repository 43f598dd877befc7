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
from dataclasses import dataclass
from pathlib import Path

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
        self, path: Path, writer: GGUFWriter, tensors: list[TensorEntry], *, resume: tuple[int, int] | None = None
    ) -> None:
        """``resume`` = (tensors already complete, file size then): continue a file an interrupted run wrote,
        if its header is byte for byte the one ``writer`` makes (else start over). ``resumed`` says which."""
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
        self.resumed = False
        if resume is not None:
            self.resumed = _same_prefix(header, path, resume[1])
            if self.resumed:
                self._index = resume[0]
                with open(path, "r+b") as f:
                    f.truncate(resume[1])
            else:
                os.replace(header, path)
            header.unlink(missing_ok=True)
        super().__init__(os.open(path, os.O_WRONLY))
        os.lseek(self._fd, 0, os.SEEK_END)

    @property
    def index(self) -> int:
        """Tensors complete so far."""
        return self._index

    def sync(self) -> None:
        """Flush what was written to disk (before recording a checkpoint)."""
        os.fsync(self._fd)

    def counted(self, n: int) -> None:
        self._in_tensor += n

    def end_tensor(self) -> None:
        """Check the current tensor's size and pad to the alignment."""
        entry = self._tensors[self._index]
        if self._in_tensor != entry.nbytes:
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
