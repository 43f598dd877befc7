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
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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
# What zipfile's central directory needs of a member written earlier (see TorchZipWriter.state).
_ZIPINFO_FIELDS = (
    "compress_type",
    "file_size",
    "compress_size",
    "CRC",
    "header_offset",
    "flag_bits",
    "create_version",
    "extract_version",
    "create_system",
    "external_attr",
    "internal_attr",
    "volume",
    "reserved",
)


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


def _zip64(size: int) -> bool:
    # zipfile itself switches to zip64 headers above ZIP64_LIMIT / 1.05; decide the same way everywhere
    # so that the alignment padding accounts for the header zipfile really writes.
    return size * 1.05 > zipfile.ZIP64_LIMIT


class RunningCrc:
    """A zip member's CRC-32, folded in chunk by chunk (by whoever writes the bytes)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib.crc32(data, self.value)


class StorageSink:
    """One storage being written: push C-ordered chunks with ``write``; ``close`` checks the size.

    When the archive's file object hashes on worker threads (``writes_crc``: ``write(data, crc=…)`` and
    ``drain()``), the member's CRC-32 is computed there too, beside its MD5, instead of by ``zipfile`` on the
    writing thread; ``zipfile`` then writes the same data descriptor with the CRC handed to it."""

    def __init__(self, owner: TorchZipWriter, key: str, dtype: DType, numel: int, member: IO[bytes]) -> None:
        self._owner, self.key, self._dtype, self._numel, self._member = owner, key, dtype, numel, member
        self._written = 0
        fp = owner._zip.fp
        offload = getattr(fp, "writes_crc", False) and all(hasattr(member, a) for a in ("_crc", "_file_size"))
        self._crc = RunningCrc() if offload else None

    def write(self, chunk: np.ndarray) -> int:
        data = np.ascontiguousarray(chunk, dtype=self._dtype.storage)
        view = memoryview(data.reshape(-1).view(np.uint8))
        if self._crc is None:
            self._member.write(view)
        else:
            self._owner._zip.fp.write(view, crc=self._crc)  # type: ignore[call-arg]
            self._member._file_size += data.nbytes  # type: ignore[attr-defined]
        self._written += data.nbytes
        return data.nbytes

    def close(self) -> None:
        if self._crc is not None:
            self._owner._zip.fp.drain()  # type: ignore[union-attr]
            self._member._crc = self._crc.value  # type: ignore[attr-defined]
        self._member.close()
        size = self._numel * self._dtype.itemsize
        if self._written != size:
            raise ValueError(f"storage {self.key}: got {self._written} bytes, expected {size}")
        self._owner._storages.append(_Storage(self.key, self._dtype, self._numel))

    def __enter__(self) -> StorageSink:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()


@dataclass
class TorchZipWriter:
    """Accumulate storages (streamed to disk at once) and tensor views; ``close()`` writes the index."""

    path: Path
    prefix: str = "consolidated"
    # Write through this file object instead of opening ``path`` (e.g. one that hashes as it writes; an
    # unseekable one makes zipfile put each member's CRC after its data, so bytes are written only once).
    fileobj: IO[bytes] | None = None
    _zip: zipfile.ZipFile = field(init=False)
    _storages: list[_Storage] = field(default_factory=list, init=False)
    _tensors: dict[str, _Tensor] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        target = self.fileobj if self.fileobj is not None else self.path
        self._zip = zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def _member(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{self.prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        zip64 = _zip64(size)
        header = 30 + len(info.filename.encode()) + (20 if zip64 else 0)
        pad = (-(self._zip.fp.tell() + header + 4)) % _ALIGN
        # A private extra-field record (id 0x4650, as torch uses) pads the data to the alignment.
        info.extra = struct.pack("<HH", 0x4650, pad) + b"Z" * pad
        return info

    def add_storage(self, dtype: DType, numel: int, chunks: Iterable[np.ndarray]) -> str:
        """Stream a storage of ``numel`` elements from ``chunks``; returns its key."""
        with self.open_storage(dtype, numel) as sink:
            for chunk in chunks:
                sink.write(chunk)
        return sink.key

    def open_storage(self, dtype: DType, numel: int) -> StorageSink:
        """A storage of ``numel`` elements whose bytes are pushed with ``write`` (close it before the next one)."""
        key = str(len(self._storages))
        size = numel * dtype.itemsize
        member = self._zip.open(self._member(f"data/{key}", size), "w", force_zip64=_zip64(size))
        return StorageSink(self, key, dtype, numel, member)

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

    def state(self) -> dict:
        """Everything needed to continue this archive after its bytes so far (JSON): the members written
        (as zipfile will list them in the central directory), the storages and the tensor views."""
        members = [
            {
                **{k: getattr(info, k) for k in _ZIPINFO_FIELDS},
                "filename": info.filename,
                "extra": info.extra.hex(),
                "date_time": list(info.date_time),
            }
            for info in self._zip.filelist
        ]
        storages = [[st.key, st.dtype.torch_name, st.numel] for st in self._storages]
        tensors = [[name, t.storage.key, t.offset, list(t.shape), list(t.stride)] for name, t in self._tensors.items()]
        return {"members": members, "storages": storages, "tensors": tensors}

    def restore(self, state: dict, dtypes: dict[str, DType]) -> None:
        """Continue an archive whose bytes up to ``state`` are already in the file object (see ``state``)."""
        for m in state["members"]:
            info = zipfile.ZipInfo(m["filename"], date_time=tuple(m["date_time"]))
            for k in _ZIPINFO_FIELDS:
                setattr(info, k, m[k])
            info.extra = bytes.fromhex(m["extra"])
            self._zip.filelist.append(info)
            self._zip.NameToInfo[info.filename] = info
        self._storages = [_Storage(key, dtypes[dtype], numel) for key, dtype, numel in state["storages"]]
        by_key = {st.key: st for st in self._storages}
        for name, key, offset, shape, stride in state["tensors"]:
            self._tensors[name] = _Tensor(by_key[key], offset, tuple(shape), tuple(stride))

    def discard(self) -> None:
        """Give up without writing the index (the caller removes the file)."""
        self._zip.fp = None  # zipfile then skips its end records, also when it is garbage-collected

    def __enter__(self) -> TorchZipWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._zip.close()
            if self.fileobj is None:
                os.unlink(self.path)
