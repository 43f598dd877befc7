"""A Hugging Face model folder as a source: config.json and safetensors weights, read lazily by rows.

The ``safetensors`` package's numpy framework cannot hold bfloat16 (numpy has no such dtype) and
its ``safe_open`` hands back whole tensors, so a 2 GB embedding would cost 2 GB of RAM. The format
is a length-prefixed JSON header followed by raw little-endian bytes, so we parse the header
ourselves and read row ranges with ``pread`` straight into numpy buffers (bf16 as raw ``uint16``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...dtypes import DTYPES, DType
from ...errors import InputError, MissingFileError, UnsupportedError
from ..storage import ByteSource, SourcePath, as_source_path, open_bytes
from .checks import check_config, check_generation_config, check_tokenizer_config, check_tokenizer_json

__all__ = ["HFFolder", "SafetensorsFile", "SafetensorsRef", "find_hf_folder", "is_hf_folder"]

_BY_CODE: dict[str, DType] = {DTYPES[n].safetensors: DTYPES[n] for n in ("bfloat16", "float16", "float32")}
_MAX_HEADER = 100 << 20  # the safetensors library refuses larger headers too
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class SafetensorsRef:
    """One tensor of a safetensors file: where its bytes lie."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    file_offset: int  # absolute offset of the first byte in the file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def _whole(value: object) -> bool:
    """A non-negative JSON integer (no bool, no float): sizes and offsets of a safetensors header."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SafetensorsFile:
    """A safetensors file opened for row-wise reads of its tensors (nothing read beyond the header)."""

    def __init__(self, path: str | os.PathLike[str] | SourcePath) -> None:
        self.path = as_source_path(path)
        self.source: ByteSource = open_bytes(self.path)  # local pread or remote range reads
        self.metadata: dict[str, str] = {}
        try:
            self.tensors: dict[str, SafetensorsRef] = self._parse_header()
        except BaseException:
            self.source.close()
            raise

    def _damaged(self, why: str) -> InputError:
        return InputError(f"{self.path} is {why}; download or save it again.")

    def _parse_header(self) -> dict[str, SafetensorsRef]:
        size = self.source.size
        prefix = self.source.read_ranges([(0, min(8, size))])[0]
        if len(prefix) < 8:
            raise self._damaged("truncated (no safetensors header)")
        length = int.from_bytes(prefix, "little")
        if length > min(_MAX_HEADER, size - 8):
            raise self._damaged("not a safetensors file or truncated (bad header length)")
        try:
            header = json.loads(bytes(self.source.read_ranges([(8, 8 + length)])[0]))
        except (UnicodeDecodeError, ValueError):  # ValueError: JSON errors, numbers of over 4300 digits
            raise self._damaged("not a safetensors file (unreadable header)") from None
        if not isinstance(header, dict):
            raise self._damaged("not a safetensors file (header is not an object)")
        base = 8 + length
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise self._damaged("damaged (__metadata__ is not an object)")
        self.metadata = {str(k): str(v) for k, v in metadata.items()}
        tensors: dict[str, SafetensorsRef] = {}
        for name, entry in header.items():
            try:
                code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._damaged(f"damaged (bad header entry for {name})") from None
            if not (isinstance(code, str) and isinstance(shape, list) and all(_whole(v) for v in (*shape, begin, end))):
                raise self._damaged(f"damaged (bad header entry for {name})")
            if begin > end:
                raise self._damaged(f"damaged (tensor {name} ends before it begins)")
            shape = tuple(shape)
            dtype = _BY_CODE.get(code)
            if dtype is None:
                raise UnsupportedError(
                    f"{self.path}: tensor {name} has dtype {code}; only bfloat16, float16 and float32 weights "
                    "convert (dequantize or remove it first)."
                )
            ref = SafetensorsRef(name, dtype, shape, base + int(begin))
            if int(end) - int(begin) != ref.nbytes or base + int(end) > size:
                raise self._damaged(f"truncated or damaged (tensor {name} does not fit its byte range)")
            tensors[name] = ref
        return tensors

    def fileno(self) -> int | None:
        """The descriptor of a local file (for kernel copies); None for a remote one."""
        return self.source.fileno()

    def close(self) -> None:
        self.source.close()

    def read_rows(
        self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows ``start:stop`` (along dim 0) of a tensor, as numpy data in ``dtype.storage``."""
        ref = self.tensors[name]
        shape = ref.shape or (1,)
        stop = shape[0] if stop is None else stop
        sub_shape = (stop - start, *shape[1:])
        row_bytes = math.prod(shape[1:]) * ref.dtype.itemsize
        if out is None:
            out = np.empty(sub_shape, dtype=ref.dtype.storage)
        self.source.read_into(ref.file_offset + start * row_bytes, memoryview(out.reshape(-1).view(np.uint8)))
        return out.reshape(sub_shape)

    def read_elements(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements ``start:stop`` of a tensor in C order (1-D), as numpy data in ``dtype.storage``."""
        ref = self.tensors[name]
        out = np.empty(stop - start, dtype=ref.dtype.storage)
        self.source.read_into(ref.file_offset + start * ref.dtype.itemsize, memoryview(out.view(np.uint8)))
        return out

    def read(self, name: str) -> np.ndarray:
        """A whole tensor (small ones only)."""
        return self.read_rows(name).reshape(self.tensors[name].shape)


@dataclass
class HFFolder:
    """A Hugging Face model folder: its config, its weight files and where every tensor lives."""

    root: Path
    config: dict[str, Any]
    files: dict[str, SafetensorsFile]  # file name -> opened header
    where: dict[str, str]  # tensor name -> file name
    generation_config: dict[str, Any] | None
    notes: tuple[str, ...] = ()

    @property
    def tensors(self) -> dict[str, SafetensorsRef]:
        if getattr(self, "_tensors", None) is None:
            self._tensors = {name: self.files[f].tensors[name] for name, f in self.where.items()}
        return self._tensors

    def file_of(self, name: str) -> SafetensorsFile:
        return self.files[self.where[name]]

    def read_rows(self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None):
        return self.file_of(name).read_rows(name, start, stop, out)

    def read_elements(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.file_of(name).read_elements(name, start, stop)

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def __enter__(self) -> HFFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_hf_folder(root: str | os.PathLike[str] | SourcePath) -> bool:
    """True when ``root`` holds a config.json beside safetensors (or .bin) weights."""
    root = as_source_path(root)
    return (root / "config.json").is_file() and (
        any(root.glob("*.safetensors")) or (root / INDEX_NAME).is_file() or any(root.glob("pytorch_model*.bin"))
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: also numbers of more than 4300 digits
        raise InputError(f"{path} is not valid JSON ({exc}); save the model again.") from None


def _weight_files(root: Path) -> list[str]:
    index_path = root / INDEX_NAME
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{index_path} has no weight_map; save the model again.")
        names = sorted(set(map(str, weight_map.values())))
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise MissingFileError(f"{root} is missing {', '.join(missing)} named by {INDEX_NAME}; download it again.")
        return names
    names = sorted(p.name for p in root.glob("*.safetensors"))
    if not names:
        if any(root.glob("pytorch_model*.bin")):
            raise UnsupportedError(
                f"{root} holds pickled pytorch_model*.bin weights, which are not read (unsafe); "
                "re-save with save_pretrained(..., safe_serialization=True)."
            )
        raise MissingFileError(f"{root} has config.json but no *.safetensors weights; download them.")
    if len(names) > 1:
        raise InputError(
            f"{root} holds several safetensors files ({', '.join(names[:3])}, ...) but no {INDEX_NAME}; "
            "restore the index file."
        )
    return names


def find_hf_folder(root: str | os.PathLike[str] | SourcePath) -> HFFolder:
    """Open a Hugging Face model folder (local or remote): parse config.json and every weight file's header."""
    root = as_source_path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root} is not a folder; give the Hugging Face model folder (with config.json).")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path} is missing; give a folder written by save_pretrained.")
    config = check_config(_read_json(config_path), config_path)
    gen_path = root / "generation_config.json"
    generation = check_generation_config(_read_json(gen_path), gen_path) if gen_path.is_file() else None
    # Read later by the routes (vocabulary, special tokens): their shapes are checked here, before the first byte.
    for name, check in (("tokenizer.json", check_tokenizer_json), ("tokenizer_config.json", check_tokenizer_config)):
        if (root / name).is_file():
            check(_read_json(root / name), root / name)
    files: dict[str, SafetensorsFile] = {}
    where: dict[str, str] = {}
    for name in _weight_files(root):
        files[name] = SafetensorsFile(root / name)
        for tensor in files[name].tensors:
            if tensor in where:
                raise InputError(f"{root}: tensor {tensor} is in {where[tensor]} and {name}; save the model again.")
            where[tensor] = name
    return HFFolder(root, config, files, where, generation if isinstance(generation, dict) else None)
