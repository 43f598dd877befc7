"""The model families, tried in order: the first whose evidence matches claims the checkpoint.

Adding a family: write ``families/<name>/`` implementing ``base.Family`` and add one line here.
"""

from __future__ import annotations

from ..formats.meta.folder import MetaFolder
from ..formats.meta.torch_zip import TorchCheckpoint
from .base import Evidence, Family, Hints, ModelSpec
from .llama import FAMILY as LLAMA
from .llama4 import FAMILY as LLAMA4
from .mllama import FAMILY as MLLAMA

__all__ = ["FAMILIES", "Evidence", "Family", "Hints", "ModelSpec", "family_of", "recognise"]

# Specific families first; Llama text last, since it claims any checkpoint with ``layers.0.attention.wq``.
FAMILIES: tuple[Family, ...] = (LLAMA4, MLLAMA, LLAMA)


def recognise(folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> ModelSpec:
    """The spec of the first family that claims the checkpoint (the last one raises if nothing fits)."""
    for family in FAMILIES:
        spec = family.recognise(folder, checkpoints, hints)
        if spec is not None:
            return spec
    raise AssertionError("the Llama family claims or refuses every checkpoint")


def family_of(spec: ModelSpec) -> Family:
    """The family that made ``spec``."""
    return next(f for f in FAMILIES if f.name == spec.family)
