"""A Meta-format model folder: its shards, params.json and tokenizer file, found and parsed."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError, UnsupportedError

__all__ = ["MetaFolder", "MetaParams", "find_meta_folder", "parse_params"]

_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


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
        """The SwiGLU hidden width exactly as Meta's FeedForward computes it."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


@dataclass(frozen=True)
class MetaFolder:
    """The files of a Meta checkpoint folder (nothing is read beyond params.json)."""

    root: Path
    params_path: Path
    raw_params: dict[str, Any]
    params: MetaParams
    shards: tuple[Path, ...]
    tokenizer: Path | None


def parse_params(raw: Any, path: Path) -> MetaParams:
    """Validate ``params.json`` content (also nested under ``"model"``) into MetaParams."""
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and "dim" not in raw:
        raw = raw["model"]
    if not isinstance(raw, dict):
        raise InputError(f"{path} does not hold a JSON object of model arguments; restore Meta's params.json.")

    def need(key: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
        value = raw.get(key, default)
        if value is None:
            if required:
                raise InputError(f"{path} lacks the key {key!r}; restore Meta's params.json.")
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise InputError(f"{path}: {key!r} is {value!r}, expected a {kind.__name__}; restore Meta's params.json.")
        return value

    dim, n_layers, n_heads = need("dim", int), need("n_layers", int), need("n_heads", int)
    n_kv_heads = need("n_kv_heads", int, required=False) or n_heads
    vocab = need("vocab_size", int, required=False)
    for key, value in (("dim", dim), ("n_layers", n_layers), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if value <= 0:
            raise InputError(f"{path}: {key!r} is {value}, expected a positive number; restore Meta's params.json.")
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
        multiple_of=need("multiple_of", int, required=False, default=256),
        ffn_dim_multiplier=need("ffn_dim_multiplier", float, required=False),
        norm_eps=need("norm_eps", float, required=False, default=1e-5),
        rope_theta=need("rope_theta", float, required=False),
        use_scaled_rope=need("use_scaled_rope", bool, required=False, default=False),
    )


def _shard_paths(root: Path) -> tuple[Path, ...]:
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


def find_meta_folder(root: str | Path) -> MetaFolder:
    """Locate and parse the pieces of a Meta checkpoint folder; raises a clear error if it is not one."""
    root = Path(root)
    if not root.exists():
        raise MissingFileError(f"{root} does not exist; give the folder that holds consolidated.00.pth.")
    if not root.is_dir():
        raise InputError(f"{root} is a file; give the folder that holds consolidated.00.pth and params.json.")
    if (root / "config.json").exists() and (any(root.glob("*.safetensors")) or any(root.glob("*.bin"))):
        raise UnsupportedError(
            f"{root} is already a Hugging Face model folder (config.json + weights); nothing to convert."
        )
    params_path = root / "params.json"
    if not params_path.exists():
        if not any(_SHARD_RE.match(p.name) for p in root.iterdir()):
            raise MissingFileError(
                f"{root} is not a Meta Llama checkpoint folder (no params.json, no consolidated.NN.pth); "
                "point at the folder Meta's download created."
            )
        raise MissingFileError(f"{params_path} is missing; copy params.json from Meta's download into {root}.")
    try:
        raw = json.loads(params_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{params_path} is not valid JSON ({exc}); restore Meta's params.json.") from None
    params = parse_params(raw, params_path)
    shards = _shard_paths(root)
    tokenizer = next((p for p in (root / "tokenizer.model", root.parent / "tokenizer.model") if p.is_file()), None)
    return MetaFolder(root, params_path, raw, params, shards, tokenizer)
