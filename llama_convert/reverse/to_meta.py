"""The way back: a Hugging Face Llama folder → Meta's format, and Meta → Meta at another MP degree.

Both write ``consolidated.NN.pth`` (one streaming pass over the source, every shard at once),
``params.json``, ``tokenizer.model`` and a ``checklist.chk`` hashed while writing, into a temporary
folder that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import DType, dtype_by_name
from ..errors import InputError, MissingFileError
from ..families.llama.from_hf import MetaTarget, meta_ffn_width, meta_tensors, target_from_hf_config
from ..formats.hf.reader import HFFolder, find_hf_folder
from ..formats.meta.writer import MetaShardWriter, checklist_text
from ..io.meta_folder import parse_params
from ..output import atomic_output_dir, check_destination, check_free_space
from ..tokenizer import detect_tokenizer_kind
from ..tokenizer.tiktoken_ranks import tiktoken_model_from_tokenizer_json
from .shard_plan import RowSource, ShardedTensor, write_sharded

__all__ = ["ReverseResult", "hf_to_meta", "write_meta_folder"]

_META_DTYPE = {"llama1": "float16", "llama2": "bfloat16", "codellama": "bfloat16", "llama3": "bfloat16"}


@dataclass(frozen=True)
class ReverseResult:
    """What a conversion into Meta's format wrote."""

    destination: Path
    mp: int
    params: dict[str, Any]
    files: tuple[str, ...]
    bytes_written: int
    seconds: float
    notes: tuple[str, ...]


class _HFSource:
    def __init__(self, folder: HFFolder) -> None:
        self.folder = folder

    def dtype_of(self, name: str) -> DType:
        return self.folder.tensors[name].dtype

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.folder.read_rows(name, start, stop)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_meta_folder(
    dst: Path,
    tensors: Sequence[ShardedTensor],
    source: RowSource,
    *,
    mp: int,
    small_files: dict[str, bytes],
    force: bool = False,
    sync: bool = True,
    advance: Callable[[int], None] = lambda n: None,
    before_commit: Callable[[], None] = lambda: None,
) -> tuple[str, ...]:
    """Write the shards, ``small_files`` (params.json, tokenizer.model) and checklist.chk atomically;
    ``before_commit`` runs (and may raise) before the folder is renamed into place."""
    total = sum(t.nbytes if t.mp_axis is not None else t.nbytes * mp for t in tensors)
    check_destination(dst.absolute(), force=force)
    check_free_space(dst.absolute(), total + sum(map(len, small_files.values())) + (1 << 20))
    with atomic_output_dir(dst, force=force) as tmp, ThreadPoolExecutor(1, thread_name_prefix="md5") as hasher:
        writer = MetaShardWriter(tmp, mp, hasher)
        try:
            write_sharded(tensors, source, writer, advance=advance)
            digests = writer.finish(sync=sync)
        except BaseException:
            writer.abort()
            raise
        for name, data in small_files.items():
            (tmp / name).write_bytes(data)
            digests[name] = _md5(data)
        (tmp / "checklist.chk").write_text(checklist_text(digests))
        before_commit()
    return (*sorted(digests), "checklist.chk")


def _tokenizer_model(hf: HFFolder, target: MetaTarget) -> tuple[bytes, str]:
    """The release's tokenizer.model: copied when present, else rebuilt (Llama 3) from tokenizer.json."""
    kind_wanted = "tiktoken" if target.family == "llama3" else "sentencepiece"
    for path in (hf.root / "tokenizer.model", hf.root / "original" / "tokenizer.model"):
        if path.is_file():
            kind = detect_tokenizer_kind(path)
            if kind != kind_wanted:
                raise InputError(
                    f"{path} is a {kind} tokenizer but config.json describes a {target.family} model; "
                    "put the model's own tokenizer.model there."
                )
            return path.read_bytes(), f"tokenizer.model copied from {path.relative_to(hf.root)}"
    tokenizer_json = hf.root / "tokenizer.json"
    if target.family == "llama3" and tokenizer_json.is_file():
        data = tiktoken_model_from_tokenizer_json(tokenizer_json, vocab_size=target.vocab_size)
        return data, "tokenizer.model rebuilt from tokenizer.json (tiktoken ranks = token ids)"
    raise MissingFileError(
        f"{hf.root} has no tokenizer.model{' or tokenizer.json' if target.family == 'llama3' else ''}; "
        "copy the release's tokenizer.model into it (or pass tokenizer=False / --no-tokenizer)."
    )


def _vocab_from_tokenizer(params: dict[str, Any], model: bytes, vocab: int) -> dict[str, Any]:
    """Llama 1/2 write ``vocab_size: -1`` and Code Llama none: Meta's code then sizes the embedding from the
    tokenizer. Keep that form when the tokenizer has exactly the model's vocabulary, else state the size."""
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=model).vocab_size()
    out = {k: v for k, v in params.items() if k != "vocab_size"}
    if pieces != vocab:
        return {**out, "vocab_size": vocab}
    return {**out, "vocab_size": -1} if "vocab_size" in params else out


def _original_params(hf: HFFolder, target: MetaTarget) -> tuple[dict[str, Any], str] | None:
    """A Hub snapshot's ``original/params.json`` when it describes this very model: Meta's own values win."""
    path = hf.root / "original" / "params.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    p = parse_params(raw, path)
    theirs = (p.dim, p.n_layers, p.n_heads, p.n_kv_heads, p.norm_eps, p.use_scaled_rope)
    ours = (target.dim, target.n_layers, target.n_heads, target.n_kv_heads, target.params["norm_eps"])
    same = theirs[:5] == ours and p.use_scaled_rope == bool(target.params.get("use_scaled_rope"))
    same = same and meta_ffn_width(p.dim, p.multiple_of, p.ffn_dim_multiplier) == target.intermediate_size
    same = same and (p.vocab_size in (None, target.vocab_size))
    return (raw, f"params.json from {path.relative_to(hf.root)}") if same else None


def hf_to_meta(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    mp: int = 1,
    dtype: str | DType | None = None,
    force: bool = False,
    tokenizer: bool = True,
    sync: bool = True,
    progress: Any = None,
) -> ReverseResult:
    """Convert the Hugging Face Llama folder ``src`` into Meta's original format at ``dst`` with ``mp`` shards."""
    started = time.perf_counter()
    if mp < 1:
        raise InputError(f"--mp {mp} is not a positive number of model-parallel shards.")
    with find_hf_folder(src) as hf:
        target = target_from_hf_config(hf.config, where=str(hf.root / "config.json"))
        out_dtype = dtype_by_name(dtype) if isinstance(dtype, str) else dtype
        out_dtype = out_dtype or dtype_by_name(_META_DTYPE[target.family])
        shapes = {name: ref.shape for name, ref in hf.tensors.items()}
        tensors, params, notes = meta_tensors(target, shapes, mp=mp, dtype=out_dtype, where=str(hf.root))
        notes = [*target.notes, *notes]
        original = _original_params(hf, target)
        if original is not None:
            params = {**original[0], **({"n_kv_heads": params["n_kv_heads"]} if "n_kv_heads" in params else {})}
            notes.append(original[1])
        small = {"params.json": json.dumps(params).encode()}
        if tokenizer:
            small["tokenizer.model"], note = _tokenizer_model(hf, target)
            notes.append(note)
            if target.family != "llama3" and original is None:
                params = _vocab_from_tokenizer(params, small["tokenizer.model"], target.vocab_size)
            small["params.json"] = json.dumps(params).encode()
        total = sum(t.nbytes if t.mp_axis is not None else t.nbytes * mp for t in tensors)
        if progress is not None:
            progress.start(total, f"Writing Meta MP{mp}")
        try:
            files = write_meta_folder(
                Path(dst),
                tensors,
                _HFSource(hf),
                mp=mp,
                small_files=small,
                force=force,
                sync=sync,
                advance=progress.advance if progress is not None else (lambda n: None),
            )
        finally:
            if progress is not None:
                progress.finish()
    return ReverseResult(Path(dst), mp, params, files, total, time.perf_counter() - started, tuple(notes))
