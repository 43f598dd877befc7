"""Llama 4's side of the way back: config.json → params.json, the Meta layout of an HF folder, and the Meta
layout of a resharded checkpoint. The tensors come from the family's own table (``layout.tensor_table``),
run backwards by ``reverse.invert``: fused ``wqkv`` and ``fc1`` by rows, the 2-D routed-expert tensors
from ``gate_up_proj`` (side by side) and ``down_proj`` (viewed per expert), the router transposed back.

Meta's shards also carry expert-load statistics (``*_gate_stats_3E``) and TransformerEngine
``_extra_state``; no Hugging Face tensor holds them and Meta's model needs neither, so they are not
written (nor kept when resharding)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ...dtypes import DType, dtype_by_name
from ...errors import InputError, MissingFileError, UnsupportedError
from ...formats.meta.folder import MetaFolder, parse_params
from ...plan import MetaLayout, TensorRecipe
from ...tokenizer.tiktoken_ranks import tiktoken_model_from_tokenizer_json
from .hf_config import variant
from .layout import shard_shapes, tensor_table
from .params import SCALED_ROPE_FACTOR, SCALED_ROPE_HIGH_FREQ_FACTOR, parse_llama4_params
from .spec import Llama4Spec

__all__ = ["layout_from_hf", "params_from_config", "reshard_layout"]

_DROPPED_SUFFIXES = ("_gate_stats_3E", "expert_activation_DE", "._extra_state", "rope.freqs")
_OMITTED = "expert-load statistics and TransformerEngine _extra_state are not written (Meta's model needs neither)"
_MULTIPLES = (2048, 4096, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)  # the release's first


def _need(section: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = section.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise InputError(f"{where}: {key!r} is {value!r}, expected a {kind.__name__}; save the model's config again.")
    return value


def _rope(text: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and the llama3-type scaling (transformers 4.x keys, or 5.x ``rope_parameters``)."""
    scaling = text.get("rope_scaling") or text.get("rope_parameters") or None
    theta = text.get("rope_theta", (scaling or {}).get("rope_theta"))
    if not isinstance(theta, (int, float)):
        raise InputError(f"{where} gives no rope_theta; save the model's config again.")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3" or scaling.get("low_freq_factor", 1.0) != 1.0:
        raise UnsupportedError(
            f"{where}: rope scaling {scaling} is not what Meta's Llama 4 code computes (llama3 type)."
        )
    if scaling.get("original_max_position_embeddings", 8192) != 8192:
        raise UnsupportedError(f"{where}: rope scaling with an original context other than 8192 is not Meta's.")
    return float(theta), scaling


def _nope_interval(flags: list[Any], n_layers: int, where: str) -> int | None:
    """transformers' ``no_rope_layers`` (1 = RoPE) as Meta's ``nope_layer_interval``."""
    nope = [i for i, f in enumerate(flags) if not f]
    if not nope:
        return None
    k = nope[0] + 1
    if [i for i in range(n_layers) if (i + 1) % k == 0] != nope:
        raise UnsupportedError(f"{where}: no_rope_layers {flags} is not every k-th layer, which Meta's code requires.")
    return k


def params_from_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """params.json of the model a ``Llama4ForConditionalGeneration`` config.json describes (Meta's keys)."""
    text = config.get("text_config", config)
    n = lambda key, kind=int: _need(text, key, kind, where)  # noqa: E731
    dim, n_layers, heads = n("hidden_size"), n("num_hidden_layers"), n("num_attention_heads")
    kv = text.get("num_key_value_heads") or heads
    if text.get("head_dim") not in (None, dim // heads) or dim % heads:
        raise UnsupportedError(f"{where}: head_dim {text.get('head_dim')} is not hidden_size / heads, as Meta's is.")
    if text.get("attention_bias"):
        raise UnsupportedError(f"{where}: attention biases have no place in Meta's Llama 4 format.")
    theta, scaling = _rope(text, where)
    step = n("interleave_moe_layer_step")
    moe = [i for i in range(n_layers) if (i + 1) % step == 0]
    if list(text.get("moe_layers") or moe) != moe:
        raise UnsupportedError(f"{where}: moe_layers {text.get('moe_layers')} is not every {step}-th layer (Meta's).")
    flags = text.get("no_rope_layers") or [1] * n_layers
    params: dict[str, Any] = {
        "dim": dim,
        "n_layers": n_layers,
        "n_heads": heads,
        "n_kv_heads": kv,
        "vocab_size": n("vocab_size"),
        "multiple_of": 0,
        "ffn_dim_multiplier": 1.2,
        "ffn_exp": 4.0,
        "norm_eps": float(text.get("rms_norm_eps", 1e-5)),
        "rope_theta": theta,
        "use_scaled_rope": scaling is not None,
        "nope_layer_interval": _nope_interval(flags, n_layers, where),
        "use_qk_norm": bool(text.get("use_qk_norm", False)),
        "attention_chunk_size": text.get("attention_chunk_size"),
        "attn_temperature_tuning": bool(text.get("attn_temperature_tuning", False)),
        "floor_scale": text.get("floor_scale", 8192),
        "attn_scale": float(text.get("attn_scale", 0.1)),
        "moe_args": {
            "num_experts": n("num_local_experts"),
            "capacity_factor": 1.0,
            "auto_scale_F": True,
            "top_k": int(text.get("num_experts_per_tok", 1)),
            "interleave_moe_layer_step": step,
        },
    }
    if scaling is not None:
        factor, high = float(scaling.get("factor", 0)), float(scaling.get("high_freq_factor", 0))
        if (factor, high) != (SCALED_ROPE_FACTOR, SCALED_ROPE_HIGH_FREQ_FACTOR):
            params.update(rope_scaling_factor=factor, rope_high_freq_factor=high)  # Meta's args take both
    vision = config.get("vision_config") if "text_config" in config else None
    if vision:
        v = lambda key, kind=int: _need(vision, key, kind, where)  # noqa: E731
        width = v("hidden_size")
        params["vision_args"] = {
            "image_size": {"height": v("image_size"), "width": v("image_size")},
            "patch_size": {"height": v("patch_size"), "width": v("patch_size")},
            "dim": width,
            "n_layers": v("num_hidden_layers"),
            "n_heads": v("num_attention_heads"),
            "mlp_ratio": v("intermediate_size") / width,
            "output_dim": v("vision_output_dim"),
            "pixel_shuffle_ratio": v("pixel_shuffle_ratio", float),
        }
    _choose_multiple_of(params, n("intermediate_size"), text.get("intermediate_size_mlp"), where)
    if params["nope_layer_interval"] is None:
        del params["nope_layer_interval"]
    return params


def _choose_multiple_of(params: dict[str, Any], moe_width: int, dense_width: Any, where: str) -> None:
    """The largest ``multiple_of`` (the release's 2048 first) for which Meta's formulas give both widths."""
    dense_layers = params["moe_args"]["interleave_moe_layer_step"] > 1
    check_dense = dense_layers or isinstance(dense_width, int)  # Scout's config states the width too
    for multiple_of in _MULTIPLES:
        params["multiple_of"] = multiple_of
        p = parse_llama4_params(params, Path(where))
        if p.moe_hidden_dim == moe_width and (not check_dense or p.dense_hidden_dim == dense_width):
            return
    raise UnsupportedError(
        f"{where}: no multiple_of reproduces intermediate_size {moe_width} / intermediate_size_mlp {dense_width} "
        "through Meta's Llama 4 formulas (ffn_exp 4, ffn_dim_multiplier 1.2); Meta's format cannot express this model."
    )


def _spec(params: dict[str, Any], *, mp: int, dtype: DType, root: Path, where: str) -> Llama4Spec:
    p = parse_llama4_params(params, Path(where))
    if p.n_kv_heads % mp or p.n_heads % mp:
        raise UnsupportedError(
            f"{where}: {mp} model-parallel shards do not divide {p.n_heads} heads / {p.n_kv_heads} KV heads evenly "
            "(Meta's Llama 4 code needs whole heads per shard); choose another --mp."
        )
    folder = MetaFolder(
        root, root / "params.json", params, parse_params(params, root / "params.json"),
        tuple(root / f"consolidated.{r:02d}.pth" for r in range(mp)), None,
    )  # fmt: skip
    kind = variant(p)
    return Llama4Spec(
        family="llama4",
        name=f"Llama 4 {kind}",
        folder=folder,
        mp=mp,
        source_dtype=dtype,
        instruct=False,
        evidence=(),
        summary=f"{p.n_layers} layers, dim {p.dim}, {p.moe.num_experts} experts",
        parameter_count=0,
        notes=(),
        params=p,
        vocab_size=p.vocab_size or 0,
        variant=kind,
        size="",
        instruct_reason="config.json",
    )


def _recipes(spec: Llama4Spec, dtype: DType) -> tuple[list[TensorRecipe], dict[str, tuple[int, ...]]]:
    table = tensor_table(spec.params, spec.mp, spec.vocab_size)
    return [t.recipe(dtype, dtype) for t in table], shard_shapes(table)


def meta_order(spec: Llama4Spec):
    """Meta's shard order: the order of the model's own state dict (embedding, layers, norm, output, vision)."""
    names = ["tok_embeddings.weight"]
    for t in tensor_table(spec.params, spec.mp, spec.vocab_size):
        for part in t.parts:
            if part.source not in names:
                names.append(part.source)
    index = {name: i for i, name in enumerate(names)}
    return lambda name: index.get(name, len(index))


def _tokenizer_model(root: Path, tokenizer: bool, params: dict[str, Any]) -> tuple[dict[str, bytes], str | None]:
    if not tokenizer:
        return {}, None
    for path in (root / "tokenizer.model", root / "original" / "tokenizer.model"):
        if path.is_file():
            return {"tokenizer.model": path.read_bytes()}, f"tokenizer.model copied from {path.relative_to(root)}"
    if (root / "tokenizer.json").is_file():
        data = tiktoken_model_from_tokenizer_json(root / "tokenizer.json", vocab_size=params["vocab_size"])
        return {"tokenizer.model": data}, "tokenizer.model rebuilt from tokenizer.json (tiktoken ranks = token ids)"
    raise MissingFileError(
        f"{root} has no tokenizer.model or tokenizer.json; copy Meta's Llama 4 tokenizer.model into it "
        "(or pass --no-tokenizer)."
    )


def layout_from_hf(
    config: dict[str, Any], root: Path, hf_names: set[str], *, mp: int, dtype: DType | None, dst: Path, tokenizer: bool
) -> MetaLayout:
    """The Meta checkpoint a Hugging Face Llama 4 folder becomes."""
    where = str(root / "config.json")
    params = params_from_config(config, where)
    dtype = dtype or dtype_by_name("bfloat16")
    spec = _spec(params, mp=mp, dtype=dtype, root=dst, where=where)
    if spec.params.vision is None and any(n.startswith("language_model.") for n in hf_names):
        raise InputError(f"{where} describes no vision model but the weights are a multimodal model's.")
    recipes, shapes = _recipes(spec, dtype)
    small, note = _tokenizer_model(root, tokenizer, params)
    small["params.json"] = json.dumps(params).encode()
    notes = [n for n in (note, _OMITTED) if n]
    if "rope_scaling_factor" in params:
        notes.append(
            f"rope scaling factor {params['rope_scaling_factor']} / high-frequency factor "
            f"{params['rope_high_freq_factor']} written to params.json (Meta's code defaults to 16 / 1)"
        )
    return MetaLayout(
        spec=spec, dtype=dtype, recipes=recipes, small_files=small, ignored_suffixes=_DROPPED_SUFFIXES,
        order=meta_order(spec), notes=tuple(notes), shard_shapes=shapes,
    )  # fmt: skip


def reshard_layout(spec: Llama4Spec, mp: int) -> tuple[list[TensorRecipe], MetaLayout]:
    """Recipes that read ``spec``'s shards and the layout of the same model at ``mp`` shards."""
    where = str(spec.folder.params_path)
    params = dict(spec.folder.raw_params)
    target = _spec(params, mp=mp, dtype=spec.source_dtype, root=spec.folder.root, where=where)
    target = dataclasses.replace(target, vocab_size=spec.vocab_size, name=spec.name, instruct=spec.instruct)
    if spec.vocab_size % mp:
        raise UnsupportedError(
            f"{where}: {mp} shards do not divide the vocabulary of {spec.vocab_size}; choose another --mp."
        )
    source, _ = _recipes(spec, spec.source_dtype)
    recipes, shapes = _recipes(target, spec.source_dtype)
    assert spec.folder.tokenizer is not None
    small = {"params.json": spec.folder.params_path.read_bytes(), "tokenizer.model": spec.folder.tokenizer.read_bytes()}
    layout = MetaLayout(
        spec=target, dtype=spec.source_dtype, recipes=recipes, small_files=small, ignored_suffixes=_DROPPED_SUFFIXES,
        notes=(_OMITTED,), shard_shapes=shapes,
    )  # fmt: skip
    return source, layout
