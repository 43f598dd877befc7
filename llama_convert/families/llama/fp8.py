"""Llama 3.1 405B FP8 (Meta's ``fp8_mixed`` layout): what is quantized, where its scales are, and the recipes.

Facts (``llama_models/llama3/quantization/loader.py``): the FFN ``w1``, ``w3``, ``w2`` of every layer but
the first and the last are stored as float8_e4m3fn under their usual names; shard ``rank`` has
``fp8_scales_{rank}.pt``, a dict of float32 vectors keyed ``"{layer}_feed_forward.{w}_{rank}"``, one value per
stored row of that shard's slice (fbgemm row-wise: the matmul multiplies each output row by it). The
weight the model computes with is therefore ``q.float() * scale[:, None]``; converted to bf16 it is rounded
once. FP8 is decided from the tensors' dtype and the scale files, never from the folder's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ...formats.meta.fp8_scales import check_float8_placement, check_scale_files, float8_scale_files
from ...formats.meta.torch_zip import TorchCheckpoint
from ...plan import Part, Scale, TensorRecipe

__all__ = ["FFN_KEYS", "Fp8Facts", "dequantized", "quantized_layers", "recognise_fp8", "scale_key"]

FFN_KEYS = ("w1", "w3", "w2")


@dataclass(frozen=True)
class Fp8Facts:
    """An FP8 checkpoint: its scale files (one per shard) and the layers whose FFN is float8."""

    scale_files: tuple[Path, ...]
    layers: tuple[int, ...]
    keep: bool = False  # --keep-fp8: write the float8 weights with their scales (fbgemm_fp8), not bf16

    def scale(self, layer: int, key: str) -> Scale:
        files = tuple(str(p) for p in self.scale_files)
        return Scale(files, tuple(scale_key(layer, key, rank) for rank in range(len(files))))


def scale_key(layer: int, key: str, rank: int) -> str:
    return f"{layer}_feed_forward.{key}_{rank}"


def quantized_layers(n_layers: int) -> tuple[int, ...]:
    """Meta's loader skips the first and the last layer."""
    return tuple(range(1, n_layers - 1))


def recognise_fp8(root: Path, checkpoints: list[TorchCheckpoint], n_layers: int) -> Fp8Facts | None:
    """None for a checkpoint without float8 tensors; else the facts, after every check (one sentence each)."""
    files = float8_scale_files(root, checkpoints)
    if files is None:
        return None
    layers = quantized_layers(n_layers)
    expected = {f"layers.{i}.feed_forward.{w}.weight" for i in layers for w in FFN_KEYS}
    check_float8_placement(root, checkpoints, files, expected, f"the FFN weights of layers 1…{n_layers - 2}")
    want = []
    for rank, ckpt in enumerate(checkpoints):
        shapes = {}
        for i in layers:
            for w in FFN_KEYS:
                shapes[scale_key(i, w, rank)] = (ckpt.tensors[f"layers.{i}.feed_forward.{w}.weight"].shape[0],)
        want.append(shapes)
    check_scale_files(files, want)
    return Fp8Facts(files, layers)


def dequantized(recipes: list[TensorRecipe], facts: Fp8Facts) -> list[TensorRecipe]:
    """The recipes with every float8 part scaled (dequantized per shard to bf16)."""
    scaled: dict[str, Scale] = {
        f"layers.{i}.feed_forward.{w}.weight": facts.scale(i, w) for i in facts.layers for w in FFN_KEYS
    }

    def part(p: Part) -> Part:
        return dataclasses.replace(p, scale=scaled[p.source]) if p.source in scaled else p

    return [dataclasses.replace(r, parts=tuple(part(p) for p in r.parts)) for r in recipes]
