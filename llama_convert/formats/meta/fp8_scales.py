"""The ``fp8_scales_{rank}.pt`` files of Meta's FP8 releases: found beside the shards, checked, never loaded whole.

Each is a ``torch.save`` dict of float32 tensors (one per quantized weight of that rank's shard), read with
the same allow-listed reader as the shards (``torch_zip``), so nothing from the file is executed. Only
names, shapes and dtypes are checked here; the values are read later, one tensor at a time, by the executor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ...errors import InputError, MissingFileError, ShapeMismatchError
from .torch_zip import TorchCheckpoint

__all__ = ["SCALE_FILE_RE", "check_scale_files", "scale_files"]

SCALE_FILE_RE = re.compile(r"^fp8_scales_(\d+)\.pt$")


def scale_files(root: Path, n_shards: int) -> tuple[Path, ...]:
    """The scale files beside ``n_shards`` shards, one per rank (``()`` when there are none at all)."""
    found = {int(m.group(1)): p for p in root.iterdir() if (m := SCALE_FILE_RE.match(p.name))}
    if not found:
        return ()
    missing = [i for i in range(n_shards) if i not in found]
    extra = sorted(i for i in found if i >= n_shards)
    if missing or extra:
        what = (
            f"lacks {', '.join(f'fp8_scales_{i}.pt' for i in missing)}"
            if missing
            else f"holds {', '.join(f'fp8_scales_{i}.pt' for i in extra)} beyond its {n_shards} shard(s)"
        )
        raise MissingFileError(
            f"{root} has {len(found)} fp8_scales_N.pt file(s) for {n_shards} consolidated shard(s) and {what}; "
            "every shard needs its own scale file — download the FP8 release again."
        )
    return tuple(found[i] for i in range(n_shards))


def check_scale_files(files: Sequence[Path], expected: Sequence[dict[str, tuple[int, ...]]]) -> None:
    """Check that scale file ``rank`` holds exactly the float32 tensors ``expected[rank]`` names, shaped so."""
    for path, want in zip(files, expected, strict=True):
        with TorchCheckpoint(path) as scales:
            have = scales.tensors
            missing = [k for k in want if k not in have]
            if missing:
                raise ShapeMismatchError(
                    f"{path} lacks the scale {missing[0]!r}"
                    + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                    + "; it does not belong to these shards — download the FP8 release again."
                )
            extra = sorted(set(have) - set(want))
            if extra:
                raise InputError(
                    f"{path} holds the scale {extra[0]!r}, which names no float8 weight of its shard; "
                    "it does not belong to these shards — download the FP8 release again."
                )
            for key, shape in want.items():
                ref = have[key]
                if ref.shape != shape or ref.dtype.torch_name != "float32":
                    raise ShapeMismatchError(
                        f"{path}: scale {key!r} is {ref.dtype} {list(ref.shape)} but its weight needs float32 "
                        f"{list(shape)}; it does not belong to these shards — download the FP8 release again."
                    )
