"""Run tensor recipes: read source row blocks, merge shards, assemble parts, permute, cast, hand to a sink.

Memory stays bounded by the block size, whatever the model size: no tensor is held whole unless one
row of it (or a transposed tensor, which must be small) is larger than a block. Nothing here knows a
model family; sinks (safetensors here, GGUF and Meta shards elsewhere) consume ``produce_pieces``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ahead import ahead
from .dtypes import BF16, E4M3_VALUES, F32, cast, e4m3_to_f32, f32_to_bf16, f32_to_e4m3
from .errors import ConversionError
from .formats.hf.safetensors_writer import SafetensorsWriter
from .formats.meta.torch_zip import TorchCheckpoint
from .formats.peft import read_lora_matrix
from .plan import ConversionPlan, LoraDelta, Part, Scale, TensorRecipe, assembled_shape, merged_shape, piece_shape

__all__ = [
    "BLOCK_BYTES",
    "DeltaRows",
    "FileSpan",
    "block_rows",
    "dequantize_rows",
    "produce_blocks",
    "produce_pieces",
    "requantize_rows",
    "scale_values",
    "write_weights",
]

BLOCK_BYTES = 32 << 20  # per block of output rows; bounds memory together with the read buffers
MAX_TRANSPOSED_BYTES = 256 << 20  # a transposed tensor is assembled whole: routers and such, never a big matrix


def block_rows(row_bytes: int, unit: int = 1) -> int:
    """Rows per block of about ``BLOCK_BYTES``, a multiple of ``unit`` (whole heads), at least ``unit``."""
    return max(unit, (BLOCK_BYTES // max(row_bytes, 1)) // unit * unit)


# (file, its mtime and size, key) → float32 scales: a few KiB each, read once instead of once per row block
_SCALES: dict[tuple[str, int, int, str], np.ndarray] = {}


def scale_values(scale: Scale, rank: int) -> np.ndarray:
    """The float32 scale tensor of shard ``rank`` (read with the allow-listed reader)."""
    stat = os.stat(scale.files[rank])
    key = (scale.files[rank], stat.st_mtime_ns, stat.st_size, scale.keys[rank])
    if key not in _SCALES:
        with TorchCheckpoint(scale.files[rank]) as scales:
            _SCALES[key] = scales.read(scale.keys[rank]).astype(np.float32, copy=False)
        if len(_SCALES) > 4096:
            _SCALES.pop(next(iter(_SCALES)))
    return _SCALES[key]


def dequantize_rows(raw: np.ndarray, scale: np.ndarray, start: int, group_rows: int = 0) -> np.ndarray:
    """float8 rows ``start:…`` of a stored tensor → bf16 bits: ``q.float() * scale`` in float32, rounded once.

    ``group_rows`` as in ``plan.Scale``; ``raw`` holds whole rows of the (viewed) tensor."""
    n = raw.shape[0]
    if group_rows == 0:
        # One scale per row: a row's 256 possible products, rounded, are looked up (the same float32
        # multiply and rounding per value as below, one gather instead of ten passes over the block).
        table = f32_to_bf16(E4M3_VALUES[None, :] * scale[start : start + n, None])
        rows = raw.reshape(n, -1)
        out = np.empty(rows.shape, dtype=np.uint16)
        for r in range(n):
            np.take(table[r], rows[r], out=out[r])
        return out.reshape(raw.shape)
    values = e4m3_to_f32(raw)
    cols = scale.shape[-1]
    flat = values.reshape(-1, cols)
    per_row = flat.shape[0] // n if n else 0
    groups = (start * per_row + np.arange(flat.shape[0])) // group_rows
    np.multiply(flat, scale[groups], out=flat)
    return f32_to_bf16(values)


FP8_MAX = np.float32(448.0)


def requantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """float32 rows → (e4m3 bytes, float32 scale per row, largest relative change): fbgemm's row-wise rule
    (``quantize_fp8_per_row``: ``inv = 448 / max(rowmax|x|, 1e-12)``, ``q = e4m3(clamp(x · inv, ±448))``
    rounded to nearest even, scale ``1 / inv``), every operation an IEEE float32 one (a GPU kernel may round
    its division differently; the stored scale is what dequantization uses). The change is
    ``max |q · scale − x| / rowmax|x|``."""
    rows = x.reshape(x.shape[0], -1)
    amax = np.maximum(np.abs(rows).max(axis=1), np.float32(1e-12)).astype(np.float32)
    inv = (FP8_MAX / amax).astype(np.float32)
    q = f32_to_e4m3(np.clip(rows * inv[:, None], -FP8_MAX, FP8_MAX))
    scale = (np.float32(1.0) / inv).astype(np.float32)
    change = np.abs(e4m3_to_f32(q) * scale[:, None] - rows).max(axis=1) / amax
    return q.reshape(x.shape), scale, float(change.max()) if change.size else 0.0


def _fp8_blocks(
    recipe: TensorRecipe, shards: Sequence[TorchCheckpoint], observe: Callable[[str, float], None]
) -> Iterator[np.ndarray]:
    """The FP8 outputs of ``--keep-fp8`` (``TensorRecipe.fp8``)."""
    if recipe.fp8 == "scales":
        (part,) = recipe.parts
        assert part.scale is not None
        ranks = range(len(shards)) if part.mp_axis is not None else range(1)
        yield np.concatenate([scale_values(part.scale, r).reshape(-1) for r in ranks]).reshape(recipe.shape)
        return
    import dataclasses

    base = dataclasses.replace(recipe, fp8=None, dtype=BF16, source_dtype=BF16, shape=assembled_shape(recipe, shards))
    worst = 0.0
    for block in produce_blocks(base, shards):
        q, scale, change = requantize_rows(cast(block, BF16, F32))
        worst = max(worst, change)
        yield q if recipe.fp8 == "requantized" else scale.reshape(-1, 1)
    if recipe.fp8 == "requantized":
        observe(recipe.name, worst)


def _piece_rows(part: Part, shard: TorchCheckpoint, start: int, stop: int, rank: int = 0) -> np.ndarray:
    """Rows ``start:stop`` of one shard's viewed-and-taken tensor (dequantized when the part is scaled)."""
    rows = _stored_piece_rows(part, shard, start, stop)
    if part.scale is None:
        return rows
    first = (part.take[0] if part.take else 0) + start
    return dequantize_rows(rows, scale_values(part.scale, rank), first, part.scale.group_rows)


def _stored_piece_rows(part: Part, shard: TorchCheckpoint, start: int, stop: int) -> np.ndarray:
    ref = shard.tensors[part.source]
    view = part.view or ref.shape or (1,)
    if part.zeros:
        return np.zeros((stop - start, *view[1:]), dtype=ref.dtype.storage)
    first = (part.take[0] if part.take else 0) + start
    view_row = math.prod(view[1:])
    if part.view is None:
        return shard.read_rows(part.source, first, first + stop - start)
    stored_row = math.prod(ref.shape[1:]) if ref.shape else 1
    e0, e1 = first * view_row, (first + stop - start) * view_row
    r0, r1 = e0 // stored_row, -(-e1 // stored_row)
    flat = shard.read_rows(part.source, r0, r1).reshape(-1)
    return flat[e0 - r0 * stored_row : e1 - r0 * stored_row].reshape(stop - start, *view[1:])


def _merged_rows(part: Part, shards: Sequence[TorchCheckpoint], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a part merged over the shards."""
    if part.mp_axis is None or len(shards) == 1:
        return _piece_rows(part, shards[0], start, stop)
    if part.mp_axis == 0:
        per = piece_shape(part, shards[0].tensors[part.source].shape)[0]
        pieces = []
        row = start
        while row < stop:
            index, local = divmod(row, per)
            take = min(stop - row, per - local)
            pieces.append(_piece_rows(part, shards[index], local, local + take, index))
            row += take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
    pieces = [_piece_rows(part, s, start, stop, rank) for rank, s in enumerate(shards)]
    return np.concatenate(pieces, axis=part.mp_axis)


def _assembled_rows(recipe: TensorRecipe, shards: Sequence[TorchCheckpoint], start: int, stop: int) -> np.ndarray:
    if len(recipe.parts) == 1:
        return _merged_rows(recipe.parts[0], shards, start, stop)
    if recipe.cat_axis != 0:
        return np.concatenate([_merged_rows(p, shards, start, stop) for p in recipe.parts], axis=recipe.cat_axis)
    pieces, offset = [], 0
    for part in recipe.parts:
        rows = merged_shape(part, shards)[0]
        lo, hi = max(start, offset), min(stop, offset + rows)
        if lo < hi:
            pieces.append(_merged_rows(part, shards, lo - offset, hi - offset))
        offset += rows
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


def _fold_heads(block: np.ndarray, recipe: TensorRecipe) -> np.ndarray:
    heads = block.reshape(-1, recipe.kv_fold, recipe.head_dim, block.shape[-1])
    kept = heads[:, 0]
    for copy in range(1, recipe.kv_fold):
        if not np.array_equal(kept, heads[:, copy]):
            raise ConversionError(
                f"{recipe.source}: KV heads that should be copies differ, so they cannot be folded; "
                "convert again with --keep-kv-heads."
            )
    return kept.reshape(-1, block.shape[-1])


def rotary_to_halves(block: np.ndarray, head_dim: int) -> np.ndarray:
    """Meta rotates interleaved pairs (2i, 2i+1); Hugging Face rotates halves (i, i + head_dim/2)."""
    cols = block.shape[-1]
    return block.reshape(-1, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(-1, cols)


def rotary_to_pairs(block: np.ndarray, head_dim: int) -> np.ndarray:
    """The inverse of ``rotary_to_halves``."""
    cols = block.shape[-1]
    return block.reshape(-1, 2, head_dim // 2, cols).transpose(0, 2, 1, 3).reshape(-1, cols)


class DeltaRows:
    """The sum of a tensor's LoRA deltas, added row block by row block in float32.

    A and B are read when the tensor starts (they are small: r rows or columns); each block's delta is
    ``(B[rows] @ A) · scale``, as PEFT computes it (with DoRA each row is then rescaled to its magnitude;
    rows are whole, so the norm is local to the block). With ``meta_order`` the rows are wanted in Meta's
    rotary order, so B's (and the magnitudes') rows of q/k deltas are moved from halves back to pairs first.
    """

    def __init__(self, deltas: Sequence[LoraDelta], *, meta_order: bool) -> None:
        self.terms: list[tuple[np.ndarray, np.ndarray, np.float32, np.ndarray | None]] = []
        for d in deltas:
            a, b = read_lora_matrix(d.weights, d.a_key), read_lora_matrix(d.weights, d.b_key)
            m = read_lora_matrix(d.weights, d.magnitude_key).reshape(-1, 1) if d.magnitude_key else None
            if meta_order and d.head_dim:
                b = rotary_to_pairs(b, d.head_dim)
                m = None if m is None else rotary_to_pairs(m, d.head_dim)
            self.terms.append((a, b, np.float32(d.scale), m))

    def merged(self, block: np.ndarray, dtype: object, start: int) -> np.ndarray:
        """``block`` (rows ``start:…`` of the weight, held as ``dtype``) plus the deltas, as float32."""
        out = cast(block, dtype, F32)  # type: ignore[arg-type]
        if out is block or not out.flags.writeable or not out.flags.c_contiguous:
            out = np.array(out, dtype=np.float32, order="C")
        flat = out.reshape(out.shape[0], -1)
        for a, b, scale, magnitude in self.terms:
            rows = slice(start, start + flat.shape[0])
            delta = b[rows] @ a
            delta *= scale
            flat += delta
            if magnitude is not None:  # DoRA, as PEFT merges it: (m / ‖W + ΔW‖ per row) · (W + ΔW)
                norm = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64)).astype(np.float32)
                flat *= magnitude[rows] / norm[:, None]
        return out


@dataclass(frozen=True)
class FileSpan:
    """Output bytes that are a verbatim byte range of a source file: copied in the kernel."""

    shard: TorchCheckpoint
    offset: int
    nbytes: int


def _verbatim_spans(recipe: TensorRecipe, shards: Sequence[TorchCheckpoint]) -> list[FileSpan] | None:
    """When the output is the sources' bytes one after another (no permutation, transpose or cast; parts
    stacked on dim 0; contiguous shards merged on dim 0 or taken from one), the byte ranges; else None."""
    if recipe.rotary_heads or recipe.kv_fold > 1 or recipe.transpose or recipe.dtype != recipe.source_dtype:
        return None
    if recipe.fp8 is not None or recipe.deltas:
        return None
    if (len(recipe.parts) > 1 and recipe.cat_axis != 0) or any(p.zeros or p.scale for p in recipe.parts):
        return None
    spans = []
    for part in recipe.parts:
        if part.mp_axis not in (0, None) and len(shards) > 1:
            return None
        for shard in [shards[0]] if part.mp_axis is None else shards:
            ref = shard.tensors[part.source]
            if not ref.is_contiguous:
                return None
            view = part.view or ref.shape or (1,)
            row_bytes = math.prod(view[1:]) * ref.dtype.itemsize
            start, stop = part.take or (0, view[0])
            base = ref.storage.file_offset + ref.storage_offset * ref.dtype.itemsize
            spans.append(FileSpan(shard, base + start * row_bytes, (stop - start) * row_bytes))
    return spans


def produce_pieces(
    recipe: TensorRecipe,
    shards: Sequence[TorchCheckpoint],
    observe: Callable[[str, float], None] = lambda name, change: None,
    *,
    threaded: bool = False,
) -> Iterator[np.ndarray | FileSpan]:
    """The output tensor's bytes, in order: verbatim file spans where possible, else row blocks.
    ``observe`` hears the largest relative change of each requantized tensor. ``threaded``: computed
    blocks are made in a thread a block ahead of the consumer (spans are copied by the consumer, in order)."""
    spans = _verbatim_spans(recipe, shards)
    if spans is not None:
        yield from spans
        return
    blocks = _fp8_blocks(recipe, shards, observe) if recipe.fp8 is not None else produce_blocks(recipe, shards)
    yield from ahead(blocks) if threaded else blocks


def produce_blocks(recipe: TensorRecipe, shards: Sequence[TorchCheckpoint]) -> Iterator[np.ndarray]:
    """The output tensor as a sequence of blocks of whole rows (of the assembled tensor), in order, cast."""
    shape = assembled_shape(recipe, shards)
    if math.prod(shape) != math.prod(recipe.shape) * recipe.kv_fold:
        raise ConversionError(
            f"{recipe.source}: the sources assemble to {list(shape)}, which does not make {recipe.name} "
            f"of shape {list(recipe.shape)}; the checkpoint does not match its params.json."
        )
    itemsize = max(recipe.dtype.itemsize, recipe.source_dtype.itemsize, 4 if recipe.deltas else 1)
    lora = DeltaRows(recipe.deltas, meta_order=not recipe.rotary_heads) if recipe.deltas else None
    if recipe.transpose:
        if lora is not None:
            raise ConversionError(f"{recipe.name}: a LoRA delta cannot be added to a transposed tensor.")
        if len(shape) != 2 or math.prod(shape) * itemsize > MAX_TRANSPOSED_BYTES:
            raise ConversionError(f"{recipe.name}: only small 2-D tensors are transposed, not {list(shape)}.")
        whole = np.ascontiguousarray(_assembled_rows(recipe, shards, 0, shape[0]).T)
        shape = whole.shape

        def rows(start: int, stop: int) -> np.ndarray:
            return whole[start:stop]
    else:

        def rows(start: int, stop: int) -> np.ndarray:
            return _assembled_rows(recipe, shards, start, stop)

    row_bytes = math.prod(shape[1:]) * itemsize
    unit = recipe.row_unit * recipe.kv_fold
    step = block_rows(row_bytes, unit)
    for start in range(0, shape[0], step):
        block = rows(start, min(shape[0], start + step))
        if recipe.kv_fold > 1 or recipe.rotary_heads:
            block = block.reshape(block.shape[0], -1)
        if recipe.kv_fold > 1:
            block = _fold_heads(block, recipe)
        if recipe.rotary_heads:
            block = rotary_to_halves(block, recipe.head_dim)
        if lora is not None:  # in float32, rounded once to the output dtype
            yield cast(lora.merged(block, recipe.source_dtype, start // recipe.kv_fold), F32, recipe.dtype)
            continue
        yield cast(np.ascontiguousarray(block), recipe.source_dtype, recipe.dtype)


def write_weights(
    plan: ConversionPlan,
    out_dir: Path,
    *,
    advance: Callable[[int], None] = lambda n: None,
    sync: bool = True,
    skip: frozenset[str] = frozenset(),
    on_file_done: Callable[[str], None] = lambda name: None,
    observe: Callable[[str, float], None] = lambda name, change: None,
    keep_cached: frozenset[str] = frozenset(),
) -> list[str]:
    """Write every safetensors file of the plan (and the index when there are several) into ``out_dir``.

    Files named in ``skip`` are already complete there (a resumed run); ``on_file_done`` is called after
    each file is written and synced. The written bytes of the tensors in ``keep_cached`` stay in the page cache.
    """
    shards = [TorchCheckpoint(path) for path in plan.spec.shards]
    try:
        for out_file in plan.files:
            if out_file.name in skip:
                advance(out_file.nbytes)
                continue
            entries = [(t.name, t.dtype.safetensors, t.shape, t.nbytes) for t in out_file.tensors]
            writer = SafetensorsWriter(out_dir / out_file.name, entries, {"format": "pt"}, keep_cached=keep_cached)
            try:
                for recipe in out_file.tensors:
                    for piece in produce_pieces(recipe, shards, observe, threaded=True):
                        if isinstance(piece, FileSpan):
                            writer.copy_range(piece.shard.source, piece.offset, piece.nbytes, advance)
                        else:
                            advance(writer.write(piece))
            except BaseException:
                writer.abort()
                raise
            writer.close(sync=sync)
            on_file_done(out_file.name)
    finally:
        for shard in shards:
            shard.close()
    names = [f.name for f in plan.files]
    if len(plan.files) > 1:
        index = {
            "metadata": {"total_size": plan.total_size},
            "weight_map": {t.name: f.name for f in plan.files for t in f.tensors},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        names.append("model.safetensors.index.json")
    return names
