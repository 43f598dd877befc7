"""Recipes run backwards: one merged tensor → its model-parallel slices, streamed into every shard.

A ``ShardedTensor`` is the inverse of a forward recipe: read rows of the merged tensor from a source
(an HF folder, or Meta shards merged on the fly), undo the Hugging Face rotary permutation, repeat
KV heads when there are more shards than KV heads (as Meta's MP16 release does), cast, and cut each
row block along the model-parallel axis into the shard files. Memory is bounded by the block size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..dtypes import DType, cast
from ..formats.meta.writer import MetaShardWriter

__all__ = ["BLOCK_BYTES", "RowSource", "ShardedTensor", "halves_to_pairs", "write_sharded"]

BLOCK_BYTES = 32 << 20


class RowSource(Protocol):
    """Where merged tensors come from: rows of dim 0, as numpy data in the dtype's storage."""

    def dtype_of(self, name: str) -> DType: ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ShardedTensor:
    """One Meta tensor to write into every shard."""

    name: str  # the tensor's name in the Meta shards
    source: str  # the merged tensor it is cut from (HF name, or Meta name when resharding)
    shape: tuple[int, ...]  # merged shape, KV heads repeated
    dtype: DType
    mp_axis: int | None  # split along this axis; None: the same bytes in every shard
    rotary: bool = False  # source rows are in HF's rotate-halves order: back to Meta's interleaved pairs
    kv_repeat: int = 1  # every source head appears this many times in a row
    head_dim: int = 0

    def shard_shape(self, mp: int) -> tuple[int, ...]:
        if self.mp_axis is None:
            return self.shape
        shape = list(self.shape)
        shape[self.mp_axis] //= mp
        return tuple(shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def check_divisible(self, mp: int) -> str | None:
        """Why ``mp`` shards cannot hold this tensor (None when they can)."""
        if self.mp_axis is None:
            return None
        size = self.shape[self.mp_axis]
        unit = self.head_dim if (self.rotary or self.kv_repeat > 1) and self.mp_axis == 0 else 1
        if size % (mp * unit):
            what = f"{size // unit} heads" if unit > 1 else f"size {size} along axis {self.mp_axis}"
            return f"{self.name} ({what}) does not split into {mp} equal model-parallel parts"
        return None


def halves_to_pairs(block: np.ndarray, head_dim: int) -> np.ndarray:
    """Hugging Face rotates halves (i, i + head_dim/2); Meta rotates interleaved pairs (2i, 2i+1)."""
    cols = block.shape[-1]
    return block.reshape(-1, 2, head_dim // 2, cols).transpose(0, 2, 1, 3).reshape(-1, cols)


def _blocks(t: ShardedTensor, source: RowSource) -> tuple[int, int]:
    """(rows per block, rows in total) of the merged target tensor."""
    rows = t.shape[0] if t.shape else 1
    row_bytes = math.prod(t.shape[1:]) * max(t.dtype.itemsize, source.dtype_of(t.source).itemsize)
    unit = t.head_dim * t.kv_repeat if (t.rotary or t.kv_repeat > 1) else 1
    return max(unit, (BLOCK_BYTES // max(row_bytes, 1)) // unit * unit), rows


def _produce(t: ShardedTensor, source: RowSource, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the merged target tensor, in the target dtype."""
    block = source.read_rows(t.source, start // t.kv_repeat, stop // t.kv_repeat)
    if t.rotary:
        block = halves_to_pairs(block, t.head_dim)
    if t.kv_repeat > 1:
        cols = block.shape[-1]
        block = np.repeat(block.reshape(-1, t.head_dim, cols), t.kv_repeat, axis=0).reshape(-1, cols)
    return cast(block, source.dtype_of(t.source), t.dtype)


def write_sharded(
    tensors: Sequence[ShardedTensor],
    source: RowSource,
    writer: MetaShardWriter,
    *,
    advance: Callable[[int], None] = lambda n: None,
) -> None:
    """Stream every tensor's slices into the writer's shards (one read of each source byte)."""
    mp = writer.mp
    for t in tensors:
        shard_shape = t.shard_shape(mp)
        sinks = writer.open_tensor(t.name, t.dtype, [shard_shape] * mp)
        block_rows, rows = _blocks(t, source)
        per_shard = shard_shape[0] if t.shape else 1
        for start in range(0, rows, block_rows):
            stop = min(rows, start + block_rows)
            block = _produce(t, source, start, stop)
            if t.mp_axis is None:
                for sink in sinks:
                    sink.write(block)
            elif t.mp_axis == 0:
                row = start
                while row < stop:
                    shard, local = divmod(row, per_shard)
                    take = min(stop - row, per_shard - local)
                    sinks[shard].write(block[row - start : row - start + take])
                    row += take
            else:
                cols = shard_shape[1]
                for shard, sink in enumerate(sinks):
                    sink.write(np.ascontiguousarray(block[:, shard * cols : (shard + 1) * cols]))
            advance(block.nbytes)
        writer.close_tensor()
