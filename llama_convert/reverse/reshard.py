"""Meta → Meta at another model-parallel degree, without going through Hugging Face.

Each tensor is merged over the source shards on the fly (row blocks; duplicated KV heads of an MP16
release folded back after checking they are copies) and cut again for the target degree (KV heads
repeated when the target has more shards than KV heads, exactly as Meta's MP16 release does).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import InputError, UnsupportedError
from ..execute import _fold_heads, _merged_rows
from ..io.torch_zip import TorchCheckpoint
from ..pipeline import _BackgroundVerify
from ..spec import LAYER_TENSORS, ModelSpec, detect
from .shard_plan import ShardedTensor
from .to_meta import ReverseResult, write_meta_folder

__all__ = ["reshard"]

_KV = ("attention.wk.weight", "attention.wv.weight")


@dataclass(frozen=True)
class _Merge:
    """How one source tensor is merged (duck-types the fields the forward executor's helpers read)."""

    source: str
    concat_dim: int | None
    kv_fold: int
    head_dim: int


def _axis(spec: ModelSpec, name: str) -> int | None:
    if name == "tok_embeddings.weight":
        return spec.release.embedding_split_dim
    if name == "output.weight":
        return 0
    if name.startswith("layers."):
        return LAYER_TENSORS[name.split(".", 2)[2]][1]
    return None  # norm.weight, rope.freqs: the same in every shard


class _MetaSource:
    """Rows of the merged (and KV-folded) tensors of a Meta folder."""

    def __init__(self, spec: ModelSpec, merges: dict[str, _Merge]) -> None:
        self.shards = [TorchCheckpoint(p) for p in spec.shards]
        self.merges = merges

    def dtype_of(self, name: str) -> DType:
        return self.shards[0].tensors[name].dtype

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        m = self.merges[name]
        block = _merged_rows(m, self.shards, start * m.kv_fold, stop * m.kv_fold)  # type: ignore[arg-type]
        return _fold_heads(block, m) if m.kv_fold > 1 else block  # type: ignore[arg-type]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


def _plan(spec: ModelSpec, mp: int) -> tuple[list[ShardedTensor], dict[str, _Merge], dict[str, Any], list[str]]:
    kv, hd = spec.n_kv_heads, spec.params.head_dim
    if mp > kv and mp % kv:
        raise UnsupportedError(f"{mp} shards cannot share {kv} KV heads (Meta repeats heads only when MP divides).")
    repeat = mp // kv if mp > kv else 1
    with TorchCheckpoint(spec.shards[0]) as first:
        refs = dict(first.tensors)
    tensors, merges = [], {}
    for name, ref in refs.items():
        axis = _axis(spec, name)
        is_kv = name.endswith(_KV)
        fold = spec.kv_fold if is_kv else 1
        shape = list(ref.shape)
        if axis is not None:
            shape[axis] = shape[axis] * spec.mp // fold
        rep = repeat if is_kv else 1
        shape[0] *= rep if shape else 1
        merges[name] = _Merge(name, axis, fold, hd)
        tensors.append(ShardedTensor(name, name, tuple(shape), ref.dtype, axis, kv_repeat=rep, head_dim=hd))
    problems = [p for t in tensors if (p := t.check_divisible(mp))]
    if problems:
        raise UnsupportedError(f"cannot write {mp} model-parallel shards: {problems[0]}; choose another --mp.")
    params = dict(spec.folder.raw_params)
    target_kv = kv * repeat
    notes = list(spec.notes)
    if target_kv != spec.params.n_kv_heads:
        nested = "dim" not in params and isinstance(params.get("model"), dict)
        (params["model"] if nested else params)["n_kv_heads"] = target_kv
        if repeat > 1:
            notes.append(f"each of the {kv} KV heads repeated {repeat}× over {mp} shards, as Meta's MP{mp} does")
    return tensors, merges, params, notes


def reshard(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    mp: int,
    force: bool = False,
    verify: bool = True,
    fold_kv_heads: bool = True,
    sync: bool = True,
    progress: Any = None,
) -> ReverseResult:
    """Rewrite the Meta folder ``src`` with ``mp`` model-parallel shards at ``dst`` (bit-exact tensors)."""
    started = time.perf_counter()
    if mp < 1:
        raise InputError(f"--mp {mp} is not a positive number of model-parallel shards.")
    spec = detect(src, fold_kv_heads=fold_kv_heads)
    tensors, merges, params, notes = _plan(spec, mp)
    assert spec.folder.tokenizer is not None  # detect() refuses a folder without one
    small = {"params.json": json.dumps(params).encode(), "tokenizer.model": spec.folder.tokenizer.read_bytes()}
    total = sum(t.nbytes if t.mp_axis is not None else t.nbytes * mp for t in tensors)
    verifier = _BackgroundVerify(spec.folder.root, workers=1) if verify else None
    source = _MetaSource(spec, merges)
    if progress is not None:
        progress.start(total, f"Resharding {spec.name} MP{spec.mp} → MP{mp}")

    def advance(n: int) -> None:
        if progress is not None:
            progress.advance(n)
        if verifier is not None:
            verifier.check()

    def before_commit() -> None:
        if verifier is not None and not verifier.result():
            notes.append("no checklist.chk found: the source checksums were not verified.")

    try:
        files = write_meta_folder(
            Path(dst),
            tensors,
            source,
            mp=mp,
            small_files=small,
            force=force,
            sync=sync,
            advance=advance,
            before_commit=before_commit,
        )
    except BaseException:
        if verifier is not None:
            verifier.cancel()
        raise
    finally:
        source.close()
        if progress is not None:
            progress.finish()
    return ReverseResult(Path(dst), mp, params, files, total, time.perf_counter() - started, tuple(notes))
