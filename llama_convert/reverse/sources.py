"""Row sources for the way back: a Hugging Face folder, or Meta shards seen through the forward recipes.

Both hand out ranges of elements of the Hugging Face-side tensors (by recipe output name, C order),
which ``invert`` turns back into Meta shards. Resharding is thus Meta → (virtual Hugging Face tensors) →
Meta: the forward executor merges the source shards and folds duplicated KV heads; nothing is written in
between.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..dtypes import DTYPES, DType
from ..execute import DeltaRows, produce_blocks
from ..formats.hf.reader import HFFolder
from ..formats.meta.torch_zip import TorchCheckpoint
from ..plan import LoraDelta, TensorRecipe

__all__ = ["AdaptedRows", "HFRows", "RecipeRows"]


class HFRows:
    """Elements of the tensors of a Hugging Face folder; ``aliases`` name a stored tensor under another name
    (a tied ``lm_head.weight`` is the embedding)."""

    def __init__(
        self, folder: HFFolder, aliases: dict[str, str] | None = None, constants: dict[str, np.ndarray] | None = None
    ) -> None:
        self.folder = folder
        self.aliases = aliases or {}
        self.constants = constants or {}  # small float32 tensors Meta ships but HF does not store

    def dtype_of(self, name: str) -> DType:
        if name in self.constants:
            return DTYPES["float32"]
        return self.folder.tensors[self.aliases.get(name, name)].dtype

    def read_flat(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self.constants:
            return self.constants[name].reshape(-1)[start:stop]
        return self.folder.read_elements(self.aliases.get(name, name), start, stop)


class _Stream:
    """The elements of one recipe's output, handed out as consecutive ranges."""

    def __init__(self, recipe: TensorRecipe, blocks: Iterator[np.ndarray]) -> None:
        self.recipe, self.blocks, self.position = recipe, blocks, 0
        self.buffer: list[np.ndarray] = []
        self.buffered = 0

    def take(self, start: int, stop: int) -> np.ndarray:
        if start < self.position:
            raise RuntimeError(
                f"{self.recipe.name}: elements must be read in order (asked {start}, at {self.position})"
            )
        while self.buffered < stop - self.position:
            block = next(self.blocks).reshape(-1)
            self.buffer.append(block)
            self.buffered += block.shape[0]
        joined = self.buffer[0] if len(self.buffer) == 1 else np.concatenate(self.buffer)
        out = joined[start - self.position : stop - self.position]
        rest = joined[stop - self.position :]
        self.buffer = [rest] if rest.shape[0] else []
        self.buffered = rest.shape[0]
        self.position = stop
        return out


class RecipeRows:
    """Elements of the recipes' outputs, produced from Meta shards by the forward executor (read in order;
    a read from an earlier position starts the recipe again)."""

    def __init__(self, recipes: Sequence[TensorRecipe], shards: Sequence[TorchCheckpoint]) -> None:
        self.recipes = {r.name: r for r in recipes}
        self.shards = shards
        self._streams: dict[str, _Stream] = {}

    def dtype_of(self, name: str) -> DType:
        return self.recipes[name].dtype

    def read_flat(self, name: str, start: int, stop: int) -> np.ndarray:
        stream = self._streams.get(name)
        if stream is None or start < stream.position:
            recipe = self.recipes[name]
            stream = self._streams[name] = _Stream(recipe, produce_blocks(recipe, self.shards))
        out = stream.take(start, stop)
        if stop >= math.prod(self.recipes[name].shape or (1,)):
            del self._streams[name]
        return out


class AdaptedRows:
    """Rows of another source with LoRA deltas added (in the source's Hugging Face basis), as float32: the
    inverse recipes then permute and round them once to the Meta dtype."""

    def __init__(self, source: HFRows, deltas: Mapping[str, tuple[LoraDelta, ...]]) -> None:
        self.source, self.deltas = source, deltas
        self._open: dict[str, DeltaRows] = {}

    def dtype_of(self, name: str) -> DType:
        return DTYPES["float32"] if name in self.deltas else self.source.dtype_of(name)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        rows = self.source.read_rows(name, start, stop)
        if name not in self.deltas:
            return rows
        lora = self._open.get(name)
        if lora is None:
            lora = self._open[name] = DeltaRows(self.deltas[name], meta_order=False)
        merged = lora.merged(rows, self.source.dtype_of(name), start)
        if stop >= self.source.folder.tensors[self.source.aliases.get(name, name)].shape[0]:
            del self._open[name]
        return merged
