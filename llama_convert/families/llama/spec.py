"""The Llama text family's spec: what was detected about a Llama 1/2/Code Llama/3.x/Guard checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from ...formats.meta.folder import MetaParams
from ..base import ModelSpec
from .fp8 import Fp8Facts
from .guard import GuardFacts
from .releases import Release

__all__ = ["LlamaSpec"]


@dataclass(frozen=True)
class LlamaSpec(ModelSpec):
    """A Llama text checkpoint: the release, its effective arguments and the layout decisions."""

    release: Release
    params: MetaParams  # as found; see the properties below for the effective values
    vocab_size: int
    size: str
    instruct_reason: str
    version_reason: str
    kv_fold: int  # >1: Meta's resharder repeated each KV head this often; folded back
    tie_embeddings: bool
    rope_scaling_factor: float | None  # llama3-type rope scaling factor, None without scaling
    guard: GuardFacts | None  # the Llama Guard release, None otherwise
    fp8: Fp8Facts | None = None  # Meta's FP8 release: float8 FFN weights + scale files, dequantized

    @property
    def n_kv_heads(self) -> int:
        """KV heads of the converted model (after folding duplicates)."""
        return self.params.n_kv_heads // self.kv_fold

    @property
    def rope_theta(self) -> float:
        return self.params.rope_theta if self.params.rope_theta is not None else self.release.default_rope_theta
