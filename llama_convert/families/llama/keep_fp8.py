"""``--keep-fp8``: Llama 3.1 405B FP8 as an ``fbgemm_fp8`` Hugging Face folder, laid out as
``meta-llama/Llama-3.1-405B-Instruct-FP8`` (read by transformers' ``integrations/fbgemm_fp8.py`` and vLLM).

Each quantized Linear has ``weight`` (F8_E4M3, [out, in]) and ``weight_scale`` (float32, [out, 1]).
``gate_proj``/``up_proj`` (Meta's ``w1``/``w3``) are column-parallel: their rows and per-row scales
concatenate over the shards exactly, so bytes and scales are Meta's. ``down_proj`` (``w2``) is row-parallel:
each shard scaled its own slice of every output row, which one per-row scale cannot express, so it is
requantized per full row from the exact dequantized values with fbgemm's rule (the largest relative change
is reported). Everything else is the bf16 conversion, unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...dtypes import F8_E4M3, F32
from ...plan import TensorRecipe
from .fp8 import FFN_KEYS, Fp8Facts

__all__ = ["ACTIVATION_SCALE_UB", "keep_fp8_recipes", "quantization_config"]

ACTIVATION_SCALE_UB = 1200.0  # llama_models' loader default (fp8_activation_scale_ub), not stored by Meta
_HF = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def keep_fp8_recipes(plain: list[TensorRecipe], facts: Fp8Facts) -> list[TensorRecipe]:
    """``plain`` (the bf16 recipes, no scales) with every quantized weight kept in FP8 plus its scale."""
    quantized = {f"layers.{i}.feed_forward.{w}.weight": (i, w) for i in facts.layers for w in FFN_KEYS}
    out: list[TensorRecipe] = []
    for r in plain:
        if r.source not in quantized:
            out.append(r)
            continue
        layer, key = quantized[r.source]
        (part,) = r.parts
        scaled = dataclasses.replace(part, scale=facts.scale(layer, key))
        rows = r.shape[0]
        scale_name = r.name + "_scale"
        if key in ("w1", "w3"):  # Meta's bytes and scales, rows concatenated over the shards
            out.append(dataclasses.replace(r, dtype=F8_E4M3, source_dtype=F8_E4M3))
            out.append(TensorRecipe(scale_name, (scaled,), (rows, 1), F32, F8_E4M3, fp8="scales"))
        else:
            deq = dataclasses.replace(r, parts=(scaled,))
            out.append(dataclasses.replace(deq, dtype=F8_E4M3, fp8="requantized"))
            out.append(dataclasses.replace(deq, name=scale_name, shape=(rows, 1), dtype=F32, fp8="requantized_scales"))
    return out


def modules_to_not_convert(n_layers: int, quantized: tuple[int, ...]) -> list[str]:
    """Every Linear left in bf16, as full module paths in model order: all attention projections, the MLPs of
    the layers Meta did not quantize (the first and the last), and ``lm_head``."""
    out = []
    for i in range(n_layers):
        out += [f"model.layers.{i}.self_attn.{p}" for p in _ATTENTION]
        if i not in quantized:
            out += [f"model.layers.{i}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    return [*out, "lm_head"]


def quantization_config(n_layers: int, facts: Fp8Facts) -> dict[str, Any]:
    return {
        "quant_method": "fbgemm_fp8",
        "activation_scale_ub": ACTIVATION_SCALE_UB,
        "modules_to_not_convert": modules_to_not_convert(n_layers, facts.layers),
    }
