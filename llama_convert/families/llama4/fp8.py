"""Llama 4 Maverick FP8 (Meta's ``fp8_mixed``): the routed experts, dequantized exactly as Meta's loader runs them.

Facts (``llama_models/llama4/scripts/quantize.py`` and ``quantization/loader.py``): only the routed experts of
the MoE layers other than the first and the last are float8_e4m3fn, stored under the shipped 2-D names
(``moe_w_in_eD_F`` / ``moe_w_swiglu_eD_F`` [E·D, F/mp], ``moe_w_out_eF_D`` [E·F/mp, D]). fbgemm quantized
``param.transpose(1, 2)`` of the model's (E, D, F) / (E, F, D) weights row-wise and saved the scales *not*
transposed back, keyed ``layers.L.feed_forward.experts.{w1|w3|w2}`` in ``fp8_scales_{rank}.pt``: shape
[E, F/mp] for w1/w3 and [E, D] for w2, i.e. one scale per (expert, column of the stored tensor). The weight
the model computes with is ``q.float() * scale[e, column]``, rounded once to bf16 here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ...formats.meta.fp8_scales import check_float8_placement, check_scale_files, float8_scale_files
from ...formats.meta.torch_zip import TorchCheckpoint
from ...plan import Part, Scale, TensorRecipe
from .params import Llama4Params

__all__ = ["EXPERT_TENSORS", "Llama4Fp8", "dequantized", "quantized_layers", "recognise_fp8"]

EXPERT_TENSORS = {"w1": "moe_w_in_eD_F", "w3": "moe_w_swiglu_eD_F", "w2": "moe_w_out_eF_D"}


@dataclass(frozen=True)
class Llama4Fp8:
    """An FP8 Llama 4 checkpoint: its scale files (one per shard) and the layers whose experts are float8."""

    scale_files: tuple[Path, ...]
    layers: tuple[int, ...]


def quantized_layers(p: Llama4Params) -> tuple[int, ...]:
    return tuple(i for i in range(1, p.n_layers - 1) if p.is_moe_layer(i))


def _stored(layer: int, key: str) -> str:
    return f"layers.{layer}.feed_forward.experts.{EXPERT_TENSORS[key]}"


def scale_key(layer: int, key: str) -> str:
    return f"layers.{layer}.feed_forward.experts.{key}"


def recognise_fp8(root: Path, checkpoints: list[TorchCheckpoint], p: Llama4Params) -> Llama4Fp8 | None:
    """None without float8 tensors; else the facts, after every check (one sentence each)."""
    files = float8_scale_files(root, checkpoints)
    if files is None:
        return None
    layers = quantized_layers(p)
    expected = {_stored(i, w) for i in layers for w in EXPERT_TENSORS}
    what = "the routed experts of the MoE layers other than the first and the last (Llama 4)"
    check_float8_placement(root, checkpoints, files, expected, what)
    e, d, f_local = p.moe.num_experts, p.dim, p.moe_hidden_dim // len(checkpoints)
    shapes = {"w1": (e, f_local), "w3": (e, f_local), "w2": (e, d)}
    check_scale_files(files, [{scale_key(i, w): shapes[w] for i in layers for w in shapes} for _ in checkpoints])
    return Llama4Fp8(files, layers)


def dequantized(recipes: list[TensorRecipe], facts: Llama4Fp8, p: Llama4Params, mp: int) -> list[TensorRecipe]:
    """The recipes with every float8 expert part scaled per (expert, column), dequantized per shard."""
    files = tuple(str(f) for f in facts.scale_files)
    group = {"w1": p.dim, "w3": p.dim, "w2": p.moe_hidden_dim // mp}  # stored rows of one expert
    scaled = {
        _stored(i, w): Scale(files, (scale_key(i, w),) * len(files), group_rows=group[w])
        for i in facts.layers
        for w in EXPERT_TENSORS
    }

    def part(q: Part) -> Part:
        return dataclasses.replace(q, scale=scaled[q.source]) if q.source in scaled else q

    return [dataclasses.replace(r, parts=tuple(part(q) for q in r.parts)) for r in recipes]
