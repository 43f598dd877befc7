"""The conversion plan: which output tensor comes from which source tensors, how, into which file.

A pure function of the ModelSpec and the tensor order of the source: no bytes are read.
The executor (``execute.py``) runs the plan; ``--dry-run`` prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .dtypes import DType
from .spec import LAYER_TENSORS, ModelSpec

__all__ = ["ConversionPlan", "OutputFile", "TensorRecipe", "build_plan", "parse_size"]


@dataclass(frozen=True)
class TensorRecipe:
    """How one Hugging Face tensor is made from the same-named tensor of every Meta shard.

    Merge the shards' tensors along ``concat_dim`` (``None``: replicated, take shard 0);
    if ``kv_fold`` > 1 keep every ``kv_fold``-th head of ``head_dim`` rows (the others are
    verified to be copies); if ``rotary_heads`` is set, reorder each head's rows from Meta's
    interleaved rotary pairs to Hugging Face's halves; finally cast to ``dtype``.
    """

    name: str
    source: str
    shape: tuple[int, ...]
    dtype: DType
    source_dtype: DType
    concat_dim: int | None
    rotary_heads: int | None = None
    kv_fold: int = 1
    head_dim: int = 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_unit(self) -> int:
        """Output rows that must be produced together (a whole head when heads are reordered)."""
        return self.head_dim if (self.rotary_heads or self.kv_fold > 1) else 1


@dataclass(frozen=True)
class OutputFile:
    """One safetensors file and the tensors it holds, in write order."""

    name: str
    tensors: tuple[TensorRecipe, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class ConversionPlan:
    spec: ModelSpec
    dtype: DType
    files: tuple[OutputFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.nbytes for f in self.files)

    @property
    def tensors(self) -> tuple[TensorRecipe, ...]:
        return tuple(t for f in self.files for t in f.tensors)


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


def _recipes(spec: ModelSpec, dtype: DType) -> list[TensorRecipe]:
    p = spec.params
    hd = p.head_dim
    vocab = spec.vocab_size
    out: list[TensorRecipe] = [
        TensorRecipe(
            "model.embed_tokens.weight",
            "tok_embeddings.weight",
            (vocab, p.dim),
            dtype,
            spec.source_dtype,
            spec.release.embedding_split_dim,
        ),
        TensorRecipe("model.norm.weight", "norm.weight", (p.dim,), dtype, spec.source_dtype, None),
    ]
    if not spec.tie_embeddings:
        out.append(TensorRecipe("lm_head.weight", "output.weight", (vocab, p.dim), dtype, spec.source_dtype, 0))
    kv = spec.n_kv_heads
    shapes = {
        "attention.wq.weight": (p.n_heads * hd, p.dim),
        "attention.wk.weight": (kv * hd, p.dim),
        "attention.wv.weight": (kv * hd, p.dim),
        "attention.wo.weight": (p.dim, p.n_heads * hd),
        "feed_forward.w1.weight": (p.intermediate_size, p.dim),
        "feed_forward.w2.weight": (p.dim, p.intermediate_size),
        "feed_forward.w3.weight": (p.intermediate_size, p.dim),
        "attention_norm.weight": (p.dim,),
        "ffn_norm.weight": (p.dim,),
    }
    for i in range(p.n_layers):
        for suffix, (hf_suffix, split) in LAYER_TENSORS.items():
            rotary = {"attention.wq.weight": p.n_heads, "attention.wk.weight": kv}.get(suffix)
            fold = spec.kv_fold if suffix in ("attention.wk.weight", "attention.wv.weight") else 1
            out.append(
                TensorRecipe(
                    f"model.layers.{i}.{hf_suffix}",
                    f"layers.{i}.{suffix}",
                    shapes[suffix],
                    dtype,
                    spec.source_dtype,
                    split,
                    rotary_heads=rotary,
                    kv_fold=fold,
                    head_dim=hd,
                )
            )
    return out


def build_plan(
    spec: ModelSpec,
    *,
    dtype: DType | None = None,
    max_shard_size: int = 5 * 10**9,
    source_order: list[str] | None = None,
) -> ConversionPlan:
    """Plan the conversion: tensors in the source file's order (sequential reads), split greedily
    into files of at most ``max_shard_size`` bytes (a larger single tensor gets a file of its own)."""
    dtype = dtype or spec.source_dtype
    recipes = _recipes(spec, dtype)
    if source_order:
        position = {name: i for i, name in enumerate(source_order)}
        recipes.sort(key=lambda r: position.get(r.source, len(position)))
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
    files = tuple(OutputFile(name, tuple(g)) for name, g in zip(names, groups, strict=True))
    return ConversionPlan(spec, dtype, files)
