"""What a family tells the way back: the Meta checkpoint to write, as a value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import DType
from ..plan import TensorRecipe

__all__ = ["MetaLayout"]


@dataclass(frozen=True)
class MetaLayout:
    """A Meta checkpoint to write from a Hugging Face folder (or from another Meta checkpoint).

    ``recipes`` are the forward recipes of ``spec`` (the checkpoint being written): run backwards they name
    every Meta tensor and the Hugging Face tensor it comes from. ``aliases`` name a stored tensor under a
    recipe's name (a tied ``lm_head.weight`` is the embedding); ``constants`` are tensors Meta ships that no
    Hugging Face tensor holds (float32, replicated); ``ignored_suffixes`` are stored tensors that are dropped
    with a note. ``order`` sorts Meta tensors as Meta's shards store them.
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
