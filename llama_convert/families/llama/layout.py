"""The Llama text family's tensors: Meta names, model-parallel split axes, and the recipes to Hugging Face."""

from __future__ import annotations

from ...dtypes import DType
from ...formats.meta.folder import MetaParams
from ...plan import Part, TensorRecipe
from .fp8 import dequantized
from .keep_fp8 import keep_fp8_recipes
from .spec import LlamaSpec

__all__ = ["GLOBAL_SPLITS", "LAYER_TENSORS", "SKIPPED_TENSORS", "expected_shard_shapes", "recipes"]

# Per-layer Meta tensor → (HF suffix, model-parallel split dim or None when replicated).
LAYER_TENSORS: dict[str, tuple[str, int | None]] = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
# Whole-model Meta tensor → (HF name, split dim); the embedding's split dim depends on the release.
GLOBAL_SPLITS: dict[str, tuple[str, int | None]] = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", 0),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
SKIPPED_TENSORS = frozenset({"rope.freqs"})  # precomputed rotary table in old checkpoints


def _global_shapes(p: MetaParams, vocab: int) -> dict[str, tuple[int, ...]]:
    return {"tok_embeddings.weight": (vocab, p.dim), "norm.weight": (p.dim,), "output.weight": (vocab, p.dim)}


def _layer_shapes(p: MetaParams, n_kv_heads: int) -> dict[str, tuple[int, ...]]:
    hd, ffn = p.head_dim, p.intermediate_size
    return {
        "attention.wq.weight": (p.n_heads * hd, p.dim),
        "attention.wk.weight": (n_kv_heads * hd, p.dim),
        "attention.wv.weight": (n_kv_heads * hd, p.dim),
        "attention.wo.weight": (p.dim, p.n_heads * hd),
        "feed_forward.w1.weight": (ffn, p.dim),
        "feed_forward.w2.weight": (p.dim, ffn),
        "feed_forward.w3.weight": (ffn, p.dim),
        "attention_norm.weight": (p.dim,),
        "ffn_norm.weight": (p.dim,),
    }


def split_dim(name: str, embed_split: int) -> int | None:
    """The model-parallel split dim of a Meta tensor name (``layers.N.…`` or a global one)."""
    if name == "tok_embeddings.weight":
        return embed_split
    if name in GLOBAL_SPLITS:
        return GLOBAL_SPLITS[name][1]
    return LAYER_TENSORS[name.split(".", 2)[2]][1]


def expected_shard_shapes(
    params: MetaParams, vocab: int, mp: int, embed_split: int, has_output: bool = True
) -> dict[str, tuple[int, ...]]:
    """The shape every Meta tensor has in each of ``mp`` model-parallel shards."""
    full = _global_shapes(params, vocab)
    if not has_output:
        del full["output.weight"]
    layer = _layer_shapes(params, params.n_kv_heads)
    for i in range(params.n_layers):
        full.update({f"layers.{i}.{suffix}": shape for suffix, shape in layer.items()})
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in full.items():
        dim = split_dim(name, embed_split)
        out = list(shape)
        if dim is not None:
            out[dim] //= mp
        shapes[name] = tuple(out)
    return shapes


def recipes(spec: LlamaSpec, dtype: DType) -> list[TensorRecipe]:
    """Every Hugging Face tensor of a Llama text model, from Meta's names and split axes."""
    p, src = spec.params, spec.source_dtype
    embed_split = spec.release.embedding_split_dim
    kv = spec.n_kv_heads
    out_shapes = {**_global_shapes(p, spec.vocab_size), **_layer_shapes(p, kv)}

    def recipe(hf: str, meta: str, shape: tuple[int, ...], **steps: int | None) -> TensorRecipe:
        return TensorRecipe(hf, (Part(meta, split_dim(meta, embed_split)),), shape, dtype, src, **steps)  # type: ignore[arg-type]

    out = [recipe(GLOBAL_SPLITS[m][0], m, out_shapes[m]) for m in ("tok_embeddings.weight", "norm.weight")]
    if not spec.tie_embeddings:
        out.append(recipe("lm_head.weight", "output.weight", out_shapes["output.weight"]))
    for i in range(p.n_layers):
        for suffix, (hf_suffix, _) in LAYER_TENSORS.items():
            steps: dict[str, int | None] = {}
            if suffix in ("attention.wq.weight", "attention.wk.weight"):
                steps.update(rotary_heads=p.n_heads if suffix == "attention.wq.weight" else kv, head_dim=p.head_dim)
            if suffix in ("attention.wk.weight", "attention.wv.weight") and spec.kv_fold > 1:
                steps.update(kv_fold=spec.kv_fold, head_dim=p.head_dim)
            out.append(recipe(f"model.layers.{i}.{hf_suffix}", f"layers.{i}.{suffix}", out_shapes[suffix], **steps))
    if spec.fp8 is None:
        return out
    return keep_fp8_recipes(out, spec.fp8) if spec.fp8.keep else dequantized(out, spec.fp8)
