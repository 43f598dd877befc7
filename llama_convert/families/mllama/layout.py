"""The recipe table: every tensor of ``MllamaForConditionalGeneration`` and how it is made from Meta's shards.

Names and model-parallel axes follow Meta's reference code (``llama_models/llama3/multimodal/model.py``):
``ColumnParallelLinear`` weights and biases are split on dim 0, ``RowParallelLinear`` weights on dim 1
(their biases are replicated), ``VocabParallelEmbedding`` on dim 0, everything else is replicated.
Only the text self-attention q/k get the rotary permutation; gates are copied raw (both sides apply tanh).
"""

from __future__ import annotations

from typing import Final

from ...dtypes import DType
from ...plan import Part, TensorRecipe
from .params import PATCH_SIZE, VisionParams, hf_layer_indices, supported_aspect_ratios

__all__ = ["recipes"]

_T: Final = "text_model."
_V: Final = "vision_model.vision_encoder."

# Meta suffix → (HF suffix, split axis) for the blocks both layer kinds share.
_FFN: Final = {
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_CROSS: Final = {
    "attention.wq.weight": ("cross_attn.q_proj.weight", 0),
    "attention.wk.weight": ("cross_attn.k_proj.weight", 0),
    "attention.wv.weight": ("cross_attn.v_proj.weight", 0),
    "attention.wo.weight": ("cross_attn.o_proj.weight", 1),
    "attention.q_norm.weight": ("cross_attn.q_norm.weight", None),
    "attention.k_norm.weight": ("cross_attn.k_norm.weight", None),
    "gate_attn": ("cross_attn_attn_gate", None),
    "gate_ffwd": ("cross_attn_mlp_gate", None),
}
_VISION_BLOCK: Final = {
    "attn.wq.weight": ("self_attn.q_proj.weight", 0),
    "attn.wk.weight": ("self_attn.k_proj.weight", 0),
    "attn.wv.weight": ("self_attn.v_proj.weight", 0),
    "attn.wo.weight": ("self_attn.o_proj.weight", 1),
    "mlp.c_fc.weight": ("mlp.fc1.weight", 0),
    "mlp.c_fc.bias": ("mlp.fc1.bias", 0),
    "mlp.c_proj.weight": ("mlp.fc2.weight", 1),
    "mlp.c_proj.bias": ("mlp.fc2.bias", None),
    "ln_1.weight": ("input_layernorm.weight", None),
    "ln_1.bias": ("input_layernorm.bias", None),
    "ln_2.weight": ("post_attention_layernorm.weight", None),
    "ln_2.bias": ("post_attention_layernorm.bias", None),
}
_GLOBAL_GATES: Final = {"gate_attn": ("gate_attn", None), "gate_ffn": ("gate_ffn", None)}


def recipes(p: VisionParams, dtype: DType, source_dtype: DType) -> list[TensorRecipe]:
    """Every output tensor, text model first, then the vision model and the projector."""
    return [*_text(p, dtype, source_dtype), *_vision(p, dtype, source_dtype)]


def _r(name: str, source: str, axis: int | None, shape: tuple[int, ...], dtype: DType, src: DType) -> TensorRecipe:
    return TensorRecipe(name, (Part(source, axis),), shape, dtype, src)


def _text(p: VisionParams, dtype: DType, src: DType) -> list[TensorRecipe]:
    lm = "language_model.model."
    hd, kv = p.head_dim, p.n_kv_heads
    ffn_shapes = {
        "feed_forward.w1.weight": (p.intermediate_size, p.dim),
        "feed_forward.w3.weight": (p.intermediate_size, p.dim),
        "feed_forward.w2.weight": (p.dim, p.intermediate_size),
        "attention_norm.weight": (p.dim,),
        "ffn_norm.weight": (p.dim,),
    }
    out = [
        # Meta embeds ids ≥ vocab_size from learnable_embedding (row id - vocab_size); HF appends those rows.
        TensorRecipe(
            lm + "embed_tokens.weight",
            (Part(_T + "tok_embeddings.weight", 0), Part(_T + "learnable_embedding.weight", 0)),
            (p.vocab_size + p.image_rows, p.dim),
            dtype,
            src,
        ),
        _r(lm + "norm.weight", _T + "norm.weight", None, (p.dim,), dtype, src),
        _r("language_model.lm_head.weight", _T + "output.weight", 0, (p.vocab_size, p.dim), dtype, src),
    ]
    self_index, cross_index = hf_layer_indices(p.n_layers, p.n_cross)
    for i, hf in enumerate(self_index):
        meta, name = f"{_T}layers.{i}.", f"{lm}layers.{hf}."
        for suffix, heads, axis in (("wq", p.n_heads, 0), ("wk", kv, 0), ("wv", kv, 0)):
            hf_suffix = f"self_attn.{suffix[1]}_proj.weight"
            rotary = heads if suffix != "wv" else None
            out.append(
                TensorRecipe(
                    name + hf_suffix,
                    (Part(f"{meta}attention.{suffix}.weight", axis),),
                    (heads * hd, p.dim),
                    dtype,
                    src,
                    rotary_heads=rotary,
                    head_dim=hd,
                )
            )
        o_shape = (p.dim, p.n_heads * hd)
        out.append(_r(name + "self_attn.o_proj.weight", meta + "attention.wo.weight", 1, o_shape, dtype, src))
        out += [_r(name + hf_s, meta + s, axis, ffn_shapes[s], dtype, src) for s, (hf_s, axis) in _FFN.items()]
    cross_shapes = {
        "attention.wq.weight": (p.n_heads * hd, p.dim),
        "attention.wk.weight": (kv * hd, p.dim),
        "attention.wv.weight": (kv * hd, p.dim),
        "attention.wo.weight": (p.dim, p.n_heads * hd),
        "attention.q_norm.weight": (hd,),
        "attention.k_norm.weight": (hd,),
        "gate_attn": (1,),
        "gate_ffwd": (1,),
    }
    for j, hf in enumerate(cross_index):
        meta, name = f"{_T}cross_attention_layers.{j}.", f"{lm}layers.{hf}."
        out += [_r(name + hf_s, meta + s, axis, cross_shapes[s], dtype, src) for s, (hf_s, axis) in _CROSS.items()]
        out += [_r(name + hf_s, meta + s, axis, ffn_shapes[s], dtype, src) for s, (hf_s, axis) in _FFN.items()]
    return out


def _per_aspect_ratio(name: str, source: str, p: VisionParams, row: int, dtype: DType, src: DType) -> TensorRecipe:
    """HF's embedding indexed by aspect-ratio id: row id holds the tiles of grid (a, b) = ratios[id - 1]
    in row-major order (Meta's ``embedding[:a, :b]``), zeros after them; id 0 (padding) is all zeros."""
    tiles = p.max_tiles
    grid = (tiles * tiles, row)  # Meta's [tiles, tiles, …] seen as one row per tile
    zero = Part(source, None, view=grid, take=(0, 1), zeros=True)
    parts = [zero] * tiles
    for a, b in supported_aspect_ratios(tiles):
        cells = [r * tiles + c for r in range(a) for c in range(b)]
        parts += [Part(source, None, view=grid, take=(cell, cell + 1)) for cell in cells]
        parts += [zero] * (tiles - len(cells))
    ids = len(supported_aspect_ratios(tiles)) + 1
    return TensorRecipe(name, tuple(parts), (ids, tiles * row), dtype, src)


def _vision(p: VisionParams, dtype: DType, src: DType) -> list[TensorRecipe]:
    w, vm = p.vision_width, "vision_model."
    out = [
        _r(vm + "patch_embedding.weight", _V + "conv1._linear.weight", 0, (w, 3, PATCH_SIZE, PATCH_SIZE), dtype, src),
        _r(vm + "class_embedding", _V + "class_embedding", None, (w,), dtype, src),
        _r(vm + "gated_positional_embedding.embedding", _V + "positional_embedding", None, (p.patches, w), dtype, src),
        _per_aspect_ratio(
            vm + "gated_positional_embedding.tile_embedding.weight",
            _V + "gated_positional_embedding",
            p,
            p.patches * w,
            dtype,
            src,
        ),
        _r(vm + "gated_positional_embedding.gate", _V + "gated_positional_embedding_gate", None, (1,), dtype, src),
    ]
    for stage in ("pre", "post"):
        hf, meta = f"{vm}{stage}_tile_positional_embedding.", f"{_V}{stage}_tile_pos_embed."
        out.append(_per_aspect_ratio(hf + "embedding.weight", meta + "embedding", p, w, dtype, src))
        out.append(_r(hf + "gate", meta + "gate", None, (1,), dtype, src))
    for stage in ("pre", "post"):
        for kind in ("weight", "bias"):
            out.append(_r(f"{vm}layernorm_{stage}.{kind}", f"{_V}ln_{stage}.{kind}", None, (w,), dtype, src))
    block_shapes = {
        "attn.wq.weight": (w, w),
        "attn.wk.weight": (w, w),
        "attn.wv.weight": (w, w),
        "attn.wo.weight": (w, w),
        "mlp.c_fc.weight": (4 * w, w),
        "mlp.c_fc.bias": (4 * w,),
        "mlp.c_proj.weight": (w, 4 * w),
        "mlp.c_proj.bias": (w,),
        "gate_attn": (1,),
        "gate_ffn": (1,),
    }
    for encoder, count, table in (
        ("transformer", p.vision_layers, _VISION_BLOCK),
        ("global_transformer", p.vision_global_layers, {**_GLOBAL_GATES, **_VISION_BLOCK}),
    ):
        for n in range(count):
            meta, hf = f"{_V}{encoder}.resblocks.{n}.", f"{vm}{encoder}.layers.{n}."
            for suffix, (hf_suffix, axis) in table.items():
                shape = block_shapes.get(suffix, (w,))
                out.append(_r(hf + hf_suffix, meta + suffix, axis, shape, dtype, src))
    projector = "vision_model.vision_projection."
    out.append(_r("multi_modal_projector.weight", projector + "weight", 0, (p.dim, p.vision_output_dim), dtype, src))
    out.append(_r("multi_modal_projector.bias", projector + "bias", 0, (p.dim,), dtype, src))
    return out
