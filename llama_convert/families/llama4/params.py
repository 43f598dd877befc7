"""Llama 4 ``params.json``: the model arguments of Meta's ``llama_models.llama4.args.ModelArgs``.

Parsed into frozen dataclasses with Meta's defaults; everything that decides a tensor shape or a
config value is checked here, before a byte of the shards is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError, UnsupportedError

__all__ = [
    "Llama4Params",
    "MoEArgs",
    "VisionArgs",
    "is_dense_llama4_params",
    "is_llama4_params",
    "parse_llama4_params",
]

# Meta's args.py: "Only Llama-4-Scout uses scaled rope and needs these specific values."
SCALED_ROPE_FACTOR = 16.0
SCALED_ROPE_HIGH_FREQ_FACTOR = 1.0
# apply_scaling in Meta's model.py hard-codes these two.
SCALED_ROPE_LOW_FREQ_FACTOR = 1.0
SCALED_ROPE_ORIGINAL_CONTEXT = 8192


@dataclass(frozen=True)
class MoEArgs:
    num_experts: int
    top_k: int
    interleave_moe_layer_step: int
    capacity_factor: float
    auto_scale_F: bool  # Meta's key name


@dataclass(frozen=True)
class VisionArgs:
    image_size: int
    patch_size: int
    dim: int
    n_layers: int
    n_heads: int
    mlp_ratio: float
    output_dim: int
    pixel_shuffle_ratio: float

    @property
    def mlp_dim(self) -> int:
        """Width of the encoder blocks' MLP (Meta: ``int(mlp_ratio * dim)``)."""
        return int(self.mlp_ratio * self.dim)

    @property
    def adapter_in_dim(self) -> int:
        """Input width of the pixel-shuffle adapter (Meta: ``int(dim // ps_ratio**2)``)."""
        return int(self.dim // (self.pixel_shuffle_ratio**2))

    @property
    def n_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class Llama4Params:
    """Llama 4 model arguments with Meta's defaults applied."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int | None
    multiple_of: int
    ffn_dim_multiplier: float
    ffn_exp: float
    norm_eps: float
    rope_theta: float
    use_scaled_rope: bool
    rope_scaling_factor: float | None
    rope_high_freq_factor: float | None
    nope_layer_interval: int | None
    use_qk_norm: bool
    attention_chunk_size: int | None
    attn_temperature_tuning: bool
    floor_scale: float
    attn_scale: float
    moe: MoEArgs | None  # None: a dense Llama 4 (Llama Guard 4: no moe_args, every layer a dense FFN)
    vision: VisionArgs | None
    quantization: dict[str, Any] | None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and (layer + 1) % self.moe.interleave_moe_layer_step == 0

    def is_nope_layer(self, layer: int) -> bool:
        return self.nope_layer_interval is not None and (layer + 1) % self.nope_layer_interval == 0

    @property
    def moe_hidden_dim(self) -> int:
        """Routed/shared expert width F, exactly as Meta's ``MoE.__init__`` computes it."""
        assert self.moe is not None, "a dense Llama 4 has no experts"
        hidden = int(2 * int(self.ffn_exp * self.dim) / 3)
        hidden = int(self.ffn_dim_multiplier * hidden)
        if self.moe.auto_scale_F:
            hidden = int(hidden / (self.moe.capacity_factor + 1))
        return hidden + (-hidden % self.multiple_of)

    @property
    def dense_hidden_dim(self) -> int:
        """Dense-layer SwiGLU width, exactly as Meta's ``TransformerBlock.__init__`` computes it."""
        hidden = int(2 * int(4 * self.dim) / 3)
        hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


def is_llama4_params(raw: Any) -> bool:
    """Whether a params.json describes a Llama 4 model (mixture-of-experts arguments present)."""
    raw = _unwrap(raw)
    return isinstance(raw, dict) and isinstance(raw.get("moe_args"), dict)


def is_dense_llama4_params(raw: Any) -> bool:
    """A Llama 4 params.json without experts (Llama Guard 4): Llama 4's own ``ffn_exp``, no ``moe_args``."""
    raw = _unwrap(raw)
    return isinstance(raw, dict) and raw.get("moe_args") is None and "ffn_exp" in raw


def _unwrap(raw: Any) -> Any:
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and "dim" not in raw:
        return raw["model"]
    return raw


class _Reader:
    """Typed access to one JSON object of params.json with one-sentence errors."""

    def __init__(self, raw: dict[str, Any], path: Path, where: str = "") -> None:
        self.raw, self.path, self.where = raw, path, where

    def get(self, key: str, kind: type, default: Any = ..., *, positive: bool = False) -> Any:
        name = f"{self.where}{key}"
        if key not in self.raw or self.raw[key] is None:
            if default is ...:
                raise InputError(f"{self.path} lacks the key {name!r}; restore Meta's params.json.")
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise InputError(
                f"{self.path}: {name!r} is {value!r}, expected a {kind.__name__}; restore Meta's params.json."
            )
        if kind is float and not math.isfinite(value):
            raise InputError(
                f"{self.path}: {name!r} is {value!r}, expected a finite number; restore Meta's params.json."
            )
        if positive and value <= 0:
            raise InputError(
                f"{self.path}: {name!r} is {value!r}, expected a positive number; restore Meta's params.json."
            )
        return value

    def side(self, key: str) -> int:
        """A ``{height, width}`` size that must be square (HF's Llama 4 vision model is)."""
        value = self.get(key, dict)
        sub = _Reader(value, self.path, f"{self.where}{key}.")
        height, width = sub.get("height", int, positive=True), sub.get("width", int, positive=True)
        if height != width:
            raise UnsupportedError(
                f"{self.path}: vision {key} is {height}x{width}; Hugging Face's Llama 4 vision model takes square "
                "sizes only."
            )
        return height


def parse_llama4_params(raw: Any, path: Path) -> Llama4Params:
    """Validate Llama 4 ``params.json`` content (also nested under ``"model"``)."""
    raw = _unwrap(raw)
    if not isinstance(raw, dict):
        raise InputError(f"{path} does not hold a JSON object of model arguments; restore Meta's params.json.")
    r = _Reader(raw, path)
    dim, n_heads = r.get("dim", int, positive=True), r.get("n_heads", int, positive=True)
    n_kv_heads = r.get("n_kv_heads", int, n_heads, positive=True)
    if dim % n_heads or n_heads % n_kv_heads:
        raise InputError(
            f"{path}: dim {dim}, n_heads {n_heads} and n_kv_heads {n_kv_heads} do not divide evenly; "
            "restore Meta's params.json."
        )
    head_dim = r.get("head_dim", int, None)
    if head_dim is not None and head_dim != dim // n_heads:
        raise UnsupportedError(
            f"{path}: head_dim {head_dim} differs from dim / n_heads = {dim // n_heads}, which Meta's Llama 4 "
            "attention uses; this version cannot convert such a model."
        )
    quantization = r.get("quantization_args", dict, None)
    if quantization and quantization.get("scheme"):
        raise UnsupportedError(
            f"{path} describes a quantized Llama 4 ({quantization['scheme']}); this version converts the "
            "bfloat16 release only: download the bf16 checkpoint."
        )
    if r.get("lora_args", dict, None):
        raise UnsupportedError(f"{path} carries LoRA adapter arguments; convert the base bf16 checkpoint instead.")
    moe = _moe(r.get("moe_args", dict, None), path)
    if moe is not None and moe.top_k > moe.num_experts:
        raise InputError(f"{path}: moe_args.top_k {moe.top_k} exceeds num_experts {moe.num_experts}.")
    use_scaled_rope = r.get("use_scaled_rope", bool, False)
    factor = r.get("rope_scaling_factor", float, None)
    high = r.get("rope_high_freq_factor", float, None)
    if use_scaled_rope:  # Meta's ModelArgs.validate fills these in
        factor = SCALED_ROPE_FACTOR if factor is None else factor
        high = SCALED_ROPE_HIGH_FREQ_FACTOR if high is None else high
    return Llama4Params(
        dim=dim,
        n_layers=r.get("n_layers", int, positive=True),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=(lambda v: v if v and v > 0 else None)(r.get("vocab_size", int, None)),
        multiple_of=r.get("multiple_of", int, 256, positive=True),
        ffn_dim_multiplier=r.get("ffn_dim_multiplier", float),
        ffn_exp=r.get("ffn_exp", float),
        norm_eps=r.get("norm_eps", float, 1e-5, positive=True),
        rope_theta=r.get("rope_theta", float, 500000.0, positive=True),
        use_scaled_rope=use_scaled_rope,
        rope_scaling_factor=factor,
        rope_high_freq_factor=high,
        nope_layer_interval=r.get("nope_layer_interval", int, None, positive=True),
        use_qk_norm=r.get("use_qk_norm", bool, False),
        attention_chunk_size=r.get("attention_chunk_size", int, None, positive=True),
        attn_temperature_tuning=r.get("attn_temperature_tuning", bool, False),
        floor_scale=r.get("floor_scale", float, 8192.0, positive=True),
        attn_scale=r.get("attn_scale", float, 0.1),
        moe=moe,
        vision=_vision(r.get("vision_args", dict, None), path),
        quantization=quantization,
    )


def _moe(raw: dict[str, Any] | None, path: Path) -> MoEArgs | None:
    """The experts' arguments; None without ``moe_args`` (a dense Llama 4, as Meta's TransformerBlock builds)."""
    if raw is None:
        return None
    m = _Reader(raw, path, "moe_args.")
    return MoEArgs(
        num_experts=m.get("num_experts", int, positive=True),
        top_k=m.get("top_k", int, 1, positive=True),
        interleave_moe_layer_step=m.get("interleave_moe_layer_step", int, 1, positive=True),
        capacity_factor=m.get("capacity_factor", float, 1.0, positive=True),
        auto_scale_F=m.get("auto_scale_F", bool, True),
    )


def _vision(raw: dict[str, Any] | None, path: Path) -> VisionArgs | None:
    if raw is None:
        return None
    v = _Reader(raw, path, "vision_args.")
    args = VisionArgs(
        image_size=v.side("image_size"),
        patch_size=v.side("patch_size"),
        dim=v.get("dim", int, positive=True),
        n_layers=v.get("n_layers", int, positive=True),
        n_heads=v.get("n_heads", int, positive=True),
        mlp_ratio=v.get("mlp_ratio", float, positive=True),
        output_dim=v.get("output_dim", int, positive=True),
        pixel_shuffle_ratio=v.get("pixel_shuffle_ratio", float, positive=True),
    )
    if args.dim % args.n_heads or args.image_size % args.patch_size:
        raise InputError(
            f"{path}: vision_args dim {args.dim} / n_heads {args.n_heads} or image_size {args.image_size} / "
            f"patch_size {args.patch_size} do not divide evenly; restore Meta's params.json."
        )
    if args.mlp_dim != args.adapter_in_dim:
        # HF's Llama4VisionConfig has one intermediate_size for both widths (5632 in the releases).
        raise UnsupportedError(
            f"{path}: vision MLP width {args.mlp_dim} differs from the pixel-shuffle adapter's input width "
            f"{args.adapter_in_dim}; Hugging Face's Llama 4 vision config cannot express that."
        )
    return args
