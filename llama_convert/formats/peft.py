"""A PEFT LoRA adapter folder as a source: adapter_config.json and the lora_A/lora_B matrices, read lazily.

PEFT saves ``adapter_config.json`` beside ``adapter_model.safetensors`` (or ``adapter_model.bin``, a
``torch.save`` file, read here with the allow-listed pickle reader, never ``torch.load``). Each adapted
Linear ``<module>`` of the base model has ``base_model.model.<module>.lora_A.weight`` ([r, in]) and
``….lora_B.weight`` ([out, r]); its merged weight is ``W + s · B @ A`` with ``s = lora_alpha / r``
(``lora_alpha / √r`` with ``use_rslora``; ``rank_pattern``/``alpha_pattern`` override r and alpha per
module, matched as PEFT's ``get_pattern_key`` matches them). What changes more than such a delta (DoRA,
``modules_to_save``, biases, embedding adapters, trainable tokens) is refused by name. Nothing here knows
a model family: module paths are handed out as PEFT names them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import DTYPES, cast
from ..errors import InputError, MissingFileError, ShapeMismatchError, UnsupportedError
from .hf.reader import SafetensorsFile
from .meta.torch_zip import TorchCheckpoint

__all__ = ["CONFIG_NAME", "Adapter", "LoraModule", "read_adapter", "read_lora_matrix"]

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<which>lora_A|lora_B)\.weight$")
_MAX_CONFIG = 1 << 20

# Config fields whose non-default value changes more than W + s·B·A: (field, what it is, why we refuse).
_REFUSED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("use_dora", "DoRA (use_dora) rescales each output row of W + s·B·A by a learned magnitude"),
    ("modules_to_save", "modules_to_save replaces whole modules"),
    ("trainable_token_indices", "trainable_token_indices replaces embedding rows"),
    ("lora_bias", "lora_bias adds a bias to the adapted layers"),
    ("fan_in_fan_out", "fan_in_fan_out is for GPT-2 style Conv1D layers, not Llama's Linear layers"),
    ("layer_replication", "layer_replication changes the model's layers"),
    ("target_parameters", "target_parameters adapts raw parameters (MoE experts)"),
    ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens) applies only after its tokens"),
    ("use_qalora", "QALoRA pools its inputs"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora) shares its matrices across shards"),
    ("kasa_config", "KaSA (kasa_config) adds learned singular values"),
    ("monteclora_config", "MonteCLoRA (monteclora_config) samples its delta"),
    ("arrow_config", "Arrow (arrow_config) routes between adapters per token"),
)


@dataclass(frozen=True)
class LoraModule:
    """One adapted Linear: where its A and B matrices lie and the scale of its delta."""

    module: str  # "model.layers.0.self_attn.q_proj", as PEFT names the base model's module
    a_key: str
    b_key: str
    rank: int
    scale: float  # lora_alpha / r, or lora_alpha / √r with rslora
    in_features: int
    out_features: int

    @property
    def weight(self) -> str:
        """The base model's tensor the delta is added to."""
        return f"{self.module}.weight"


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter folder, checked: every module's A and B shapes agree with each other and the config."""

    root: Path
    weights: Path  # adapter_model.safetensors or adapter_model.bin
    base_model: str | None  # base_model_name_or_path from the config
    modules: tuple[LoraModule, ...]
    digest: str  # sha256 of the config and the weights file: part of a conversion's identity

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.root / CONFIG_NAME, self.weights)


def _config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_NAME
    if not path.is_file():
        what = "does not exist" if not root.exists() else f"has no {CONFIG_NAME}"
        raise MissingFileError(f"{root} {what}; pass a folder saved by PEFT's save_pretrained as --adapter.")
    try:
        config = json.loads(path.read_bytes()[:_MAX_CONFIG])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path} is not valid JSON; save the adapter again with PEFT.") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a JSON object; save the adapter again with PEFT.")
    return config


def _check_settings(config: dict[str, Any], path: Path) -> None:
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise UnsupportedError(f"{path} describes a {kind} adapter; only LoRA adapters are merged.")
    for name, what in _REFUSED_SETTINGS:
        if config.get(name):
            raise UnsupportedError(f"{path}: {what}, which llama-convert does not merge; merge it with PEFT instead.")
    if config.get("bias", "none") != "none":
        raise UnsupportedError(
            f"{path}: bias={config['bias']!r} trains biases Llama's layers do not have; only bias='none' merges."
        )


def _pattern(patterns: dict[str, Any], module: str) -> str | None:
    """The key of ``patterns`` that matches ``module``, as PEFT's ``get_pattern_key`` finds it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _number(config: dict[str, Any], key: str, path: Path) -> float:
    value = config.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{path}: {key} must be a positive number, not {value!r}; save the adapter again.")
    return float(value)


def _weights(root: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{root} has no {' or '.join(WEIGHT_NAMES)}; save the adapter again with PEFT.")


def _shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    if weights.suffix == ".safetensors":
        return {name: ref.shape for name, ref in SafetensorsFile(weights).tensors.items()}
    with TorchCheckpoint(weights) as ckpt:
        return {name: ref.shape for name, ref in ckpt.tensors.items()}


def _digest(paths: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


_FOREIGN = (  # (what a key holds, how to tell), the most telling first
    ("an embedding adapter", lambda k: "lora_embedding_" in k),
    ("DoRA magnitudes", lambda k: "lora_magnitude_vector" in k),
    ("a bias", lambda k: k.endswith(".bias")),
    ("a whole weight", lambda k: k.endswith(".weight") and "lora_" not in k),
    ("a tensor that is not a LoRA A or B matrix", lambda k: True),
)


def _foreign_rank(key: str) -> int:
    return next(i for i, (_, test) in enumerate(_FOREIGN) if test(key))


def _foreign(weights: Path, key: str) -> UnsupportedError:
    what = _FOREIGN[_foreign_rank(key)][0]
    if what == "a whole weight":
        return UnsupportedError(
            f"{weights} holds {key}, a whole weight that replaces the model's (PEFT's save_embedding_layers); "
            "save the adapter with save_embedding_layers=False or merge it with PEFT."
        )
    return UnsupportedError(f"{weights} holds {key} ({what}); only LoRA A/B matrices of Linear layers merge.")


def read_adapter(root: str | os.PathLike[str]) -> Adapter:
    """Read and check the adapter folder ``root`` (config and headers only; no matrix is read)."""
    root = Path(root)
    config = _config(root)
    path = root / CONFIG_NAME
    _check_settings(config, path)
    weights = _weights(root)
    shapes = _shapes(weights)
    foreign = sorted((k for k in shapes if _KEY.match(k) is None), key=_foreign_rank)
    if foreign:
        raise _foreign(weights, foreign[0])
    pairs: dict[str, dict[str, str]] = {}
    for key in shapes:
        match = _KEY.match(key)
        assert match is not None
        pairs.setdefault(match["module"], {})[match["which"]] = key
    if not pairs:
        raise InputError(f"{weights} holds no LoRA matrices; save the adapter again with PEFT.")
    r, alpha = _number(config, "r", path), _number(config, "lora_alpha", path)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    modules = []
    for module, keys in sorted(pairs.items()):
        if set(keys) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(keys)).pop()
            raise InputError(f"{weights} has no {_PREFIX}{module}.{missing}.weight; save the adapter again.")
        a, b = shapes[keys["lora_A"]], shapes[keys["lora_B"]]
        rank_key, alpha_key = _pattern(rank_pattern, module), _pattern(alpha_pattern, module)
        rank = int(rank_pattern[rank_key]) if rank_key is not None else int(r)
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            raise ShapeMismatchError(
                f"{weights}: {module} has lora_A {list(a)} and lora_B {list(b)}, which do not make a rank-{rank} "
                f"delta as {CONFIG_NAME} says; the files do not belong together."
            )
        module_alpha = float(alpha_pattern[alpha_key]) if alpha_key is not None else alpha
        scale = module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        modules.append(LoraModule(module, keys["lora_A"], keys["lora_B"], rank, scale, a[1], b[0]))
    base = config.get("base_model_name_or_path")
    files = (path, weights)
    return Adapter(root, weights, base if isinstance(base, str) and base else None, tuple(modules), _digest(files))


def read_lora_matrix(weights: str | os.PathLike[str], key: str) -> np.ndarray:
    """One A or B matrix, whole (they are small: r rows or columns), as float32."""
    path = Path(weights)
    if path.suffix == ".safetensors":
        f = SafetensorsFile(path)
        try:
            ref = f.tensors[key]
            data = f.read(key)
        finally:
            f.close()
    else:
        with TorchCheckpoint(path) as ckpt:
            ref = ckpt.tensors[key]  # type: ignore[assignment]
            data = ckpt.read(key)
    if ref.dtype not in (DTYPES["bfloat16"], DTYPES["float16"], DTYPES["float32"]):
        raise UnsupportedError(f"{path}: {key} has dtype {ref.dtype}; only floating-point adapters merge.")
    return cast(data, ref.dtype, DTYPES["float32"]).astype(np.float32, copy=False)
