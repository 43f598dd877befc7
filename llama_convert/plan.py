"""The conversion plan: which output tensor comes from which source tensors, by which steps, into which file.

Family-agnostic and pure: families emit ``TensorRecipe`` values, ``build_plan`` groups them into output
files, and nothing here reads a byte. The executor (``execute.py``) runs a plan forwards; every step is
invertible (merge ↔ split over model-parallel shards, view, take ↔ place, transpose, rotary permutation,
KV-head fold ↔ repeat, cast), so the reverse direction runs the same recipes backwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .dtypes import DType
from .errors import ConversionError
from .formats.meta.torch_zip import TorchCheckpoint
from .spec import ModelSpec

__all__ = [
    "ConversionPlan",
    "LoraDelta",
    "MetaLayout",
    "OutputFile",
    "Part",
    "Scale",
    "StackedRecipe",
    "TensorRecipe",
    "TiedRows",
    "assembled_shape",
    "build_plan",
    "merged_shape",
    "parse_size",
    "piece_shape",
    "split_into_files",
]


@dataclass(frozen=True)
class Scale:
    """The FP8 scales of a quantized part: each shard's float32 scale tensor, ``keys[rank]`` in
    ``files[rank]`` (a ``torch.save`` dict beside the shard). The shard's stored float8 values are
    dequantized as ``q.float() * scale`` and rounded once to bf16 before anything else happens.

    ``group_rows == 0``: one scale per stored row (Llama 3: ``scale[:, None]``). ``group_rows > 0``: the
    scale tensor is ``[groups, C]`` with C the stored tensor's last dim; the stored tensor seen as rows of C
    values is ``group_rows`` such rows per group (Llama 4 experts: per (expert, output column)).
    """

    files: tuple[str, ...]
    keys: tuple[str, ...]
    group_rows: int = 0

    def describe(self) -> str:
        return f"× fp8 scale {self.keys[0]}" + ("" if len(self.keys) == 1 else f" (… {self.keys[-1]})")


@dataclass(frozen=True)
class Part:
    """One source tensor merged over the model-parallel shards.

    Each shard's stored tensor is first viewed as ``view`` (same bytes; ``None``: as stored), then rows
    ``take`` of its axis 0 are kept (``None``: all; a fused tensor such as ``wqkv`` holds several parts),
    then the shards are concatenated along ``mp_axis`` (``None``: replicated, shard 0 is read).
    With ``zeros`` the part has that shape and dtype but holds zeros, read from nowhere (padding rows such
    as Mllama's per-aspect-ratio embeddings; the reverse direction checks them and drops them).
    """

    source: str
    mp_axis: int | None
    view: tuple[int, ...] | None = None
    take: tuple[int, int] | None = None
    zeros: bool = False
    scale: Scale | None = None  # float8 storage: dequantized per shard, as bf16 from then on

    def describe(self) -> str:
        if self.zeros:
            rows = self.take[1] - self.take[0] if self.take else (self.view[0] if self.view else "all")
            return f"zeros: {rows} row(s) shaped like {self.source}" + (f" as {list(self.view)}" if self.view else "")
        text = self.source
        if self.view is not None:
            text += f" as {list(self.view)}"
        if self.take is not None:
            text += f" rows {self.take[0]}:{self.take[1]}"
        if self.scale is not None:
            text += f" {self.scale.describe()}"
        return text + (" (replicated)" if self.mp_axis is None else f" ⊕ shards on dim {self.mp_axis}")


@dataclass(frozen=True)
class LoraDelta:
    """A low-rank delta added to a recipe's output: ``scale · B @ A`` from an adapter file, in float32.

    ``B`` ([out, r]) and ``A`` ([r, in]) are read from ``weights`` under ``b_key`` and ``a_key``. The delta
    is in Hugging Face's basis; with ``head_dim`` (q/k projections) Hugging Face's rows are Meta's rows
    with each head's rotary pairs moved to halves, so a recipe whose output keeps Meta's order (GGUF,
    Meta shards) gets ``B``'s rows moved back (the inverse of the recipe's rotary step).
    """

    weights: str
    a_key: str
    b_key: str
    scale: float
    rank: int
    head_dim: int = 0
    digest: str = ""  # sha256 of the adapter's files: part of the plan, hence of a resumed run's identity
    magnitude_key: str = ""  # DoRA: rows of W + delta are rescaled to these norms (one per output row)

    def describe(self, meta_order: bool = False) -> str:
        """The step as text; ``meta_order``: added to rows in Meta's rotary order (B's rows moved back)."""
        where = Path(self.weights).parent.name + (f" {self.digest[:12]}" if self.digest else "")
        moved = ", B's rows halves → pairs" if meta_order and self.head_dim else ""
        dora = ", rows rescaled to DoRA magnitudes" if self.magnitude_key else ""
        return f"+ {self.scale:g}·B·A in float32 (LoRA rank {self.rank}{moved}{dora}, {where})"


@dataclass(frozen=True)
class TensorRecipe:
    """How one output tensor is made.

    The merged ``parts`` are concatenated along ``cat_axis``; the result is transposed (2-D, small tensors
    only) if ``transpose``; seen as rows of ``head_dim`` per head, every ``kv_fold``-th head is kept (the
    others are verified to be copies) and, with ``rotary_heads``, each head's rows are reordered from
    Meta's interleaved rotary pairs to Hugging Face's halves; the bytes are then read as ``shape``
    (C order) and cast to ``dtype``.
    """

    name: str
    parts: tuple[Part, ...]
    shape: tuple[int, ...]
    dtype: DType
    source_dtype: DType
    cat_axis: int = 0
    transpose: bool = False
    rotary_heads: int | None = None
    kv_fold: int = 1
    head_dim: int = 0
    # FP8 outputs (--keep-fp8): "scales": the parts' stored FP8 scales as [rows, 1] float32;
    # "requantized" / "requantized_scales": the assembled (dequantized) rows requantized with fbgemm's
    # row-wise rule, the float8 bytes / their [rows, 1] scales.
    fp8: Literal["scales", "requantized", "requantized_scales"] | None = None
    deltas: tuple[LoraDelta, ...] = ()  # LoRA deltas added in float32 before the cast (rounded once)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def source(self) -> str:
        """The first (usually the only) source tensor."""
        return self.parts[0].source

    @property
    def row_unit(self) -> int:
        """Rows that must be produced together (a whole head when heads are reordered or folded)."""
        return self.head_dim if (self.rotary_heads or self.kv_fold > 1) else 1

    def steps(self) -> list[str]:
        """The recipe as readable steps, for ``inspect --plan``."""
        steps = [p.describe() for p in self.parts]
        if len(self.parts) > 1:
            steps.append(f"concat parts on dim {self.cat_axis}")
        if self.transpose:
            steps.append("transpose")
        if self.kv_fold > 1:
            steps.append(f"keep every {self.kv_fold}th KV head (copies checked)")
        if self.rotary_heads:
            steps.append(f"rotary pairs → halves ({self.rotary_heads} heads of {self.head_dim})")
        steps += [d.describe(meta_order=not self.rotary_heads) for d in self.deltas]
        if self.fp8 == "scales":
            steps.append("their fp8 scales as [rows, 1]")
        elif self.fp8:
            steps.append(
                "requantized per full row (fbgemm: rowmax/448, e4m3 RNE)" + (", scales" if "scales" in self.fp8 else "")
            )
        elif self.dtype != self.source_dtype:
            steps.append(f"cast {self.source_dtype} → {self.dtype}")
        return steps


@dataclass(frozen=True)
class StackedRecipe:
    """One tensor made of several recipes' outputs one after another, stacked on a new leading axis (GGUF's
    3-D expert tensors: one 2-D recipe per expert)."""

    name: str
    shape: tuple[int, ...]
    recipes: tuple[TensorRecipe, ...]

    @property
    def source(self) -> str:
        return self.recipes[0].source

    @property
    def source_dtype(self) -> DType:
        return self.recipes[0].source_dtype


@dataclass(frozen=True)
class TiedRows:
    """A source tensor the Hugging Face folder leaves out because the model ties it to one it writes: every
    row of ``dropped`` (a source name) must equal the written tensor ``kept`` (an output name). Sampled rows
    decided the tie; all rows are compared after the stream, else ``mismatch`` is raised."""

    kept: str
    dropped: str
    mismatch: str


@dataclass(frozen=True)
class OutputFile:
    """One output weight file and the tensors it holds, in write order."""

    name: str
    tensors: tuple[TensorRecipe, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class ConversionPlan:
    """Everything a conversion will write, decided before any byte is read."""

    spec: ModelSpec
    dtype: DType
    files: tuple[OutputFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.nbytes for f in self.files)

    @property
    def tensors(self) -> tuple[TensorRecipe, ...]:
        return tuple(t for f in self.files for t in f.tensors)

    @property
    def notes(self) -> tuple[str, ...]:
        return self.spec.notes

    @property
    def headline(self) -> str:
        spec = self.spec
        return (
            f"{spec.summary}, MP{spec.mp}, {spec.source_dtype} → {self.dtype}, {len(self.files)} file(s), "
            f"{self.total_size / 1e9:.2f} GB"
        )

    def lines(self) -> list[str]:
        """The plan as text for ``--dry-run`` and ``inspect --plan``: every file and tensor with its steps."""
        out = []
        for f in self.files:
            out.append(f"{f.name}  ({f.nbytes / 1e9:.2f} GB)")
            out += [f"  {t.name} {list(t.shape)} {t.dtype} ← {'; '.join(t.steps())}" for t in f.tensors]
        return out

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data: each output tensor with its sources, steps, dtype, shape and file."""
        return {
            "model": self.spec.name,
            "family": self.spec.family,
            "dtype": self.dtype.torch_name,
            "total_bytes": self.total_size,
            "files": [
                {
                    "name": f.name,
                    "bytes": f.nbytes,
                    "tensors": [
                        {
                            "name": t.name,
                            "shape": list(t.shape),
                            "dtype": t.dtype.torch_name,
                            "sources": [p.source for p in t.parts],
                            "steps": t.steps(),
                        }
                        for t in f.tensors
                    ],
                }
                for f in self.files
            ],
        }


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``"5GB"`` → 5_000_000_000 (decimal units as transformers uses; ``GiB`` binary)."""
    if isinstance(text, int):
        return text
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("KMGTIB")
    unit = value[len(number) :]
    if not number or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 5GB, 500MB or 2GiB")
    return int(float(number) * _UNITS[unit])


def split_into_files(recipes: list[TensorRecipe], max_shard_size: int) -> tuple[OutputFile, ...]:
    """Greedy safetensors shards of at most ``max_shard_size`` bytes (a larger tensor gets its own file),
    named as transformers names them."""
    groups: list[list[TensorRecipe]] = [[]]
    size = 0
    for recipe in recipes:
        if groups[-1] and size + recipe.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(recipe)
        size += recipe.nbytes
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return tuple(OutputFile(name, tuple(g)) for name, g in zip(names, groups, strict=True))


def build_plan(
    spec: ModelSpec,
    recipes: list[TensorRecipe],
    *,
    dtype: DType,
    max_shard_size: int = 5 * 10**9,
    source_order: list[str] | None = None,
) -> ConversionPlan:
    """Order ``recipes`` as their first sources lie in the first shard (sequential reads) and split them
    into files of at most ``max_shard_size`` bytes."""
    if source_order:
        position = {name: i for i, name in enumerate(source_order)}
        recipes = sorted(recipes, key=lambda r: position.get(r.source, len(position)))
    return ConversionPlan(spec, dtype, split_into_files(recipes, max_shard_size))


def piece_shape(part: Part, stored: tuple[int, ...]) -> tuple[int, ...]:
    view = part.view or stored
    if math.prod(view) != math.prod(stored):
        raise ConversionError(f"{part.source}: a tensor of shape {list(stored)} cannot be viewed as {list(view)}.")
    if part.take is None:
        return tuple(view)
    return (part.take[1] - part.take[0], *view[1:])


def merged_shape(part: Part, shards: Sequence[TorchCheckpoint]) -> tuple[int, ...]:
    """Shape of one part after viewing, taking and merging over the shards."""
    shape = list(piece_shape(part, shards[0].tensors[part.source].shape))
    if part.mp_axis is not None:
        shape[part.mp_axis] *= len(shards)
    return tuple(shape)


def assembled_shape(recipe: TensorRecipe, shards: Sequence[TorchCheckpoint]) -> tuple[int, ...]:
    """Shape of the parts concatenated along ``cat_axis`` (before transpose, folding and reshape)."""
    shapes = [merged_shape(p, shards) for p in recipe.parts]
    out = list(shapes[0])
    out[recipe.cat_axis] = sum(s[recipe.cat_axis] for s in shapes)
    return tuple(out)


@dataclass(frozen=True)
class MetaLayout:
    """A Meta checkpoint to write from a Hugging Face folder (or from another Meta checkpoint).

    ``recipes`` are the forward recipes of ``spec`` (the checkpoint being written): run backwards they name
    every Meta tensor and the Hugging Face tensor it comes from. ``aliases`` name a stored tensor under a
    recipe's name (a tied ``lm_head.weight`` is the embedding); ``constants`` are tensors Meta ships that no
    Hugging Face tensor holds (float32, replicated); ``ignored_suffixes`` are stored tensors that are dropped
    with a note. ``order`` sorts Meta tensors as Meta's shards store them; ``shard_shapes`` gives the stored
    per-shard shape of tensors read through views or as one of several parts.
    """

    spec: Any  # the family's ModelSpec of the written checkpoint
    dtype: DType
    recipes: list[TensorRecipe]
    small_files: dict[str, bytes]  # params.json, tokenizer.model
    aliases: dict[str, str] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    ignored_suffixes: tuple[str, ...] = ()
    order: Callable[[str], int] = lambda name: 0
    notes: tuple[str, ...] = ()
    shard_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # stored shape per shard, where a
    # recipe alone does not imply it (views, fused or concatenated parts)
