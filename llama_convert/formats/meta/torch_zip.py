"""A lazy, allow-listed reader of ``torch.save`` zip checkpoints that never imports torch.

``torch.save`` writes a zip archive: ``<prefix>/data.pkl`` (a pickle describing the tensors)
and one uncompressed member ``<prefix>/data/<key>`` per storage. We unpickle ``data.pkl``
with a ``find_class`` that only admits a fixed allow-list and hands back our own inert
stand-ins, so nothing from the file is ever executed. Tensor bytes are read later, on
demand, with ``pread`` at the member's offset: nothing is loaded until asked for.

The stdlib ``zipfile`` locates members; we read data ourselves because ``ZipFile.open``
would copy through Python buffers and cannot read a row range at an offset.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...dtypes import DTYPES, DType
from ...errors import InputError, UnsafePickleError, UnsupportedError
from ..storage import ByteSource, SourcePath, as_source_path, open_bytes
from ..storage.bytes import open_file

__all__ = ["StorageRef", "TensorRef", "TorchCheckpoint"]

_STORAGE_CLASSES: dict[str, DType] = {
    "BFloat16Storage": DTYPES["bfloat16"],
    "HalfStorage": DTYPES["float16"],
    "FloatStorage": DTYPES["float32"],
    "DoubleStorage": DTYPES["float64"],
    "LongStorage": DTYPES["int64"],
    "IntStorage": DTYPES["int32"],
    "ShortStorage": DTYPES["int16"],
    "CharStorage": DTYPES["int8"],
    "ByteStorage": DTYPES["uint8"],
    "BoolStorage": DTYPES["bool"],
    "Float8_e4m3fnStorage": DTYPES["float8_e4m3fn"],
}
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_MAGIC = 0x04034B50


@dataclass(frozen=True)
class StorageRef:
    """One storage member of the archive: where its bytes lie in the file."""

    key: str
    dtype: DType
    numel: int
    file_offset: int  # absolute offset of the first byte in the .pth file

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class TensorRef:
    """A tensor described by the pickle: a strided view into a storage, not yet read."""

    name: str
    storage: StorageRef
    storage_offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> DType:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=False):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def span(self) -> int:
        """Elements of storage the tensor touches, from its first element to its last."""
        if self.numel == 0:
            return 0
        return 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride, strict=False))


class _StorageType:
    """Inert stand-in for ``torch.<X>Storage`` classes: only carries a dtype."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype


class _Rebuilt:
    """What ``_rebuild_tensor_v2`` yields while unpickling; turned into a TensorRef afterwards."""

    __slots__ = ("shape", "storage", "storage_offset", "stride")

    def __init__(self, storage: StorageRef, storage_offset: int, shape: Any, stride: Any) -> None:
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _Rebuilt(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    """The variant torch uses over an untyped (byte) storage, with the dtype passed separately."""
    if not isinstance(storage, StorageRef) or not isinstance(dtype, _DTypeRef):
        raise pickle.UnpicklingError("tensor without a storage or dtype")
    if storage.dtype != dtype.dtype:
        if storage.nbytes % dtype.dtype.itemsize:
            raise pickle.UnpicklingError("storage size is not a multiple of the element size")
        storage = StorageRef(storage.key, dtype.dtype, storage.nbytes // dtype.dtype.itemsize, storage.file_offset)
    return _Rebuilt(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class _DTypeRef:
    """Inert stand-in for ``torch.<dtype>`` objects."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype


class _OpaqueExtraState:
    """Inert stand-in for the ``io.BytesIO`` objects TransformerEngine leaves in Llama 4 shards
    (``*._extra_state``): built from the pickle, its state is discarded; it is not a tensor."""

    def __setstate__(self, state: Any) -> None:
        pass


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it to store bytes; only that use is admitted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted only to rebuild latin-1 bytes")
    return text.encode("latin-1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch.storage", "UntypedStorage"): _StorageType(DTYPES["uint8"]),
    ("_io", "BytesIO"): _OpaqueExtraState,
    ("_codecs", "encode"): _latin1_bytes,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_CLASSES.items()},
    **{("torch", name): _DTypeRef(dtype) for name, dtype in DTYPES.items()},
}


# Real torch storage types a Llama text checkpoint does not use (e.g. Llama 3.1 405B FP8): refused as
# unsupported rather than unsafe, since the file is legitimate.
_KNOWN_UNSUPPORTED: dict[tuple[str, str], str] = {
    **{
        ("torch", kind): kind
        for kind in (
            "float8_e5m2",
            "float8_e4m3fnuz",
            "float8_e5m2fnuz",
            "float8_e8m0fnu",
            "float4_e2m1fn_x2",
            "uint16",
            "uint32",
            "uint64",
            "complex32",
            "complex64",
            "complex128",
            "qint8",
            "quint8",
            "qint32",
        )
    },
    ("torch", "Float8_e5m2Storage"): "float8_e5m2",
    ("torch", "ComplexFloatStorage"): "complex64",
    ("torch", "ComplexDoubleStorage"): "complex128",
    ("torch", "QInt8Storage"): "quantized int8",
    ("torch", "QUInt8Storage"): "quantized uint8",
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals, to inert stand-ins."""

    def __init__(self, file, path: Path, storages: dict[str, tuple[int, int]]) -> None:
        super().__init__(file)
        self._path = path
        self._members = storages  # key -> (file offset, byte size)
        self._storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            if (module, name) in _KNOWN_UNSUPPORTED:
                raise UnsupportedError(
                    f"{self._path} stores {_KNOWN_UNSUPPORTED[(module, name)]} tensors, which this version does not "
                    "convert; use the bfloat16 download of the model."
                ) from None
            raise UnsafePickleError(
                f"{self._path} references {module}.{name}, which a Llama checkpoint never needs; "
                "refusing to load it (nothing from the file was executed) — do not use this file."
            ) from None

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            if key not in self._members:
                raise InputError(
                    f"{self._path} lacks the data of storage {key}; the file is damaged — download it again."
                )
            offset, size = self._members[key]
            ref = StorageRef(key, storage_type.dtype, int(numel), offset)
            if ref.nbytes > size:
                raise InputError(
                    f"{self._path}: storage {key} holds {size} bytes but claims {ref.nbytes}; "
                    "the file is damaged — download it again."
                )
            self._storages[key] = ref
        return self._storages[key]


class TorchCheckpoint:
    """A ``torch.save`` zip file opened for lazy, row-wise reading of its tensors."""

    def __init__(self, path: str | os.PathLike[str] | SourcePath) -> None:
        self.path = as_source_path(path)
        self.source: ByteSource = open_bytes(self.path)  # local pread or remote range reads
        self.file_size = self.source.size
        try:
            memo = self.source.memo  # a remote file's index is fetched once per run, not at every opening
            index = memo.get("torch_zip") if memo is not None else None
            if index is None:
                index = self._index_archive()
                if memo is not None:
                    memo["torch_zip"] = index
            members, pickle_bytes = index
            self.tensors: dict[str, TensorRef] = self._unpickle(pickle_bytes, members)
        except BaseException:
            self.source.close()
            raise

    # -- opening -----------------------------------------------------------------------
    def _damaged(self, why: str) -> InputError:
        return InputError(f"{self.path} is {why}; download it again (or check the disk it is on).")

    def _index_archive(self) -> tuple[dict[str, tuple[int, int]], bytes]:
        raw = open_file(self.source)
        try:
            archive = zipfile.ZipFile(raw)
        except zipfile.BadZipFile:
            raw.close()
            magic = self.source.read_ranges([(0, min(4, self.file_size))])[0]
            if magic[:2] == b"\x80\x02" or not magic:
                raise UnsupportedError(
                    f"{self.path} is a legacy (pre-zip) PyTorch file or empty; re-save it with torch.save."
                ) from None
            raise self._damaged("truncated or not a PyTorch checkpoint") from None
        with archive, raw:
            members: dict[str, tuple[int, int]] = {}
            pickle_bytes = None
            infos = archive.infolist()
            data_offsets = self._data_offsets([i for i in infos if len(i.filename.split("/")) == 3])
            for info in infos:
                parts = info.filename.split("/")
                if parts[-1] == "data.pkl" and len(parts) == 2:
                    try:
                        pickle_bytes = archive.read(info)
                    except (zipfile.BadZipFile, OSError, EOFError) as exc:
                        raise self._damaged(f"damaged ({exc})") from None
                elif len(parts) == 3 and parts[1] == "data":
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise UnsupportedError(f"{self.path} has compressed tensor data; re-save it uncompressed.")
                    members[parts[2]] = (data_offsets[info.filename], info.file_size)
                elif parts[-1] == "byteorder" and archive.read(info).strip() not in (b"", b"little"):
                    raise UnsupportedError(f"{self.path} was saved on a big-endian machine; not supported.")
            if pickle_bytes is None:
                raise self._damaged("not a PyTorch checkpoint (no data.pkl)")
        for key, (offset, size) in members.items():
            if offset + size > self.file_size:
                raise self._damaged(f"truncated (storage {key} ends past the end of the file)")
        return members, pickle_bytes

    def _data_offsets(self, infos: list[zipfile.ZipInfo]) -> dict[str, int]:
        """Where each member's data starts, after its local header (all headers read in one batch of
        ranges: one round trip for a remote file rather than one per tensor)."""
        ranges = [(i.header_offset, min(i.header_offset + _LOCAL_HEADER.size, self.file_size)) for i in infos]
        offsets = {}
        for info, header in zip(infos, self.source.read_ranges(ranges), strict=True):
            if len(header) < _LOCAL_HEADER.size:
                raise self._damaged("truncated")
            fields = _LOCAL_HEADER.unpack(header)
            if fields[0] != _LOCAL_HEADER_MAGIC:
                raise self._damaged("damaged (bad zip member header)")
            name_len, extra_len = fields[9], fields[10]
            offsets[info.filename] = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        return offsets

    def _unpickle(self, data: bytes, members: dict[str, tuple[int, int]]) -> dict[str, TensorRef]:
        import io

        unpickler = _SafeUnpickler(io.BytesIO(data), self.path, members)
        try:
            obj = unpickler.load()
        except (UnsafePickleError, InputError, UnsupportedError):
            raise
        except Exception as exc:  # malformed pickle bytes: any exception type is possible
            raise InputError(
                f"{self.path} has an unreadable tensor index ({type(exc).__name__}: {exc}); "
                "the file is damaged — download it again."
            ) from None
        if not isinstance(obj, dict):
            raise InputError(f"{self.path} holds a {type(obj).__name__}, not a state dict of tensors.")
        tensors: dict[str, TensorRef] = {}
        for name, value in obj.items():
            if not isinstance(value, _Rebuilt):
                continue  # non-tensor entries (none in Meta's files) are ignored
            ref = TensorRef(str(name), value.storage, value.storage_offset, value.shape, value.stride)
            if min((ref.storage_offset, *ref.shape, *ref.stride)) < 0 or len(ref.shape) != len(ref.stride):
                raise InputError(
                    f"{self.path}: tensor {name} has a negative size, stride or offset, or not as many strides as "
                    "sizes; the file is damaged — download it again."
                )
            if ref.storage_offset + ref.span() > ref.storage.numel:
                raise InputError(
                    f"{self.path}: tensor {name} reaches past the end of its storage; "
                    "the file is damaged — download it again."
                )
            tensors[str(name)] = ref
        return tensors

    # -- reading -----------------------------------------------------------------------
    def __enter__(self) -> TorchCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.source.close()

    def fileno(self) -> int | None:
        """The open file descriptor of a local file (opened on first use); None for a remote one."""
        return self.source.fileno()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def read_bytes_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the file's bytes at ``offset`` (pread, no intermediate copy, when local)."""
        self.source.read_into(offset, out)

    def read_rows(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows ``start:stop`` (along dim 0) of a tensor, as numpy data in ``dtype.storage``.

        With ``out`` (a C-contiguous array of the right size) contiguous tensors are read
        straight into it. Non-contiguous tensors are read as the span they touch and
        re-strided, honouring arbitrary strides and storage offsets.
        """
        ref = self.tensors[name]
        shape = ref.shape if ref.shape else (1,)
        stride = ref.stride if ref.stride else (1,)
        stop = shape[0] if stop is None else stop
        sub_shape = (stop - start, *shape[1:])
        item = ref.dtype.itemsize
        first = ref.storage_offset + start * stride[0]
        sub = TensorRef(name, ref.storage, first, sub_shape, stride)
        if out is None:
            out = np.empty(sub_shape, dtype=ref.dtype.storage)
        if sub.numel == 0:
            return out.reshape(sub_shape)
        if sub.is_contiguous:
            self.read_bytes_into(ref.storage.file_offset + first * item, memoryview(out.reshape(-1).view(np.uint8)))
            return out.reshape(sub_shape)
        span = np.empty(sub.span(), dtype=ref.dtype.storage)
        self.read_bytes_into(ref.storage.file_offset + first * item, memoryview(span.view(np.uint8)))
        view = np.lib.stride_tricks.as_strided(span, sub_shape, tuple(s * item for s in stride))
        out.reshape(sub_shape)[...] = view
        return out.reshape(sub_shape)

    def read_row_blocks(self, name: str, blocks: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Rows ``start:stop`` for each (start, stop) of ``blocks``, read in one batch of ranges where the tensor
        is contiguous (one round trip for a remote file, not one per block)."""
        ref = self.tensors[name]
        if not ref.is_contiguous or not ref.shape:
            return [self.read_rows(name, start, stop) for start, stop in blocks]
        row_bytes = math.prod(ref.shape[1:]) * ref.dtype.itemsize
        base = ref.storage.file_offset + ref.storage_offset * ref.dtype.itemsize
        ranges = [(base + start * row_bytes, base + stop * row_bytes) for start, stop in blocks]
        datas = self.source.read_ranges(ranges)
        if any(len(data) != end - begin for data, (begin, end) in zip(datas, ranges, strict=True)):
            raise self._damaged("truncated")
        return [
            np.frombuffer(data, dtype=ref.dtype.storage).reshape(stop - start, *ref.shape[1:])
            for data, (start, stop) in zip(datas, blocks, strict=True)
        ]

    def read(self, name: str) -> np.ndarray:
        """A whole tensor (small ones only: norms, test helpers)."""
        ref = self.tensors[name]
        return self.read_rows(name).reshape(ref.shape)
