"""The Llama 4 family's spec: what was recognised about a Scout- or Maverick-shaped checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import ModelSpec
from .fp8 import Llama4Fp8
from .params import Llama4Params

__all__ = ["Llama4Spec"]


@dataclass(frozen=True)
class Llama4Spec(ModelSpec):
    """A Llama 4 checkpoint: its arguments, vocabulary and the decisions taken."""

    params: Llama4Params
    vocab_size: int
    variant: str  # "Scout" (MoE in every layer) or "Maverick" (dense and MoE layers interleaved)
    size: str  # "17B-16E" for the releases, else a parameter count
    instruct_reason: str
    fp8: Llama4Fp8 | None = None  # Maverick FP8: float8 routed experts + scale files, dequantized

    @property
    def has_vision(self) -> bool:
        return self.params.vision is not None
