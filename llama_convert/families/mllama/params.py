"""Llama 3.2 Vision model arguments: params.json's text and vision keys, plus what only the tensors tell.

Meta's reference code hard-codes part of the vision encoder (not in params.json): 16 heads, patch 14,
intermediate layers 3, 7, 15, 23, 30 and the scaled-rope factor 8. Widths and layer counts are read
from the tensors and checked against each other; the hard-coded facts are used only where the tensors
agree with them, otherwise the conversion is refused rather than guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ...errors import InputError, ShapeMismatchError, UnsupportedError
from ...formats.meta.folder import ffn_width

__all__ = [
    "INTERMEDIATE_LAYERS",
    "VISION_HEADS",
    "VISION_KEYS",
    "VisionParams",
    "cross_attention_schedule",
    "hf_layer_indices",
    "is_vision_params",
    "parse_vision_params",
    "supported_aspect_ratios",
]

# The params.json keys that only Llama 3.2 Vision checkpoints carry.
VISION_KEYS: Final = ("vision_chunk_size", "vision_max_num_chunks", "vision_num_cross_attention_layers")
VISION_HEADS: Final = 16  # CrossAttentionTransformerVision → VisionEncoder(heads=16), not in any file
INTERMEDIATE_LAYERS: Final = (3, 7, 15, 23, 30)  # its return_intermediate="3,7,15,23,30"
PATCH_SIZE: Final = 14
IMAGE_ROWS: Final = 8  # learnable image-token embedding rows: max(model-parallel size, 8)
_PREFIX: Final = "vision_model.vision_encoder."


def is_vision_params(raw: Mapping[str, Any]) -> bool:
    """True when params.json carries Llama 3.2 Vision's keys (flat, or the nested ``vision_model`` form)."""
    return any(key in raw for key in VISION_KEYS) or _nested_cross_layers(raw) is not None


def _nested_cross_layers(raw: Mapping[str, Any]) -> Any:
    """``vision_model.cross_attention_adapter.num_layers``, the form Meta's ModelArgs also accepts."""
    vision = raw.get("vision_model")
    adapter = vision.get("cross_attention_adapter") if isinstance(vision, Mapping) else None
    return adapter.get("num_layers") if isinstance(adapter, Mapping) else None


@dataclass(frozen=True)
class VisionParams:
    """Everything the conversion needs to know about a Llama 3.2 Vision checkpoint's shapes."""

    dim: int
    n_layers: int  # self-attention layers (Meta's ``layers``)
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    multiple_of: int
    ffn_dim_multiplier: float | None
    norm_eps: float
    rope_theta: float
    use_scaled_rope: bool
    n_cross: int  # cross-attention layers
    tile_size: int  # vision_chunk_size (HF image_size)
    max_tiles: int  # vision_max_num_chunks
    vision_width: int
    vision_layers: int  # local encoder layers
    vision_global_layers: int
    vision_output_dim: int  # projector input: (intermediate layers + 1) × width
    image_rows: int  # learnable image-token embedding rows

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def intermediate_size(self) -> int:
        return ffn_width(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def patches(self) -> int:
        """Patch tokens per tile plus the class token."""
        return (self.tile_size // PATCH_SIZE) ** 2 + 1

    @property
    def cross_layers(self) -> tuple[int, ...]:
        """Hugging Face layer indices of the cross-attention layers."""
        return hf_layer_indices(self.n_layers, self.n_cross)[1]


def supported_aspect_ratios(max_tiles: int) -> list[tuple[int, int]]:
    """Tile grids of at most ``max_tiles`` tiles, in the order of Hugging Face's aspect-ratio ids (1, 2, …)."""
    return [(a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1) if a * b <= max_tiles]


def cross_attention_schedule(n_layers: int, n_cross: int) -> list[int]:
    """The self-attention layers that a cross-attention layer precedes, as Meta's ``_init_fusion_schedule``:
    every k-th layer counted from the last, k = ceil(n_layers / n_cross)."""
    k = math.ceil(n_layers / n_cross)
    return list(range(n_layers))[::-1][::k][:n_cross][::-1]


def hf_layer_indices(n_layers: int, n_cross: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Hugging Face's one layer list: (index of self layer i, index of cross layer j).

    Cross layer j runs just before self layer s_j (Meta's forward), so it sits at s_j + j.
    """
    schedule = cross_attention_schedule(n_layers, n_cross)
    cross = tuple(s + j for j, s in enumerate(schedule))
    taken = set(cross)
    selfs = tuple(i for i in range(n_layers + n_cross) if i not in taken)
    return selfs, cross


def _count(names: set[str], prefix: str) -> int:
    """Number of consecutive numbered blocks ``prefix.N.`` present (0 when none)."""
    found = {int(n[len(prefix) :].split(".", 1)[0]) for n in names if n.startswith(prefix)}
    if found and found != set(range(len(found))):
        raise InputError(f"the checkpoint's {prefix}N blocks are not numbered 0…{len(found) - 1}; download it again.")
    return len(found)


def parse_vision_params(
    raw: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], path: Path, *, mp: int = 1
) -> VisionParams:
    """Validate params.json's keys against shard 0's tensor shapes (``shapes``: name → shape) of ``mp`` shards."""

    def need(key: str, kind: type, default: Any = None) -> Any:
        value = raw.get(key, default)
        if value is None:
            raise InputError(f"{path} lacks the key {key!r}; restore Meta's params.json.")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise InputError(f"{path}: {key!r} is {value!r}, expected a {kind.__name__}; restore Meta's params.json.")
        return value

    names = set(shapes)

    def shape_of(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise InputError(
                f"the checkpoint lacks {name}, which every Llama 3.2 Vision checkpoint has; download it again."
            )
        return shapes[name]

    n_heads = need("n_heads", int)
    multiplier = raw.get("ffn_dim_multiplier")
    width = shape_of(_PREFIX + "class_embedding")[0]
    projection = shape_of("vision_model.vision_projection.weight")
    params = VisionParams(
        dim=need("dim", int),
        n_layers=need("n_layers", int),
        n_heads=n_heads,
        n_kv_heads=need("n_kv_heads", int, n_heads),
        vocab_size=need("vocab_size", int),
        multiple_of=need("multiple_of", int, 256),
        ffn_dim_multiplier=None if multiplier is None else float(multiplier),
        norm_eps=need("norm_eps", float, 1e-5),
        rope_theta=need("rope_theta", float, 500000.0),
        use_scaled_rope=need("use_scaled_rope", bool, False),
        n_cross=need("vision_num_cross_attention_layers", int, _nested_cross_layers(raw)),
        tile_size=need("vision_chunk_size", int),
        max_tiles=need("vision_max_num_chunks", int, 4),
        vision_width=width,
        vision_layers=_count(names, _PREFIX + "transformer.resblocks."),
        vision_global_layers=_count(names, _PREFIX + "global_transformer.resblocks."),
        vision_output_dim=projection[1],
        image_rows=shape_of("text_model.learnable_embedding.weight")[0] * mp,
    )
    _check(params, path)
    return params


def _check(p: VisionParams, path: Path) -> None:
    if p.vocab_size <= 0:
        raise InputError(f"{path}: vocab_size is {p.vocab_size}; restore Meta's params.json (128256).")
    if p.n_cross <= 0 or p.n_cross > p.n_layers:
        raise InputError(
            f"{path}: vision_num_cross_attention_layers is {p.n_cross} for {p.n_layers} layers; "
            "restore Meta's params.json."
        )
    if p.dim % p.n_heads or p.n_heads % p.n_kv_heads:
        raise InputError(
            f"{path}: dim {p.dim}, n_heads {p.n_heads}, n_kv_heads {p.n_kv_heads} do not divide evenly; "
            "restore Meta's params.json."
        )
    if p.tile_size % PATCH_SIZE:
        raise UnsupportedError(
            f"{path}: vision_chunk_size {p.tile_size} is not a multiple of the patch size {PATCH_SIZE}; "
            "Llama 3.2 Vision uses 560."
        )
    if p.vision_width % VISION_HEADS:
        raise UnsupportedError(
            f"the vision encoder is {p.vision_width} wide, which {VISION_HEADS} heads (Meta's fixed count) "
            "do not divide; this is not a Llama 3.2 Vision checkpoint."
        )
    expected_output = (len(INTERMEDIATE_LAYERS) + 1) * p.vision_width
    if p.vision_output_dim != expected_output or p.vision_layers <= max(INTERMEDIATE_LAYERS):
        raise UnsupportedError(
            f"vision_projection takes {p.vision_output_dim} features from {p.vision_layers} encoder layers, but Meta's "
            f"code feeds it layers {', '.join(map(str, INTERMEDIATE_LAYERS))} plus the output ({expected_output}); "
            "llama-convert cannot tell which layers this checkpoint uses."
        )
    if p.image_rows != IMAGE_ROWS:
        raise ShapeMismatchError(
            f"text_model.learnable_embedding has {p.image_rows} rows, expected {IMAGE_ROWS}; "
            "download the checkpoint again."
        )
