"""The ``fp8_scales_{rank}.pt`` files of Meta's FP8 releases: found beside the shards, checked, never loaded whole.

Each is a ``torch.save`` dict of float32 tensors (one per quantized weight of that rank's shard), read with
the same allow-listed reader as the shards (``torch_zip``), so nothing from the file is executed. Only
names, shapes and dtypes are checked here; the values are read later, one tensor at a time, by the executor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ...dtypes import F8_E4M3
from ...errors import InputError, MissingFileError, ShapeMismatchError, UnsupportedError
from .torch_zip import TorchCheckpoint

__all__ = ["SCALE_FILE_RE", "check_float8_placement", "check_scale_files", "float8_scale_files", "scale_files"]

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


def float8_scale_files(root: Path, checkpoints: Sequence[TorchCheckpoint]) -> tuple[Path, ...] | None:
    """None when the first shard stores no float8 weights (and no scale file lies beside it); else the scale
    files, one per shard, possibly none (``check_float8_placement`` then says so)."""
    first = checkpoints[0]
    files = scale_files(root, len(checkpoints))
    if any(ref.dtype == F8_E4M3 for ref in first.tensors.values()):
        return files
    if files:
        raise UnsupportedError(
            f"{root} has fp8_scales_N.pt files but {first.path.name} stores no float8 weights; remove the "
            "scale files from a bf16 download, or download the FP8 release again."
        )
    return None


def check_float8_placement(
    root: Path, checkpoints: Sequence[TorchCheckpoint], files: Sequence[Path], expected: set[str], what: str
) -> None:
    """Every shard stores exactly the ``expected`` tensors as float8 (``what`` says which, for the message),
    and scale files lie beside the shards."""
    for ckpt in checkpoints:
        have = {n for n, ref in ckpt.tensors.items() if ref.dtype == F8_E4M3}
        odd = sorted(have - expected) or sorted(expected - have)
        if odd:
            state = "float8" if odd[0] in have else "not float8"
            raise UnsupportedError(
                f"{ckpt.path}: {odd[0]} is {state}, but Meta's FP8 release quantizes exactly {what}; this "
                "mixture cannot be dequantized as Meta's loader does."
            )
    if not files:
        raise MissingFileError(
            f"{root} stores float8 weights but has no fp8_scales_N.pt beside its shards; copy the scale files "
            "from Meta's FP8 download (one per shard)."
        )
