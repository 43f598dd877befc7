"""The family's recipes run backwards: Hugging Face tensors → Meta tensors cut into model-parallel shards.

A forward ``TensorRecipe`` views each shard's tensor, takes rows of it, merges the shards, concatenates
its parts, transposes, folds duplicated KV heads, permutes rotary rows and casts. Its inverse reads the
Hugging Face tensor as rows of the assembled tensor, permutes them back, repeats KV heads (``kv_fold`` of
the *target* layout: Meta's MP16 release holds every KV head twice), cuts out each part (rows for parts
stacked on dim 0, columns for parts side by side, such as Llama 4's ``gate_up_proj``) and cuts each part's
row blocks along its model-parallel axis into every shard at once. A Meta tensor made of several recipes'
parts (fused ``wqkv``) is written as their segments one after the other, in the order of their rows.

Parts that are zeros (padding rows) are read, checked to be zeros and dropped. Replicated tensors seen
through a view whose rows several recipe parts repeat (Mllama's per-aspect-ratio embeddings: the same
tile cell in every aspect ratio that contains it) are gathered row by row: each row from its first
occurrence, the other occurrences checked equal, rows no part holds written as zeros (reported in
``MetaTensor.unfilled``). Memory is bounded by the block size.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..dtypes import DType, cast
from ..errors import ConversionError, UnsupportedError
from ..execute import BLOCK_BYTES, block_rows, rotary_to_pairs
from ..formats.meta.writer import MetaShardWriter
from ..plan import Part, TensorRecipe

__all__ = ["MetaTensor", "RowSource", "Segment", "invert_recipes", "write_meta_tensors"]

_READ_AHEAD = 2  # blocks produced ahead of the one being written (small blocks: as many elements as 2 blocks)
_BLOCK_ELEMENTS = BLOCK_BYTES // 2


class RowSource(Protocol):
    """Where the Hugging Face-side tensors come from: a range of elements (C order), in the dtype's storage."""

    def dtype_of(self, name: str) -> DType: ...

    def read_flat(self, name: str, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Segment:
    """One part of a recipe run backwards: the merged rows of a Meta part made from one Hugging Face tensor.

    The Hugging Face tensor (``source_shape``) is read as rows of the assembled tensor ``assembled`` (all
    the recipe's parts concatenated on ``cat_axis``); this part is ``shape`` at ``offset`` along ``cat_axis``.
    With ``gather`` (replicated view rows), row i of ``shape`` is assembled row ``gather[i][0]`` (the others
    in ``gather[i]`` must be equal; an empty tuple: zeros), and the assembled rows ``zero_rows`` must be zeros.
    """

    source: str  # the Hugging Face tensor (the recipe's output name)
    source_shape: tuple[int, ...]
    assembled: tuple[int, ...]  # the parts concatenated, KV heads repeated, transposed back
    shape: tuple[int, ...]  # this part merged over the shards (its view's rows, taken)
    rotary: bool = False  # rows are in rotate-halves order: back to Meta's interleaved pairs
    kv_repeat: int = 1  # every head appears this many times in a row
    head_dim: int = 0
    transpose: bool = False  # small 2-D tensors only
    cat_axis: int = 0
    offset: int = 0
    gather: tuple[tuple[int, ...], ...] | None = None
    zero_rows: tuple[int, ...] = ()
    take_start: int = 0  # first row of the shard's view this segment fills

    @property
    def unit(self) -> int:
        """Merged rows produced together: whole (repeated) heads when heads are reordered or repeated."""
        return self.head_dim * self.kv_repeat if (self.rotary or self.kv_repeat > 1) else 1


@dataclass(frozen=True)
class MetaTensor:
    """One tensor of every Meta shard: its segments stacked on dim 0 of each shard's (viewed) slice."""

    name: str
    dtype: DType
    mp_axis: int | None  # None: the same bytes in every shard
    segments: tuple[Segment, ...]
    stored: tuple[int, ...] = ()  # each shard's shape (the segments' rows seen as this)
    unfilled: int = 0  # rows of a gathered view no Hugging Face tensor holds (written as zeros)

    def shard_shape(self, mp: int) -> tuple[int, ...]:
        return self.stored

    def nbytes(self, mp: int) -> int:
        """Bytes written over all shards."""
        return math.prod(self.stored) * self.dtype.itemsize * mp

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


def _piece(part: Part, stored: tuple[int, ...], mp: int) -> tuple[int, ...]:
    """The part's shape merged over ``mp`` shards (view, take, merge), from each shard's stored shape."""
    view = list(part.view or stored or (1,))
    if math.prod(view) != math.prod(stored or (1,)):
        raise UnsupportedError(f"{part.source}: a shard of shape {list(stored)} cannot be viewed as {view}.")
    if part.take is not None:
        view[0] = part.take[1] - part.take[0]
    if part.mp_axis is not None:
        view[part.mp_axis] *= mp
    return tuple(view)


def _assembled(r: TensorRecipe) -> tuple[int, ...]:
    rows = r.shape[0] * r.kv_fold if r.shape else 1
    shape = (rows, *r.shape[1:]) if r.shape else (1,)
    return tuple(reversed(shape)) if r.transpose else shape


def invert_recipes(
    recipes: Sequence[TensorRecipe],
    *,
    dtype: DType,
    mp: int = 1,
    shard_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[MetaTensor]:
    """The Meta tensors the recipes read, each with the segments that write it back (in recipe order).

    ``shard_shapes`` gives the stored per-shard shape of Meta tensors read through views or as one of
    several parts; a single-part recipe without a view implies its source's shape."""
    shapes = dict(shard_shapes or {})
    grouped: dict[str, list[tuple[int, int | None, Segment]]] = {}
    gathered: dict[str, MetaTensor] = {}
    for r in recipes:
        assembled = _assembled(r)
        if math.prod(assembled) != math.prod(r.shape or (1,)) * r.kv_fold:
            raise UnsupportedError(f"{r.name}: its recipe does not describe a tensor that can be written back.")
        sources = [p.source for p in r.parts if not p.zeros]
        if len(set(sources)) < len(sources) or any(p.zeros for p in r.parts):
            t = _gather(r, assembled, dtype, shapes)
            gathered[t.name] = t
            continue
        for part in r.parts:
            if part.source not in shapes:
                if len(r.parts) > 1 or part.view is not None or part.take is not None:
                    raise UnsupportedError(f"{part.source}: its shape per shard is not known; cannot write it back.")
                merged = list(assembled)
                if part.mp_axis is not None:
                    if merged[part.mp_axis] % mp:
                        raise UnsupportedError(
                            f"{part.source} (size {merged[part.mp_axis]} along dim {part.mp_axis}) does not split "
                            f"into {mp} equal parts"
                        )
                    merged[part.mp_axis] //= mp
                shapes[part.source] = tuple(merged)
        pieces = [_piece(p, shapes[p.source], mp) for p in r.parts]
        whole = list(pieces[0])
        whole[r.cat_axis] = sum(s[r.cat_axis] for s in pieces)
        rest = [s[:c] + s[c + 1 :] for s in pieces for c in [r.cat_axis]]
        if r.transpose and tuple(whole) != assembled:
            raise UnsupportedError(f"{r.name}: a transposed recipe must read one tensor of shape {list(assembled)}.")
        assembled = tuple(whole)  # as the forward executor assembles it, then reads it as the recipe's shape
        if len(set(rest)) != 1 or math.prod(whole) != math.prod(_assembled(r)):
            raise UnsupportedError(
                f"{r.name} ({list(assembled)}) does not split into {mp} model-parallel shards of "
                + ", ".join(f"{p.source} {list(shapes[p.source])}" for p in r.parts)
            )
        offset = 0
        for part, piece in zip(r.parts, pieces, strict=True):
            seg = Segment(
                r.name,
                r.shape,
                assembled,
                piece,
                bool(r.rotary_heads),
                r.kv_fold,
                r.head_dim,
                r.transpose,
                r.cat_axis,
                offset,
                take_start=part.take[0] if part.take else 0,
            )
            offset += piece[r.cat_axis]
            grouped.setdefault(part.source, []).append((seg.take_start, part.mp_axis, seg))
    out = list(gathered.values())
    for name, entries in grouped.items():
        if name in gathered:
            raise UnsupportedError(f"{name} is read by its recipes in two ways; writing it back is not supported.")
        axes = {axis for _, axis, _ in entries}
        if len(axes) != 1:
            raise UnsupportedError(f"{name} is split inconsistently by its recipes; writing it back is not supported.")
        entries.sort(key=lambda e: e[0])
        axis = axes.pop()
        stored = shapes[name]
        segs = tuple(seg for _, _, seg in entries)
        per_shard = sum(math.prod(_split(s.shape, axis, mp)) for s in segs)
        if per_shard != math.prod(stored or (1,)):
            raise UnsupportedError(f"{name}: its recipes do not fill its {list(stored)} elements per shard.")
        out.append(MetaTensor(name, dtype, axis, segs, stored))
    return out


def _split(shape: tuple[int, ...], axis: int | None, mp: int) -> tuple[int, ...]:
    if axis is None:
        return shape
    out = list(shape)
    out[axis] //= mp
    return tuple(out)


def _gather(r: TensorRecipe, assembled: tuple[int, ...], dtype: DType, shapes: Mapping[str, tuple[int, ...]]):
    """A replicated Meta tensor whose view rows the recipe's parts repeat (and zero parts pad)."""
    names = {p.source for p in r.parts}
    if len(names) != 1 or r.cat_axis or r.transpose or r.rotary_heads or r.kv_fold > 1:
        raise UnsupportedError(f"{r.name} repeats rows of several tensors; writing it back is not supported.")
    name = names.pop()
    if any(p.mp_axis is not None for p in r.parts) or name not in shapes:
        raise UnsupportedError(f"{r.name} repeats rows of a split tensor {name}; writing it back is not supported.")
    stored = shapes[name]
    view = r.parts[0].view or stored
    rows: list[list[int]] = [[] for _ in range(view[0])]
    zero_rows: list[int] = []
    at = 0
    for p in r.parts:
        start, stop = p.take or (0, view[0])
        for i in range(start, stop):
            (zero_rows if p.zeros else rows[i]).append(at)
            at += 1
    if at * math.prod(view[1:]) != math.prod(assembled):
        raise UnsupportedError(f"{r.name}: its parts do not assemble to {list(assembled)}.")
    assembled = (at, *view[1:])
    seg = Segment(
        r.name,
        r.shape,
        assembled,
        tuple(view),
        gather=tuple(tuple(x) for x in rows),
        zero_rows=tuple(zero_rows),
    )
    return MetaTensor(name, dtype, None, (seg,), tuple(stored), sum(1 for x in rows if not x))


def _assembled_rows(seg: Segment, source: RowSource, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the assembled tensor (KV heads repeated, rotary back in pairs), 2-D."""
    cols = math.prod(seg.assembled[1:])
    if seg.transpose:
        whole = source.read_flat(seg.source, 0, math.prod(seg.source_shape)).reshape(seg.source_shape)
        return np.ascontiguousarray(whole.T[start:stop]).reshape(stop - start, cols)
    kv = seg.kv_repeat
    block = source.read_flat(seg.source, start // kv * cols, stop // kv * cols).reshape(-1, cols)
    if seg.rotary:
        block = rotary_to_pairs(block, seg.head_dim)
    if kv > 1:
        block = np.repeat(block.reshape(-1, seg.head_dim, cols), kv, axis=0).reshape(-1, cols)
    return block


def _produce(seg: Segment, source: RowSource, start: int, stop: int, dtype: DType) -> np.ndarray:
    """Merged Meta rows ``start:stop`` of the segment, in ``dtype``."""
    src = source.dtype_of(seg.source)
    row_shape = seg.shape[1:]
    if seg.gather is not None:
        block = _gathered(seg, source, start, stop)
    elif seg.cat_axis == 0:
        block = _assembled_rows(seg, source, seg.offset + start, seg.offset + stop).reshape(-1, *row_shape)
    else:
        whole = _assembled_rows(seg, source, start, stop).reshape(-1, *seg.assembled[1:])
        index = [slice(None)] * whole.ndim
        index[seg.cat_axis] = slice(seg.offset, seg.offset + seg.shape[seg.cat_axis])
        block = np.ascontiguousarray(whole[tuple(index)])
    return cast(block, src, dtype)


def _gathered(seg: Segment, source: RowSource, start: int, stop: int) -> np.ndarray:
    cols = math.prod(seg.assembled[1:])
    assert seg.gather is not None

    def row(i: int) -> np.ndarray:
        return source.read_flat(seg.source, i * cols, (i + 1) * cols)

    out = []
    for i in range(start, stop):
        where = seg.gather[i]
        if not where:
            out.append(np.zeros(cols, dtype=source.dtype_of(seg.source).storage))
            continue
        value = row(where[0])
        for other in where[1:]:
            if not np.array_equal(value, row(other)):
                raise ConversionError(
                    f"{seg.source}: rows {where[0]} and {other} hold the same entry of Meta's tensor but differ "
                    "(trained separately per aspect ratio); Meta's format holds one value: it cannot be written back."
                )
        out.append(value)
    if stop == seg.shape[0]:
        for i in seg.zero_rows:
            if np.any(row(i).view(np.uint8)):
                raise ConversionError(
                    f"{seg.source}: row {i} should be zero padding (Meta's model has no value for it) but is not; "
                    "it cannot be written back to Meta's format."
                )
    return np.stack(out).reshape(stop - start, *seg.shape[1:])


def _blocks(seg: Segment, itemsize: int, mp_axis: int | None, mp: int) -> Iterator[tuple[int, int]]:
    """The segment's merged rows in blocks of about ``BLOCK_BYTES``. Split on dim 0, each shard's rows are
    one range: the blocks then take turns between the shards (``mp`` blocks of 1/``mp`` the size), so that
    every shard file is written, and hashed in its MD5 lane, side by side with the others."""
    rows = seg.shape[0] if seg.shape else 1
    if seg.transpose:  # small, and read whole: one block
        yield 0, rows
        return
    row_bytes = math.prod(seg.shape[1:]) * itemsize
    if seg.cat_axis:  # whole rows of the assembled tensor are read for each part
        row_bytes = math.prod(seg.assembled[1:]) * itemsize
    per_shard = rows // mp
    if mp_axis != 0 or mp == 1 or seg.gather is not None or per_shard % seg.unit:  # (heads repeated across shards)
        step = block_rows(row_bytes, seg.unit)
        for start in range(0, rows, step):
            yield start, min(rows, start + step)
        return
    step = min(per_shard, block_rows(row_bytes * mp, seg.unit))
    for start in range(0, per_shard, step):
        for shard in range(mp):
            yield shard * per_shard + start, shard * per_shard + min(per_shard, start + step)


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
        (t, seg, start, stop, (stop - start) * math.prod(seg.shape[1:]))
        for t in tensors[first:]
        for seg in t.segments
        for start, stop in _blocks(seg, max(t.dtype.itemsize, source.dtype_of(seg.source).itemsize), t.mp_axis, mp)
    ]
    pending: deque[tuple[Future[np.ndarray], int]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader:
        try:
            submitted = ahead = 0
            current: MetaTensor | None = None
            sinks: list = []
            for t, seg, start, stop, _ in jobs:
                # blocks produced ahead: at least _READ_AHEAD, and at least _READ_AHEAD blocks' worth of elements
                while submitted < len(jobs) and (len(pending) <= _READ_AHEAD or ahead < _READ_AHEAD * _BLOCK_ELEMENTS):
                    jt, js, ja, jb, elements = jobs[submitted]
                    pending.append((reader.submit(_produce, js, source, ja, jb, jt.dtype), elements))
                    ahead += elements
                    submitted += 1
                future, elements = pending.popleft()
                ahead -= elements
                block = future.result()
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
            for future, _ in pending:
                future.cancel()
