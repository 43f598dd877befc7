"""Streaming writer of one GGUF file, staged beside the destination and renamed into place when complete.

``gguf.GGUFWriter`` (llama.cpp's own) writes the header, the metadata and the tensor infos. Its tensor
data path needs every tensor whole in memory (``add_tensor`` keeps the arrays until
``write_tensors_to_file``) or spools them all to a temporary file first, so a 16 GB model would cost
16 GB of RAM or a second full write. We let it write everything up to the data section, then stream each
tensor's bytes ourselves — row blocks, or kernel copies of verbatim source ranges — with the same
alignment padding it uses.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ...errors import ConversionError, DestinationExistsError, DiskFullError, InputError
from ..hf.safetensors_writer import _Writeback

__all__ = ["GGUFStreamWriter", "TensorEntry", "atomic_output_file", "check_gguf_destination"]

_TMP_TAG = ".llama-convert-tmp-"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: GGUF name, numpy-order shape, type and byte size."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    nbytes: int


class GGUFStreamWriter:
    """Write the header, metadata and tensor infos held by ``writer``, then take each tensor's bytes in
    order, in pieces (``write`` / ``copy_from``), closing each tensor with ``end_tensor``."""

    def __init__(self, path: Path, writer: GGUFWriter, tensors: list[TensorEntry]) -> None:
        for t in tensors:
            # numpy-order shape (GGUFWriter writes it reversed, as ggml's ne); a non-uint8 dtype keeps it as is
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file(path)
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
        self._fd = os.open(path, os.O_WRONLY)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._writeback = _Writeback(self._fd)

    def _write_all(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._writeback.wrote(n)

    def write(self, block: np.ndarray) -> int:
        """Append a block of the current tensor's bytes; returns the bytes written."""
        data = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
        self._write_all(memoryview(data))
        self._in_tensor += data.nbytes
        return data.nbytes

    def copy_from(self, src_fd: int, offset: int, nbytes: int, advance: Callable[[int], None]) -> None:
        """Append ``nbytes`` of another file from ``offset``, copied in the kernel (``copy_file_range``)
        where the filesystem allows, through a buffer otherwise."""
        end = offset + nbytes
        while offset < end:
            step = min(end - offset, 64 << 20)
            try:
                n = os.copy_file_range(src_fd, self._fd, step, offset)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                    raise
                n = 0
            if n <= 0:
                data = os.pread(src_fd, step, offset)
                if not data:
                    raise InputError(f"a source file ended at byte {offset} while copying; it changed during the run.")
                self._write_all(data)
                n = len(data)
            else:
                self._writeback.wrote(n)
            self._in_tensor += n
            advance(n)
            offset += n

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


def check_gguf_destination(dst: Path, *, force: bool) -> None:
    """Refuse a directory, or an existing file unless ``force``."""
    if dst.is_dir():
        raise DestinationExistsError(f"{dst} is a folder; give a file name ending in .gguf.")
    if dst.exists() and not force:
        raise DestinationExistsError(f"{dst} already exists; choose another name or pass --force to replace it.")


@contextlib.contextmanager
def atomic_output_file(dst: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst``, on any failure it vanishes.
    Temporaries of earlier runs whose process is gone are removed first."""
    dst = dst.absolute()
    check_gguf_destination(dst, force=force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(f".{dst.name}{_TMP_TAG}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = dst.parent / f".{dst.name}{_TMP_TAG}{os.getpid()}"
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"{dst.parent} ran out of space while writing {dst.name}; free some space or choose another "
                    "destination (nothing was left behind)."
                ) from None
            raise
        check_gguf_destination(dst, force=force)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()
