"""The plan of a GGUF file, whichever the source (every tensor's entry, where its values come from, the type
mixture), and the resumable loop that writes it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGUFWriter

from ..formats.gguf.writer import GGUFStreamWriter, TensorEntry
from ..plan import LoraDelta, TensorRecipe
from ..spec import ModelSpec

if TYPE_CHECKING:
    from .common import Stage

__all__ = ["METADATA_ALLOWANCE", "GGUFPlan", "GGUFTensor", "write_planned_gguf"]

METADATA_ALLOWANCE = 64 << 20  # header, vocabulary and merges, for the free-space check
CHECKPOINT_BYTES = 512 << 20  # at most this much tensor data is redone after a crash (smaller models: 1/16)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the GGUF file and where its values come from: a recipe over Meta's shards, a Hugging
    Face tensor (``hf_name``, rows un-permuted over ``rotary_heads`` heads when set) or computed ``values``."""

    entry: TensorEntry
    recipe: TensorRecipe | None = None
    values: np.ndarray | None = None
    hf_name: str | None = None
    rotary_heads: int | None = None
    deltas: tuple[LoraDelta, ...] = ()  # LoRA deltas added to the Hugging Face rows (before un-permuting)

    def sources(self) -> list[str]:
        if self.recipe is not None:
            return [p.source for p in self.recipe.parts]
        return [self.hf_name] if self.hf_name else []

    def steps(self) -> list[str]:
        if self.recipe is not None:
            return self.recipe.steps()
        if self.hf_name is not None:
            deltas = [d.describe() for d in self.deltas]
            return [self.hf_name, *deltas] + (["halves → pairs"] if self.rotary_heads else [])
        return ["computed"]


@dataclass(frozen=True)
class GGUFPlan:
    """Everything a GGUF conversion will write, decided before any byte is read. From a Hugging Face folder,
    ``source_root``, its ``config`` and the q/k ``head_dim`` say where the tensors are read."""

    spec: ModelSpec
    outtype: str
    arch: str
    tensors: tuple[GGUFTensor, ...]
    source_root: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    head_dim: int = 0
    extra_notes: tuple[str, ...] = ()

    @property
    def total_size(self) -> int:
        return sum(t.entry.nbytes for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.entry.shape) for t in self.tensors)

    @property
    def notes(self) -> tuple[str, ...]:
        return (*self.spec.notes, *self.extra_notes)

    def type_counts(self) -> dict[str, int]:
        """How many tensors of each GGUF type the file holds (the type mixture)."""
        return dict(Counter(t.entry.qtype.name for t in self.tensors))

    @property
    def headline(self) -> str:
        mixture = ", ".join(f"{n} {name}" for name, n in sorted(self.type_counts().items()))
        return (
            f"{self.spec.name} as GGUF {self.outtype} ({self.arch}), {len(self.tensors)} tensors ({mixture}), "
            f"{self.total_size / 1e9:.2f} GB"
        )

    def lines(self) -> list[str]:
        """The plan as text for ``--dry-run``: every GGUF tensor with its type, shape and sources."""
        out = [f"GGUF file ({self.total_size / 1e9:.2f} GB of tensor data)"]
        out += [
            f"  {t.entry.name} {list(t.entry.shape)} {t.entry.qtype.name} ← {'; '.join(t.steps())}"
            for t in self.tensors
        ]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "family": self.spec.family,
            "format": "gguf",
            "arch": self.arch,
            "outtype": self.outtype,
            "total_bytes": self.total_size,
            "types": self.type_counts(),
            "tensors": [
                {
                    "name": t.entry.name,
                    "shape": list(t.entry.shape),
                    "type": t.entry.qtype.name,
                    "bytes": t.entry.nbytes,
                    "sources": t.sources(),
                    "steps": t.steps(),
                }
                for t in self.tensors
            ],
        }


def write_planned_gguf(
    plan: GGUFPlan,
    stage: Stage,
    writer: GGUFWriter,
    write_tensor: Callable[[GGUFStreamWriter, GGUFTensor, Callable[[int], None]], None],
) -> None:
    """Write ``plan``'s GGUF file at ``stage.path``: the header from ``writer``, then each tensor through
    ``write_tensor``. Every ``CHECKPOINT_BYTES`` the file is fsync'd and the stage records how far it got,
    so a rerun after a crash continues from there (the header is compared byte for byte first)."""
    name = stage.path.name
    kept = stage.checkpoints.get(name)
    resume = (kept.position, kept.sizes[name]) if kept is not None and isinstance(kept.position, int) else None
    stream = GGUFStreamWriter(stage.path, writer, [t.entry for t in plan.tensors], resume=resume)
    start = stream.index
    stage.advance(sum(t.entry.nbytes for t in plan.tensors[:start]))
    every = min(CHECKPOINT_BYTES, max(1, plan.total_size // 16))
    since = 0
    try:
        for i, tensor in enumerate(plan.tensors[start:], start):
            write_tensor(stream, tensor, stage.advance)
            stream.end_tensor()
            since += tensor.entry.nbytes
            if since >= every and i + 1 < len(plan.tensors):
                stream.sync()
                stage.checkpoint(name, [name], i + 1)
                since = 0
    except BaseException:
        stream.abort()
        raise
    stream.close()
