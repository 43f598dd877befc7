"""Open a Meta checkpoint and let the families recognise it: folder + names + Hub evidence → ModelSpec."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError
from .families import Hints, ModelSpec, recognise
from .formats.hf.checks import check_config, check_generation_config, check_tokenizer_config
from .formats.meta.folder import MetaFolder, find_meta_folder, hub_repo, is_generic_dir_name
from .formats.meta.torch_zip import TorchCheckpoint
from .formats.storage import SourcePath, resolve_source

__all__ = ["detect", "hints_for"]

_NAME_DEPTH = 3  # the folder and two parents: Llama-3.1-405B-Instruct/original/mp16


_SNAPSHOT_FILES = {  # what a Hub snapshot's own files say, checked before the families read them
    "config.json": check_config,
    "generation_config.json": check_generation_config,
    "tokenizer_config.json": check_tokenizer_config,
}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); restore it or delete it.") from None
    return value if isinstance(value, dict) else None


def hints_for(
    folder: MetaFolder,
    *,
    llama_version: str | None = None,
    instruct: bool | None = None,
    fold_kv_heads: bool = True,
) -> Hints:
    """Names of the checkpoint folder and its parents (generic ones such as ``original`` or ``mp16``
    skipped), the Hub repository around an ``original/`` folder and its config files, and the overrides."""
    path = folder.root.resolve()
    # The nearest folder whose name is not generic names the model; further parents are where it is kept.
    names = [p.name for p in (path, *path.parents)[:_NAME_DEPTH] if not is_generic_dir_name(p.name)][:1]
    repo_root, repo_name = hub_repo(folder.root)
    hf: dict[str, dict[str, Any] | None] = {}
    if repo_root is not None:
        for name, check in _SNAPSHOT_FILES.items():
            value = _read_json(repo_root / name)
            hf[name] = None if value is None else check(value, repo_root / name)
    return Hints(
        names=tuple(names),
        repo_name=repo_name,
        hf_config=hf.get("config.json"),
        hf_generation_config=hf.get("generation_config.json"),
        hf_tokenizer_config=hf.get("tokenizer_config.json"),
        version=llama_version,
        instruct=instruct,
        fold_kv_heads=fold_kv_heads,
    )


def detect(
    src: str | os.PathLike[str] | SourcePath,
    *,
    llama_version: str | None = None,
    instruct: bool | None = None,
    fold_kv_heads: bool = True,
) -> ModelSpec:
    """Read a Meta checkpoint folder (or a Hub snapshot holding ``original/``, a Hub repository id, a remote
    folder) and return its ModelSpec; raises a LlamaConvertError with one clear sentence if it is unusable."""
    folder = find_meta_folder(resolve_source(src))
    hints = hints_for(folder, llama_version=llama_version, instruct=instruct, fold_kv_heads=fold_kv_heads)
    checkpoints = [TorchCheckpoint(path) for path in folder.shards]
    try:
        return recognise(folder, checkpoints, hints)
    finally:
        for ckpt in checkpoints:
            ckpt.close()
