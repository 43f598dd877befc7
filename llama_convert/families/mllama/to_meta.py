"""Llama 3.2 Vision's side of the way back: config.json → params.json, the Meta layout of an HF folder, and
the Meta layout of a resharded checkpoint. The tensors come from the family's own recipes (``layout``),
run backwards by ``reverse.invert``: interleaved cross-attention layers back to ``cross_attention_layers.J``,
the embedding's 8 image rows back to ``learnable_embedding``, the per-aspect-ratio tile embeddings back to
Meta's ``[tiles, tiles, …]`` tables (each cell from its first aspect ratio, the others checked equal, the
padding checked zero; cells no supported aspect ratio uses, which Meta's code never reads, are zeros).

transformers 4.47.1's converter writes only the config keys that differ from the config classes'
defaults; ``_TEXT_DEFAULTS`` / ``_VISION_DEFAULTS`` are those defaults (the same in transformers 5.x).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Final

from ...dtypes import DType, dtype_by_name
from ...errors import MissingFileError, UnsupportedError
from ...formats.meta.folder import MetaFolder, ffn_width, parse_params
from ...plan import MetaLayout, Part, TensorRecipe
from ...tokenizer.tiktoken_ranks import tiktoken_model_from_tokenizer_json
from .detect import MllamaSpec
from .layout import recipes
from .params import (
    IMAGE_ROWS,
    INTERMEDIATE_LAYERS,
    PATCH_SIZE,
    VISION_HEADS,
    VisionParams,
    hf_layer_indices,
    supported_aspect_ratios,
)

__all__ = ["layout_from_hf", "params_from_config", "reshard_layout"]

_TEXT_DEFAULTS: Final[dict[str, Any]] = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "rope_theta": 500000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-5,
    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
}
_VISION_DEFAULTS: Final[dict[str, Any]] = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_global_layers": 8,
    "attention_heads": 16,
    "intermediate_size": 5120,
    "vision_output_dim": 7680,
    "image_size": 448,
    "patch_size": 14,
    "max_num_tiles": 4,
    "intermediate_layers_indices": list(INTERMEDIATE_LAYERS),
}
_RELEASE_MULTIPLE_OF: Final = {4096: 1024, 8192: 4096}  # 11B, 90B (both with ffn_dim_multiplier 1.3)
_T, _V = "text_model.", "vision_model.vision_encoder."
_TILE_TABLES: Final = ("gated_positional_embedding", "pre_tile_pos_embed.embedding", "post_tile_pos_embed.embedding")


def _rope(text: dict[str, Any], where: str) -> tuple[float, bool]:
    scaling = text.get("rope_scaling") or text.get("rope_parameters") or None
    theta = text.get("rope_theta", (scaling or {}).get("rope_theta", _TEXT_DEFAULTS["rope_theta"]))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in (None, "default"):
        return float(theta), False
    expected = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    if kind != "llama3" or any(float(scaling.get(k, -1)) != v for k, v in expected.items()):
        raise UnsupportedError(
            f"{where}: rope scaling {scaling} is not the one Meta's Llama 3.2 Vision code hard-codes (llama3, 8)."
        )
    return float(theta), True


def _ffn(dim: int, width: int, where: str) -> tuple[int, float]:
    """multiple_of with the releases' multiplier 1.3: the release's own first, then the largest power of two."""
    candidates = [_RELEASE_MULTIPLE_OF.get(dim, 4096), *(2**k for k in range(12, -1, -1))]
    for multiple_of in candidates:
        if ffn_width(dim, multiple_of, 1.3) == width:
            return multiple_of, 1.3
    raise UnsupportedError(
        f"{where}: no multiple_of reproduces intermediate_size {width} with ffn_dim_multiplier 1.3 (Meta's); "
        "Meta's format cannot express this model."
    )


def params_from_config(config: dict[str, Any], where: str) -> tuple[dict[str, Any], VisionParams]:
    """params.json (flat, Meta's keys) and the shapes of the model an Mllama config.json describes."""
    text = {**_TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vision = {**_VISION_DEFAULTS, **(config.get("vision_config") or {})}
    cross = list(text["cross_attention_layers"])
    n_cross, n_layers = len(cross), int(text["num_hidden_layers"]) - len(cross)
    if not cross or n_layers <= 0 or list(hf_layer_indices(n_layers, n_cross)[1]) != cross:
        raise UnsupportedError(
            f"{where}: cross_attention_layers {cross} is not the schedule Meta's code uses for {n_layers} layers."
        )
    dim, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
    kv = int(text.get("num_key_value_heads") or heads)
    theta, scaled = _rope(text, where)
    multiple_of, mult = _ffn(dim, int(text["intermediate_size"]), where)
    tiles, width = int(vision["max_num_tiles"]), int(vision["hidden_size"])
    ratios = vision.get("supported_aspect_ratios") or [list(r) for r in supported_aspect_ratios(tiles)]
    fixed = {
        "attention_heads": (vision["attention_heads"], VISION_HEADS),
        "patch_size": (vision["patch_size"], PATCH_SIZE),
        "intermediate_layers_indices": (list(vision["intermediate_layers_indices"]), list(INTERMEDIATE_LAYERS)),
        "intermediate_size": (vision["intermediate_size"], 4 * width),
        "supported_aspect_ratios": ([list(r) for r in ratios], [list(r) for r in supported_aspect_ratios(tiles)]),
        "vision_output_dim": (vision["vision_output_dim"], (len(INTERMEDIATE_LAYERS) + 1) * width),
    }
    for key, (found, meta) in fixed.items():
        if found != meta:
            raise UnsupportedError(
                f"{where}: vision_config {key} is {found}, but Meta's Llama 3.2 Vision code hard-codes {meta}; "
                "Meta's format cannot express this model."
            )
    params = {
        "dim": dim,
        "ffn_dim_multiplier": mult,
        "multiple_of": multiple_of,
        "n_heads": heads,
        "n_kv_heads": kv,
        "n_layers": n_layers,
        "norm_eps": float(text["rms_norm_eps"]),
        "rope_theta": theta,
        "use_scaled_rope": scaled,
        "vision_chunk_size": int(vision["image_size"]),
        "vision_max_num_chunks": tiles,
        "vision_num_cross_attention_layers": n_cross,
        "vocab_size": int(text["vocab_size"]),
    }
    p = VisionParams(
        dim=dim, n_layers=n_layers, n_heads=heads, n_kv_heads=kv, vocab_size=params["vocab_size"],
        multiple_of=multiple_of, ffn_dim_multiplier=mult, norm_eps=params["norm_eps"], rope_theta=theta,
        use_scaled_rope=scaled, n_cross=n_cross, tile_size=params["vision_chunk_size"], max_tiles=tiles,
        vision_width=width, vision_layers=int(vision["num_hidden_layers"]),
        vision_global_layers=int(vision["num_global_layers"]), vision_output_dim=int(vision["vision_output_dim"]),
        image_rows=IMAGE_ROWS,
    )  # fmt: skip
    return params, p


def _check_mp(p: VisionParams, mp: int, where: str) -> None:
    counts = {
        "heads": p.n_heads, "KV heads": p.n_kv_heads, "vision heads": VISION_HEADS, "image-token rows": p.image_rows,
    }  # fmt: skip
    bad = [f"{n} {what}" for what, n in counts.items() if n % mp]
    if bad:
        raise UnsupportedError(
            f"{where}: {mp} model-parallel shards do not divide the {bad[0]} evenly (Meta's code gives every shard "
            "an equal part); choose another --mp."
        )


def shard_shapes(p: VisionParams, mp: int) -> dict[str, tuple[int, ...]]:
    """Stored shapes, per shard, of the tensors the recipes read as one of several parts or through a view."""
    t, w = p.max_tiles, p.vision_width
    return {
        _T + "tok_embeddings.weight": (p.vocab_size // mp, p.dim),
        _T + "learnable_embedding.weight": (p.image_rows // mp, p.dim),
        _V + "conv1._linear.weight": (w // mp, 3 * PATCH_SIZE * PATCH_SIZE),
        _V + "gated_positional_embedding": (t, t, p.patches, w),
        _V + "pre_tile_pos_embed.embedding": (t, t, 1, w),
        _V + "post_tile_pos_embed.embedding": (t, t, 1, w),
    }


def _spec(params: dict[str, Any], p: VisionParams, *, mp: int, dtype: DType, root: Path, name: str) -> MllamaSpec:
    folder = MetaFolder(
        root, root / "params.json", params, parse_params(params, root / "params.json"),
        tuple(root / f"consolidated.{r:02d}.pth" for r in range(mp)), None,
    )  # fmt: skip
    return MllamaSpec(
        family="mllama", name=name, folder=folder, mp=mp, source_dtype=dtype, instruct=False, evidence=(),
        summary=f"{p.n_layers} + {p.n_cross} cross-attention layers, dim {p.dim}", parameter_count=0, notes=(),
        params=p, variant="base", size="",
    )  # fmt: skip


def _tokenizer_model(root: Path, vocab: int) -> tuple[bytes, str]:
    for path in (root / "tokenizer.model", root / "original" / "tokenizer.model"):
        if path.is_file():
            return path.read_bytes(), f"tokenizer.model copied from {path.relative_to(root)}"
    if (root / "tokenizer.json").is_file():  # HF appends <|image|> after Meta's 256 special tokens
        data = tiktoken_model_from_tokenizer_json(root / "tokenizer.json", vocab_size=vocab + 1)
        return data, "tokenizer.model rebuilt from tokenizer.json (tiktoken ranks = token ids)"
    raise MissingFileError(
        f"{root} has no tokenizer.model or tokenizer.json; copy Meta's Llama 3 tokenizer.model there "
        "(or pass --no-tokenizer)."
    )


def _order(out: list[TensorRecipe]):
    names: dict[str, int] = {}
    for r in out:
        for part in r.parts:
            names.setdefault(part.source, len(names))
    return lambda name: names.get(name, len(names))


def layout_from_hf(
    config: dict[str, Any], root: Path, hf_names: set[str], *, mp: int, dtype: DType | None, dst: Path, tokenizer: bool
) -> MetaLayout:
    """The Meta checkpoint a Hugging Face Llama 3.2 Vision folder becomes."""
    where = str(root / "config.json")
    params, p = params_from_config(config, where)
    _check_mp(p, mp, where)
    dtype = dtype or dtype_by_name("bfloat16")
    spec = _spec(params, p, mp=mp, dtype=dtype, root=dst, name="Llama 3.2 Vision")
    out = recipes(p, dtype, dtype)
    small: dict[str, bytes] = {}
    notes: list[str] = []
    if tokenizer:
        small["tokenizer.model"], note = _tokenizer_model(root, p.vocab_size)
        notes.append(note)
    small["params.json"] = json.dumps(params).encode()
    return MetaLayout(
        spec=spec, dtype=dtype, recipes=out, small_files=small, order=_order(out), notes=tuple(notes),
        shard_shapes=shard_shapes(p, mp),
    )  # fmt: skip


def _verbatim_tables(out: list[TensorRecipe], p: VisionParams, dtype: DType) -> list[TensorRecipe]:
    """Resharding copies the replicated per-tile tables whole (every cell, used by Meta's code or not)."""
    shapes = shard_shapes(p, 1)
    kept = [r for r in out if not any(r.parts[0].source == _V + t for t in _TILE_TABLES)]
    whole = [TensorRecipe(f"meta:{_V}{t}", (Part(_V + t, None),), shapes[_V + t], dtype, dtype) for t in _TILE_TABLES]
    return kept + whole


def reshard_layout(spec: MllamaSpec, mp: int) -> tuple[list[TensorRecipe], MetaLayout]:
    """Recipes that read ``spec``'s shards and the layout of the same model at ``mp`` shards."""
    p, dtype = spec.params, spec.source_dtype
    _check_mp(p, mp, str(spec.folder.root))
    if p.vocab_size % mp:
        raise UnsupportedError(f"{spec.folder.root}: {mp} shards do not divide the vocabulary {p.vocab_size}.")
    source = _verbatim_tables(recipes(p, dtype, dtype), p, dtype)
    target = dataclasses.replace(spec, mp=mp)
    assert spec.folder.tokenizer is not None
    small = {"params.json": spec.folder.params_path.read_bytes(), "tokenizer.model": spec.folder.tokenizer.read_bytes()}
    layout = MetaLayout(
        spec=target, dtype=dtype, recipes=_verbatim_tables(recipes(p, dtype, dtype), p, dtype), small_files=small,
        shard_shapes=shard_shapes(p, mp),
    )  # fmt: skip
    return source, layout
