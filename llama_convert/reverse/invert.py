"""The family's recipes run backwards: Hugging Face tensors → Meta tensors cut into model-parallel shards.

A forward ``TensorRecipe`` merges a Meta tensor over the shards, folds duplicated KV heads, permutes
rotary rows and casts. Its inverse (a ``Segment``) reads rows of the Hugging Face tensor, permutes
them back, repeats KV heads (``kv_fold`` of the *target* layout: Meta's MP16 release holds every KV
head twice), casts, and cuts each row block along the model-parallel axis into every shard at once.
Fused Meta tensors (``Part.take``) are written as their segments one after the other. Memory is
bounded by the block size; every source byte is read once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..dtypes import DType, cast
from ..errors import UnsupportedError
from ..execute import block_rows, rotary_to_pairs
from ..formats.meta.writer import MetaShardWriter
from ..plan import TensorRecipe

__all__ = ["MetaTensor", "RowSource", "Segment", "invert_recipes", "write_meta_tensors"]

_READ_AHEAD = 2  # blocks produced ahead of the one being written


class RowSource(Protocol):
    """Where the Hugging Face-side tensors come from: rows of dim 0, in the dtype's storage."""

    def dtype_of(self, name: str) -> DType: ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Segment:
    """One recipe run backwards: the rows of a Meta tensor made from one Hugging Face tensor."""

    source: str  # the Hugging Face tensor (the recipe's output name)
    source_shape: tuple[int, ...]  # its shape (the recipe's)
    shape: tuple[int, ...]  # the merged Meta part it becomes (KV heads repeated, transposed back)
    rotary: bool = False  # rows are in rotate-halves order: back to Meta's interleaved pairs
    kv_repeat: int = 1  # every head appears this many times in a row
    head_dim: int = 0
    transpose: bool = False  # small 2-D tensors only

    @property
    def unit(self) -> int:
        """Merged rows produced together: whole (repeated) heads when heads are reordered or repeated."""
        return self.head_dim * self.kv_repeat if (self.rotary or self.kv_repeat > 1) else 1


@dataclass(frozen=True)
class MetaTensor:
    """One tensor of every Meta shard: its segments stacked on dim 0 of each shard's slice."""

    name: str
    dtype: DType
    mp_axis: int | None  # None: the same bytes in every shard
    segments: tuple[Segment, ...]

    def shard_shape(self, mp: int) -> tuple[int, ...]:
        first = self.segments[0].shape
        if self.mp_axis is None:
            return first
        if len(self.segments) > 1:
            return (sum(s.shape[0] for s in self.segments) // mp, *first[1:])
        shape = list(first)
        shape[self.mp_axis] //= mp
        return tuple(shape)

    def nbytes(self, mp: int) -> int:
        """Bytes written over all shards."""
        return math.prod(self.shard_shape(mp)) * self.dtype.itemsize * mp

    def check(self, mp: int) -> str | None:
        """Why ``mp`` shards cannot hold this tensor (None when they can)."""
        if self.mp_axis is None:
            return None
        for seg in self.segments:
            size = seg.shape[self.mp_axis]
            unit = seg.head_dim if (seg.rotary or seg.kv_repeat > 1) and self.mp_axis == 0 else 1
            if size % (mp * unit):
                what = f"{size // unit} heads" if unit > 1 else f"size {size} along dim {self.mp_axis}"
                return f"{self.name} ({what}) does not split into {mp} equal parts"
        return None


def invert_recipes(recipes: Sequence[TensorRecipe], *, dtype: DType) -> list[MetaTensor]:
    """The Meta tensors the recipes read, each with the segments that write it back (in recipe order)."""
    grouped: dict[str, list[tuple[int, int | None, Segment]]] = {}
    for r in recipes:
        if len(r.parts) != 1:
            raise UnsupportedError(
                f"{r.name} is assembled from {len(r.parts)} Meta tensors; writing it back is not supported yet."
            )
        part = r.parts[0]
        if part.view is not None:
            raise UnsupportedError(
                f"{r.name} reads {part.source} through a view; writing it back is not supported yet."
            )
        rows = r.shape[0] * r.kv_fold if r.shape else 1
        shape = (rows, *r.shape[1:]) if r.shape else r.shape
        if r.transpose:
            shape = tuple(reversed(shape))
        seg = Segment(r.name, r.shape, shape, bool(r.rotary_heads), r.kv_fold, r.head_dim, r.transpose)
        grouped.setdefault(part.source, []).append((part.take[0] if part.take else 0, part.mp_axis, seg))
    out = []
    for name, entries in grouped.items():
        axes = {axis for _, axis, _ in entries}
        if len(axes) != 1 or (len(entries) > 1 and axes != {0}):
            raise UnsupportedError(f"{name} is split inconsistently by its recipes; writing it back is not supported.")
        entries.sort(key=lambda e: e[0])
        out.append(MetaTensor(name, dtype, axes.pop(), tuple(seg for _, _, seg in entries)))
    return out


def _produce(seg: Segment, source: RowSource, start: int, stop: int, dtype: DType) -> np.ndarray:
    """Merged Meta rows ``start:stop`` of the segment, in ``dtype``."""
    if seg.transpose:
        whole = source.read_rows(seg.source, 0, seg.source_shape[0]).reshape(seg.source_shape)
        block = np.ascontiguousarray(whole.T[start:stop])
    else:
        block = source.read_rows(seg.source, start // seg.kv_repeat, stop // seg.kv_repeat)
        if len(seg.shape) > 1:
            block = block.reshape(-1, *seg.shape[1:])
    if seg.rotary:
        block = rotary_to_pairs(block, seg.head_dim)
    if seg.kv_repeat > 1:
        cols = block.shape[-1]
        block = np.repeat(block.reshape(-1, seg.head_dim, cols), seg.kv_repeat, axis=0).reshape(-1, cols)
    return cast(block, source.dtype_of(seg.source), dtype)


def _blocks(seg: Segment, itemsize: int) -> Iterator[tuple[int, int]]:
    rows = seg.shape[0] if seg.shape else 1
    if seg.transpose:  # small, and read whole: one block
        yield 0, rows
        return
    row_bytes = math.prod(seg.shape[1:]) * itemsize
    unit = seg.unit
    step = block_rows(row_bytes, unit)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _route(block: np.ndarray, t: MetaTensor, seg: Segment, start: int, stop: int, sinks: list, mp: int) -> None:
    """Cut merged rows ``start:stop`` along the tensor's MP axis into the shards' storages."""
    if t.mp_axis is None:
        for sink in sinks:
            sink.write(block)
    elif t.mp_axis == 0:
        per_shard = seg.shape[0] // mp
        row = start
        while row < stop:
            shard, local = divmod(row, per_shard)
            take = min(stop - row, per_shard - local)
            sinks[shard].write(block[row - start : row - start + take])
            row += take
    else:
        width = seg.shape[t.mp_axis] // mp
        for shard, sink in enumerate(sinks):
            index = [slice(None)] * block.ndim
            index[t.mp_axis] = slice(shard * width, (shard + 1) * width)
            sink.write(np.ascontiguousarray(block[tuple(index)]))


def write_meta_tensors(
    tensors: Sequence[MetaTensor],
    source: RowSource,
    writer: MetaShardWriter,
    *,
    advance: Callable[[int], None] = lambda n: None,
    first: int = 0,
    on_tensor: Callable[[int], None] = lambda done: None,
) -> None:
    """Stream every tensor's slices into all of the writer's shards, from tensor ``first`` on (the ones
    before are in the shards already); ``on_tensor(n)`` is called once the first ``n`` are complete.

    A reader thread produces the next blocks (read, permute, cast) while this one writes the current
    block: reading from disk overlaps writing to it, as ``cp`` overlaps them in the kernel.
    """
    mp = writer.mp
    index = {id(t): i for i, t in enumerate(tensors)}
    jobs = [
        (t, seg, start, stop)
        for t in tensors[first:]
        for seg in t.segments
        for start, stop in _blocks(seg, max(t.dtype.itemsize, source.dtype_of(seg.source).itemsize))
    ]
    pending: deque[Future[np.ndarray]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader:
        try:
            submitted = 0
            current: MetaTensor | None = None
            sinks: list = []
            for t, seg, start, stop in jobs:
                while submitted < len(jobs) and len(pending) <= _READ_AHEAD:
                    jt, js, ja, jb = jobs[submitted]
                    pending.append(reader.submit(_produce, js, source, ja, jb, jt.dtype))
                    submitted += 1
                block = pending.popleft().result()
                if t is not current:
                    if current is not None:
                        writer.close_tensor()
                        on_tensor(index[id(current)] + 1)
                    current, sinks = t, writer.open_tensor(t.name, t.dtype, [t.shard_shape(mp)] * mp)
                _route(block, t, seg, start, stop, sinks, mp)
                advance(block.nbytes if t.mp_axis is not None else block.nbytes * mp)
            if current is not None:
                writer.close_tensor()
        finally:
            for future in pending:
                future.cancel()
