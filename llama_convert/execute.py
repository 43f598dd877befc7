"""Run a ConversionPlan: read source row blocks, merge, permute, cast, stream to safetensors.

Memory stays bounded by the block size, whatever the model size: no tensor is ever held
whole unless it is smaller than one block.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtypes import cast
from .errors import ConversionError
from .io.safetensors_writer import SafetensorsWriter
from .io.torch_zip import TorchCheckpoint
from .plan import ConversionPlan, TensorRecipe

__all__ = ["BLOCK_BYTES", "produce_blocks", "write_weights"]

BLOCK_BYTES = 32 << 20  # per block of output rows; bounds memory together with the read buffers


def _merged_rows(recipe: TensorRecipe, shards: list[TorchCheckpoint], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the tensor obtained by concatenating all shards along ``concat_dim``."""
    first = shards[0].tensors[recipe.source]
    if recipe.concat_dim is None or len(shards) == 1:
        return shards[0].read_rows(recipe.source, start, stop)
    if recipe.concat_dim == 0:
        per = first.shape[0]
        out = np.empty((stop - start, *first.shape[1:]), dtype=first.dtype.storage)
        row = start
        while row < stop:
            shard, local = divmod(row, per)
            take = min(stop - row, per - local)
            shards[shard].read_rows(recipe.source, local, local + take, out=out[row - start : row - start + take])
            row += take
        return out
    cols = first.shape[1]
    out = np.empty((stop - start, cols * len(shards)), dtype=first.dtype.storage)
    for i, shard in enumerate(shards):
        out[:, i * cols : (i + 1) * cols] = shard.read_rows(recipe.source, start, stop)
    return out


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


def _rotary_to_halves(block: np.ndarray, head_dim: int) -> np.ndarray:
    """Meta rotates interleaved pairs (2i, 2i+1); Hugging Face rotates halves (i, i + head_dim/2)."""
    cols = block.shape[-1]
    return block.reshape(-1, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(-1, cols)


@dataclass(frozen=True)
class FileSpan:
    """Output bytes that are a verbatim byte range of a source file: copied in the kernel."""

    shard: TorchCheckpoint
    offset: int
    nbytes: int


def _verbatim_spans(recipe: TensorRecipe, shards: list[TorchCheckpoint]) -> list[FileSpan] | None:
    """When the output tensor is the shards' bytes one after another (no permutation, no cast,
    contiguous, merged along dim 0 or taken from one shard), the byte ranges to copy; else None."""
    if recipe.rotary_heads or recipe.kv_fold > 1 or recipe.dtype != recipe.source_dtype:
        return None
    if recipe.concat_dim not in (0, None) and len(shards) > 1:
        return None
    parts = [shards[0]] if recipe.concat_dim is None else shards
    spans = []
    for shard in parts:
        ref = shard.tensors[recipe.source]
        if not ref.is_contiguous:
            return None
        spans.append(FileSpan(shard, ref.storage.file_offset + ref.storage_offset * ref.dtype.itemsize, ref.nbytes))
    return spans


def produce_pieces(recipe: TensorRecipe, shards: list[TorchCheckpoint]) -> Iterator[np.ndarray | FileSpan]:
    """The output tensor's bytes, in order: verbatim file spans where possible, else row blocks."""
    spans = _verbatim_spans(recipe, shards)
    if spans is not None:
        yield from spans
    else:
        yield from produce_blocks(recipe, shards)


def produce_blocks(recipe: TensorRecipe, shards: list[TorchCheckpoint]) -> Iterator[np.ndarray]:
    """The output tensor's bytes as a sequence of row blocks, in order."""
    rows = recipe.shape[0]
    row_bytes = math.prod(recipe.shape[1:]) * max(recipe.dtype.itemsize, recipe.source_dtype.itemsize)
    unit = recipe.row_unit
    block_rows = max(unit, (BLOCK_BYTES // max(row_bytes, 1)) // unit * unit)
    for start in range(0, rows, block_rows):
        stop = min(rows, start + block_rows)
        block = _merged_rows(recipe, shards, start * recipe.kv_fold, stop * recipe.kv_fold)
        if recipe.kv_fold > 1:
            block = _fold_heads(block, recipe)
        if recipe.rotary_heads:
            block = _rotary_to_halves(block, recipe.head_dim)
        yield cast(block, recipe.source_dtype, recipe.dtype)


def write_weights(
    plan: ConversionPlan,
    out_dir: Path,
    *,
    advance: Callable[[int], None] = lambda n: None,
    sync: bool = True,
) -> list[str]:
    """Write every safetensors file of the plan (and the index when there are several) into ``out_dir``."""
    shards = [TorchCheckpoint(path) for path in plan.spec.shards]
    try:
        for out_file in plan.files:
            entries = [(t.name, t.dtype.safetensors, t.shape, t.nbytes) for t in out_file.tensors]
            writer = SafetensorsWriter(out_dir / out_file.name, entries, {"format": "pt"})
            try:
                for recipe in out_file.tensors:
                    for piece in produce_pieces(recipe, shards):
                        if isinstance(piece, FileSpan):
                            writer.copy_from(piece.shard.fileno(), piece.offset, piece.nbytes, advance)
                        else:
                            advance(writer.write(piece))
            except BaseException:
                writer.abort()
                raise
            writer.close(sync=sync)
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
