"""LoRA adapters in a conversion (``--adapter``): read each folder, check it against the model, and give the
tensors it adapts their deltas.

An adapter names Hugging Face modules (``model.layers.3.self_attn.q_proj``), so its deltas are first resolved
against the model's Hugging Face tensors (shapes checked, q/k marked with their head size: Hugging Face's
rows of those are Meta's rotary pairs moved to halves); each route then hangs them on its own tensors —
the Hugging Face recipes as they are, GGUF recipes through the family's GGUF names, Hugging Face rows
read for Meta shards or GGUF before their rotary step. Everything is checked before the first byte is
written; nothing is read from the matrices until their tensor is written.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import ShapeMismatchError, UnsupportedError
from ..families import Family
from ..formats.peft import CONFIG_NAME, Adapter, read_adapter
from ..plan import LoraDelta, TensorRecipe

__all__ = [
    "Deltas",
    "attach",
    "check_base",
    "check_family",
    "hf_deltas",
    "load_adapters",
    "merged_note",
    "recipe_head_dims",
]

Deltas = dict[str, tuple[LoraDelta, ...]]  # Hugging Face tensor name → its deltas, in --adapter order

_VERSION = re.compile(r"llama[\s_-]?(\d+(?:\.\d+)?)(?![\d.]|\s?[bm]\b)", re.IGNORECASE)  # not CodeLlama-7b
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s?b(?![a-z])", re.IGNORECASE)


def load_adapters(paths: Iterable[str | os.PathLike[str]]) -> tuple[Adapter, ...]:
    """Read and check every ``--adapter`` folder (configs and headers only)."""
    return tuple(read_adapter(Path(p)) for p in paths)


def check_family(family: Family, adapters: Sequence[Adapter], where: Path | str) -> None:
    """Refuse adapters for a family that does not declare it merges them."""
    if adapters and not family.capabilities.adapters:
        raise UnsupportedError(
            f"{where}: merging LoRA adapters into {family.title} is not supported yet; merge with PEFT first."
        )


def _facts(name: str) -> tuple[str | None, str | None]:
    """(release version, parameter size) a model name states, e.g. ``Llama-3.1-8B`` → ("3.1", "8")."""
    version = _VERSION.search(name)
    size = _SIZE.search(name)

    def norm(value: str) -> str:
        return value.removesuffix(".0")

    return (norm(version[1]) if version else None, norm(size[1]) if size else None)


def check_base(adapters: Sequence[Adapter], model: str, where: Path | str) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` clearly names another release or size."""
    ours = _facts(model)
    for adapter in adapters:
        if adapter.base_model is None:
            continue
        theirs = _facts(Path(adapter.base_model).name or adapter.base_model)
        if any(a is not None and b is not None and a != b for a, b in zip(ours, theirs, strict=True)):
            raise UnsupportedError(
                f"{adapter.root / CONFIG_NAME}: the adapter was trained on {adapter.base_model}, but {where} holds "
                f"{model}; pass the adapter made for this model."
            )


def hf_deltas(
    adapters: Sequence[Adapter],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    head_dims: Mapping[str, int] | None = None,
    model: str,
    where: Path | str,
) -> Deltas:
    """Every adapted Hugging Face tensor of the model (``shapes``) with its deltas. ``head_dims`` marks the
    q/k tensors whose Hugging Face rows are Meta's permuted (see ``plan.LoraDelta``)."""
    check_base(adapters, model, where)
    head_dims = head_dims or {}
    out: dict[str, list[LoraDelta]] = {}
    for adapter in adapters:
        for m in adapter.modules:
            if m.weight not in shapes:
                what = "is tied to the embedding" if m.module == "lm_head" else "has no Linear weight of that name"
                raise UnsupportedError(
                    f"{adapter.weights} adapts {m.module}, but {model} {what}; pass an adapter for this model."
                )
            expected = (m.out_features, m.in_features)
            if tuple(shapes[m.weight]) != expected:
                raise ShapeMismatchError(
                    f"{adapter.weights}: {m.module} makes a delta of shape {list(expected)}, but {model}'s "
                    f"{m.weight} has shape {list(shapes[m.weight])}; pass the adapter made for this model."
                )
            delta = LoraDelta(
                str(adapter.weights), m.a_key, m.b_key, m.scale, m.rank, head_dims.get(m.weight, 0), adapter.digest
            )
            out.setdefault(m.weight, []).append(delta)
    return {name: tuple(ds) for name, ds in out.items()}


def recipe_head_dims(recipes: Iterable[TensorRecipe]) -> dict[str, int]:
    """Head size of the Hugging Face recipes whose rows are rotary-permuted."""
    return {r.name: r.head_dim for r in recipes if r.rotary_heads}


def attach(
    recipes: Sequence[TensorRecipe], deltas: Deltas, name_of: Callable[[str], str] = lambda name: name
) -> list[TensorRecipe]:
    """``recipes`` with the deltas of the tensors they make (``name_of``: Hugging Face name → recipe name)."""
    wanted = {name_of(hf): ds for hf, ds in deltas.items()}
    out = []
    for r in recipes:
        ds = wanted.pop(r.name, None)
        if ds is not None and r.transpose:
            raise UnsupportedError(f"{r.name} is transposed on the way; a LoRA delta cannot be added to it.")
        out.append(r if ds is None else dataclasses.replace(r, deltas=ds))
    if wanted:
        raise UnsupportedError(f"{next(iter(wanted))} is adapted, but the conversion writes no such tensor.")
    return out


def merged_note(deltas: Deltas, adapters: Sequence[Adapter]) -> tuple[str, ...]:
    """The note a conversion with adapters carries."""
    if not adapters:
        return ()
    names = ", ".join(a.root.name for a in adapters)
    return (f"merged {len(adapters)} LoRA adapter(s) ({names}) into {len(deltas)} tensor(s), in float32",)
