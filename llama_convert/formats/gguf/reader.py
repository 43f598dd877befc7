"""Describe and check a GGUF file (``inspect out.gguf``, ``verify out.gguf``) with gguf's ``GGUFReader``.

The reader memory-maps the file and parses only the header, metadata and tensor infos: cheap even for a
large model. ``verify`` checks the structure — every tensor whole blocks of its type, its offset aligned,
its bytes inside the file and not overlapping another's — and the keys a loader needs (architecture, block
count, a vocabulary as large as the model's); it does not read the weights.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType

from ...errors import InputError, VerificationError

__all__ = ["GGUFReport", "describe_gguf", "verify_gguf"]

_SUMMARY_KEYS = ("general.name", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre")
_FILE_TYPE_NAMES = {0: "f32", 1: "f16", 7: "q8_0", 32: "bf16"}


@dataclass(frozen=True)
class GGUFReport:
    """What a GGUF file holds: architecture, scalar metadata, tensors by type, and structural problems."""

    path: Path
    arch: str | None
    metadata: dict[str, Any]  # scalar and string values; arrays as their length
    tensor_count: int
    tensor_bytes: int
    file_bytes: int
    types: dict[str, int]  # GGUF tensor type → tensors of that type
    problems: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        name = self.metadata.get("general.name") or self.path.stem
        kind = _FILE_TYPE_NAMES.get(self.metadata.get("general.file_type", -1), "mixed")
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items()))
        blocks = self.metadata.get(f"{self.arch}.block_count", "?")
        vocab = self.metadata.get("tokenizer.ggml.tokens", "?")
        return (
            f"a GGUF file: {name} ({self.arch}, {blocks} blocks, vocabulary {vocab}, {kind}); "
            f"{self.tensor_count} tensors ({types}), {self.tensor_bytes / 1e9:.2f} GB of tensor data"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": "gguf",
            "summary": self.summary,
            "architecture": self.arch,
            "metadata": self.metadata,
            "tensor_count": self.tensor_count,
            "tensor_bytes": self.tensor_bytes,
            "file_bytes": self.file_bytes,
            "types": self.types,
            "problems": list(self.problems),
        }


def _open(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise InputError(f"{path} is not a readable GGUF file ({exc}); write it again.") from None


def _value(field_: Any) -> Any:
    if field_.types and field_.types[0] == GGUFValueType.ARRAY:
        return len(field_.data)
    return field_.contents()


def describe_gguf(path: str | os.PathLike[str]) -> GGUFReport:
    """Read a GGUF file's header, metadata and tensor infos, and check its structure."""
    path = Path(path)
    reader = _open(path)
    metadata = {f.name: _value(f) for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    arch = metadata.get("general.architecture")
    alignment = int(metadata.get("general.alignment", 32))
    file_bytes = path.stat().st_size
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for t in reader.tensors:
        block, type_size = GGML_QUANT_SIZES[t.tensor_type]
        n = math.prod(int(s) for s in t.shape)
        if n % block:
            problems.append(f"{t.name}: {n} values are not whole {t.tensor_type.name} blocks of {block}")
        expected = n // block * type_size
        if (t.data_offset - reader.data_offset) % alignment:
            problems.append(f"{t.name}: data not aligned to {alignment} bytes")
        if t.data_offset + expected > file_bytes:
            problems.append(f"{t.name}: data runs past the end of the file (truncated?)")
        spans.append((t.data_offset, t.data_offset + expected, t.name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            problems.append(f"{a} and {b} overlap")
    if arch is None:
        problems.append("no general.architecture")
    else:
        blocks = metadata.get(f"{arch}.block_count")
        if blocks is None:
            problems.append(f"no {arch}.block_count")
        elif any(name.startswith("blk.") and int(name.split(".")[1]) >= blocks for _, _, name in spans):
            problems.append(f"tensors of blocks beyond {arch}.block_count {blocks}")
        vocab = metadata.get(f"{arch}.vocab_size")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if vocab is not None and tokens is not None and vocab != tokens:
            problems.append(f"{arch}.vocab_size {vocab} but {tokens} tokens")
    return GGUFReport(
        path=path,
        arch=arch,
        metadata=metadata,
        tensor_count=len(reader.tensors),
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        file_bytes=file_bytes,
        types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        problems=tuple(problems),
    )


def verify_gguf(path: str | os.PathLike[str]) -> GGUFReport:
    """``describe_gguf``, raising ``VerificationError`` (first problem, and how many) if the structure is wrong."""
    report = describe_gguf(path)
    if report.problems:
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        raise VerificationError(f"{report.path}: {report.problems[0]}{more}; the file is damaged — write it again.")
    return report
