"""The full check behind a sampled tie: every row of the tensor a tied model's folder leaves out equals the
one it writes.

For a remote source it runs after the weight stream and reads the dropped tensor once, in file order after
everything the stream read (the checksum is computed from those same bytes instead of fetching them again),
against the kept tensor's bytes in the staged output (no second fetch of the source). For a local source it
runs beside the stream and compares the two source tensors (their pages are read anyway; after the stream it
would wait for the disk). Where the written tensor is not the source's bytes as they were (a cast, a merged
adapter) the source tensors are compared with each other too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from ..execute import produce_blocks
from ..formats.hf.reader import SafetensorsFile
from ..formats.meta.torch_zip import TorchCheckpoint
from ..plan import ConversionPlan, TiedRows

__all__ = ["check_tied_rows"]


def check_tied_rows(tie: TiedRows, plan: ConversionPlan, out_dir: Path | None) -> None:
    """Raise ``ConversionError(tie.mismatch)`` unless every row of ``tie.dropped`` equals ``tie.kept``: against
    the written tensor in ``out_dir`` (after the stream), or with ``out_dir`` None against its source tensor
    (beside the stream: a local source's pages are read by the stream anyway)."""
    (out_file,) = [f for f in plan.files if any(t.name == tie.kept for t in f.tensors)]
    (kept,) = [t for t in out_file.tensors if t.name == tie.kept]
    shards = [TorchCheckpoint(path) for path in plan.spec.shards]
    written = None
    try:
        if any(s.tensors[p.source].shape != s.tensors[tie.dropped].shape for s in shards for p in kept.parts):
            raise ConversionError(tie.mismatch)
        as_stored = dataclasses.replace(kept, deltas=(), dtype=kept.source_dtype)
        parts = tuple(dataclasses.replace(p, source=tie.dropped) for p in kept.parts)
        dropped = produce_blocks(dataclasses.replace(as_stored, parts=parts), shards)
        source_rows = None
        if out_dir is None or kept.deltas or kept.dtype != kept.source_dtype:  # not the written bytes
            source_rows = produce_blocks(as_stored, shards)
        else:
            written = SafetensorsFile(out_dir / out_file.name)
        row = 0
        for block in dropped:
            n = block.shape[0]
            if source_rows is not None:
                other = next(source_rows)
            else:
                assert written is not None
                other = written.read_rows(tie.kept, row, row + n)
            row += n
            if other.shape != block.shape or not _same_bytes(other, block):
                raise ConversionError(tie.mismatch)
    finally:
        if written is not None:
            written.close()
        for shard in shards:
            shard.close()


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two C-contiguous arrays of one size, compared in words (6x faster than bytes)."""
    x, y = np.ascontiguousarray(a).reshape(-1).view(np.uint8), np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    if x.size == y.size and x.size % 8 == 0:
        x, y = x.view(np.uint64), y.view(np.uint64)
    return np.array_equal(x, y)
