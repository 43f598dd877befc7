"""Write ``torch.save``-compatible zip checkpoints without torch, streaming tensor bytes.

Used to synthesize Meta-format checkpoints (the demo, tests, benchmarks) and, later, to
write Meta-format output. ``torch.save`` needs every tensor in memory at once; this writer
streams each storage in chunks, so multi-GB checkpoints are written in bounded memory.
The pickle is emitted opcode by opcode because pickling torch's classes by reference would
need torch importable.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...dtypes import DType

__all__ = ["TorchZipWriter"]

_STORAGE_CLASS = {
    "bfloat16": "BFloat16Storage",
    "float16": "HalfStorage",
    "float32": "FloatStorage",
    "float64": "DoubleStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}
_ALIGN = 64  # torch aligns storage data to 64 bytes inside the archive


@dataclass
class _Storage:
    key: str
    dtype: DType
    numel: int


@dataclass
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))


class _PickleEmitter:
    """The handful of protocol-2 opcodes a state dict of tensors needs."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def glob(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def string(self, s: str) -> None:
        data = s.encode()
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def integer(self, n: int) -> None:
        if -(2**31) <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)
        else:
            data = n.to_bytes(9, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data

    def int_tuple(self, values: tuple[int, ...]) -> None:
        self.out += b"("
        for v in values:
            self.integer(v)
        self.out += b"t"

    def empty_ordered_dict(self) -> None:
        self.glob("collections", "OrderedDict")
        self.out += b")R"


@dataclass
class TorchZipWriter:
    """Accumulate storages (streamed to disk at once) and tensor views; ``close()`` writes the index."""

    path: Path
    prefix: str = "consolidated"
    _zip: zipfile.ZipFile = field(init=False)
    _storages: list[_Storage] = field(default_factory=list, init=False)
    _tensors: dict[str, _Tensor] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def _member(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{self.prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        zip64 = size > zipfile.ZIP64_LIMIT
        header = 30 + len(info.filename.encode()) + (20 if zip64 else 0)
        pad = (-(self._zip.fp.tell() + header + 4)) % _ALIGN
        # A private extra-field record (id 0x4650, as torch uses) pads the data to the alignment.
        info.extra = struct.pack("<HH", 0x4650, pad) + b"Z" * pad
        return info

    def add_storage(self, dtype: DType, numel: int, chunks: Iterable[np.ndarray]) -> str:
        """Stream a storage of ``numel`` elements from ``chunks``; returns its key."""
        key = str(len(self._storages))
        size = numel * dtype.itemsize
        written = 0
        with self._zip.open(self._member(f"data/{key}", size), "w", force_zip64=size > zipfile.ZIP64_LIMIT) as w:
            for chunk in chunks:
                data = np.ascontiguousarray(chunk, dtype=dtype.storage)
                w.write(memoryview(data.reshape(-1).view(np.uint8)))
                written += data.nbytes
        if written != size:
            raise ValueError(f"storage {key}: got {written} bytes, expected {size}")
        self._storages.append(_Storage(key, dtype, numel))
        return key

    def add_view(
        self,
        name: str,
        storage_key: str,
        shape: tuple[int, ...],
        *,
        offset: int = 0,
        stride: tuple[int, ...] | None = None,
    ) -> None:
        """Declare tensor ``name`` as a view into an already written storage."""
        storage = self._storages[int(storage_key)]
        self._tensors[name] = _Tensor(storage, offset, tuple(shape), stride or _contiguous_stride(tuple(shape)))

    def add_tensor(self, name: str, data: np.ndarray, dtype: DType) -> None:
        """A tensor with a storage of its own."""
        key = self.add_storage(dtype, data.size, [data])
        self.add_view(name, key, data.shape)

    def _pickle(self) -> bytes:
        p = _PickleEmitter()
        p.empty_ordered_dict()
        p.out += b"("
        for name, t in self._tensors.items():
            p.string(name)
            p.glob("torch._utils", "_rebuild_tensor_v2")
            p.out += b"("  # args of _rebuild_tensor_v2
            p.out += b"("  # persistent id tuple
            p.string("storage")
            p.glob("torch", _STORAGE_CLASS[t.storage.dtype.torch_name])
            p.string(t.storage.key)
            p.string("cpu")
            p.integer(t.storage.numel)
            p.out += b"tQ"  # TUPLE, BINPERSID
            p.integer(t.offset)
            p.int_tuple(t.shape)
            p.int_tuple(t.stride)
            p.out += b"\x89"  # NEWFALSE: requires_grad
            p.empty_ordered_dict()  # backward hooks
            p.out += b"tR"
        p.out += b"u."  # SETITEMS, STOP
        return bytes(p.out)

    def close(self) -> None:
        """Write the pickle index and the archive's bookkeeping records."""
        for name, content in (
            ("data.pkl", self._pickle()),
            ("byteorder", b"little"),
            (".format_version", b"1"),
            (".storage_alignment", str(_ALIGN).encode()),
            ("version", b"3\n"),
        ):
            self._zip.writestr(self._member(name, len(content)), content)
        self._zip.close()

    def __enter__(self) -> TorchZipWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._zip.close()
            os.unlink(self.path)
