"""A Meta-format model folder: its shards, params.json and tokenizer file, found and parsed."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError, MissingFileError, UnsupportedError
from ..storage import SourcePath, as_source_path

__all__ = [
    "MetaFolder",
    "MetaParams",
    "ffn_width",
    "find_meta_folder",
    "hub_repo",
    "is_generic_dir_name",
    "parse_params",
    "resolve_checkpoint_dir",
]

_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_SINGLE_SHARD = "consolidated.pth"  # the Hub's original/ folder of Llama 3.2 11B Vision names its one shard so
_HUB_CACHE_RE = re.compile(r"^models--([^/]+?)--(.+)$")


def ffn_width(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The SwiGLU hidden width exactly as Meta's FeedForward computes it."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class MetaParams:
    """The model arguments of ``params.json``, with Meta's defaults applied."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int | None  # None when absent or -1: taken from the tokenizer / embedding
    multiple_of: int
    ffn_dim_multiplier: float | None
    norm_eps: float
    rope_theta: float | None  # None when absent: the release's default
    use_scaled_rope: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def intermediate_size(self) -> int:
        return ffn_width(self.dim, self.multiple_of, self.ffn_dim_multiplier)


@dataclass(frozen=True)
class MetaFolder:
    """The files of a Meta checkpoint folder (nothing is read beyond params.json)."""

    root: Path
    params_path: Path
    raw_params: dict[str, Any]
    params: MetaParams
    shards: tuple[Path, ...]
    tokenizer: Path | None


# Bounds far above any released Llama (405B: dim 16384, 126 layers, 128 heads; vocabularies up to 202048):
# a larger value is damage, refused at once rather than taken on trust and allocated for.
_PLAUSIBLE = {"dim": 1 << 17, "n_layers": 1 << 11, "n_heads": 1 << 12, "n_kv_heads": 1 << 12, "vocab_size": 1 << 23,
              "multiple_of": 1 << 20}  # fmt: skip


def parse_params(raw: Any, path: Path) -> MetaParams:
    """Validate ``params.json`` content (also nested under ``"model"``) into MetaParams."""
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and "dim" not in raw:
        raw = raw["model"]
    if not isinstance(raw, dict):
        raise InputError(f"{path} does not hold a JSON object of model arguments; restore Meta's params.json.")

    def need(key: str, kind: type, *, required: bool = True, default: Any = None, positive: bool = False) -> Any:
        value = raw.get(key)
        if value is None:
            if required:
                raise InputError(f"{path} lacks the key {key!r}; restore Meta's params.json.")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise InputError(f"{path}: {key!r} is {value!r}, expected a {kind.__name__}; restore Meta's params.json.")
        if kind is float and not math.isfinite(value):
            raise InputError(f"{path}: {key!r} is {value}, expected a finite number; restore Meta's params.json.")
        if positive and value <= 0:
            raise InputError(f"{path}: {key!r} is {value}, expected a positive number; restore Meta's params.json.")
        if key in _PLAUSIBLE and value > _PLAUSIBLE[key]:
            raise InputError(
                f"{path}: {key!r} is {value}, implausibly large (no Llama has more than {_PLAUSIBLE[key]}); "
                "restore Meta's params.json."
            )
        return value

    dim, n_layers = need("dim", int, positive=True), need("n_layers", int, positive=True)
    n_heads = need("n_heads", int, positive=True)
    n_kv_heads = need("n_kv_heads", int, required=False, default=n_heads, positive=True)
    vocab = need("vocab_size", int, required=False)
    if dim % n_heads or n_heads % n_kv_heads:
        raise InputError(
            f"{path}: dim {dim}, n_heads {n_heads} and n_kv_heads {n_kv_heads} do not divide evenly; "
            "restore Meta's params.json."
        )
    if (dim // n_heads) % 2:
        raise UnsupportedError(f"{path}: head dimension {dim // n_heads} is odd; rotary embeddings need it even.")
    return MetaParams(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=vocab if vocab and vocab > 0 else None,
        multiple_of=need("multiple_of", int, required=False, default=256, positive=True),
        ffn_dim_multiplier=need("ffn_dim_multiplier", float, required=False, positive=True),
        norm_eps=need("norm_eps", float, required=False, default=1e-5, positive=True),
        rope_theta=need("rope_theta", float, required=False, positive=True),
        use_scaled_rope=need("use_scaled_rope", bool, required=False, default=False),
    )


def _is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "params.json").is_file()
        or (path / _SINGLE_SHARD).is_file()
        or any(_SHARD_RE.match(p.name) for p in path.iterdir())
    )


def resolve_checkpoint_dir(src: Path) -> Path:
    """The folder that holds the shards: ``src`` itself, or a Hub snapshot's ``original/`` (or its one
    ``original/mpN`` subfolder). Several candidates and none named is refused."""
    if _is_checkpoint_dir(src) or not (src / "original").is_dir():
        return src
    original = src / "original"
    candidates = [original] if _is_checkpoint_dir(original) else []
    candidates += sorted(p for p in original.iterdir() if _is_checkpoint_dir(p))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise MissingFileError(
            f"{original} holds no Meta checkpoint (no params.json, no consolidated.NN.pth); download it with "
            '--include "original/*".'
        )
    names = ", ".join(str(c.relative_to(src)) for c in candidates)
    raise InputError(f"{src} holds several Meta checkpoints ({names}); name the one to convert, e.g. {candidates[0]}.")


_CHECKPOINT_DIR_NAMES = re.compile(r"^(original|mp\d+|fp8|int4|consolidated|checkpoints?|[0-9a-f]{40})$", re.I)


def hub_repo(checkpoint_dir: Path) -> tuple[Path | None, str | None]:
    """The Hub snapshot folder holding ``checkpoint_dir`` (an ``original/`` or ``original/mpN``) and the
    repository's name (from ``models--org--name`` in a Hub cache, else the snapshot folder's name)."""
    path = checkpoint_dir.resolve() if checkpoint_dir.exists() else checkpoint_dir.absolute()
    cached = _HUB_CACHE_RE.match(path.parent.parent.name) if path.parent.name == "snapshots" else None
    if cached:  # a checkpoint at the root of a Hub cache snapshot
        return path, cached.group(2)
    if path.name.lower() != "original":
        if path.parent.name.lower() != "original":
            return None, None
        path = path.parent
    root = path.parent
    name = root.name
    parent = root.parent
    if parent.name == "snapshots":
        match = _HUB_CACHE_RE.match(parent.parent.name)
        if match:
            name = match.group(2)
    return root, name


def is_generic_dir_name(name: str) -> bool:
    """Folder names that say nothing about the model (``original``, ``mp16``, a revision hash…)."""
    return bool(_CHECKPOINT_DIR_NAMES.match(name)) or name in ("snapshots", "")


def _shard_paths(root: Path) -> tuple[Path, ...]:
    if (root / _SINGLE_SHARD).is_file() and not any(_SHARD_RE.match(p.name) for p in root.iterdir()):
        return (root / _SINGLE_SHARD,)
    numbered: dict[int, Path] = {}
    for entry in root.iterdir():
        match = _SHARD_RE.match(entry.name)
        if match:
            numbered[int(match.group(1))] = entry
    if not numbered:
        raise MissingFileError(
            f"{root} has no consolidated.NN.pth shards; point at the folder Meta's download created."
        )
    missing = [i for i in range(max(numbered) + 1) if i not in numbered]
    if missing:
        names = ", ".join(f"consolidated.{i:02d}.pth" for i in missing)
        raise MissingFileError(
            f"{root} is missing {names} (found {len(numbered)} shards numbered up to {max(numbered):02d}); "
            "download the missing shard(s) again."
        )
    return tuple(numbered[i] for i in range(len(numbered)))


def find_meta_folder(root: str | Path | SourcePath) -> MetaFolder:
    """Locate and parse the pieces of a Meta checkpoint folder (local or remote); raises a clear error if it
    is not one."""
    root = as_source_path(root)
    if not root.exists():
        raise MissingFileError(f"{root} does not exist; give the folder that holds consolidated.00.pth.")
    if not root.is_dir():
        raise InputError(f"{root} is a file; give the folder that holds consolidated.00.pth and params.json.")
    root = resolve_checkpoint_dir(root)
    if (root / "config.json").exists() and (any(root.glob("*.safetensors")) or any(root.glob("*.bin"))):
        raise UnsupportedError(
            f"{root} is already a Hugging Face model folder (config.json + weights); nothing to convert."
        )
    params_path = root / "params.json"
    if not params_path.exists():
        if not _is_checkpoint_dir(root):
            raise MissingFileError(
                f"{root} is not a Meta Llama checkpoint folder (no params.json, no consolidated.NN.pth); "
                "point at the folder Meta's download created."
            )
        raise MissingFileError(f"{params_path} is missing; copy params.json from Meta's download into {root}.")
    try:
        raw = json.loads(params_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: also numbers of more than 4300 digits
        raise InputError(f"{params_path} is not valid JSON ({exc}); restore Meta's params.json.") from None
    params = parse_params(raw, params_path)
    shards = _shard_paths(root)
    tokenizer = next((p for p in (root / "tokenizer.model", root.parent / "tokenizer.model") if p.is_file()), None)
    return MetaFolder(root, params_path, raw, params, shards, tokenizer)
