"""Llama 4 tensor table: Meta's shipped tensors ↔ Hugging Face ``Llama4ForConditionalGeneration``.

Data only. Each output tensor names the shipped tensors it is made of (``plan.Part``): the axis along
which the model-parallel shards are concatenated (the axis of the fairscale module that owns the
tensor, as Meta's resharder ``llama_models.checkpoint`` splits it), an optional view of each shard's
bytes and an optional row range of each shard (fused ``wqkv`` and ``fc1``), plus the shape every shard
must store. Llama 4's text attention keeps Meta's interleaved complex rotary layout in Hugging Face
too, so no rotary permutation appears anywhere.

Routed experts are stored 2-D: ``moe_w_in_eD_F`` / ``moe_w_swiglu_eD_F`` as ``[E·D, F/mp]`` and
``moe_w_out_eF_D`` as ``[E·F/mp, D]``. HF's ``gate_up_proj [E, D, 2F]`` has the bytes of the two
``[E·D, F]`` merges side by side, so it is assembled in rows of one (expert, d) pair; ``down_proj
[E, F, D]`` interleaves the shards inside each expert, so it is assembled one expert at a time.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ...dtypes import DType
from ...plan import Part, TensorRecipe
from .params import Llama4Params

__all__ = ["DROPPED", "Target", "shard_shapes", "tensor_table"]


@dataclass(frozen=True)
class Target:
    """One Hugging Face tensor: its parts, concatenated along ``cat_axis``, read as ``shape``; ``stored``
    gives each part's tensor shape in every shard (what the checkpoint must hold)."""

    name: str
    parts: tuple[Part, ...]
    shape: tuple[int, ...]
    stored: tuple[tuple[int, ...], ...]
    cat_axis: int = 0
    transpose: bool = False  # 2-D transpose of the assembled tensor (the router, D×E → E×D)

    def recipe(self, dtype: DType, source_dtype: DType) -> TensorRecipe:
        return TensorRecipe(
            self.name, self.parts, self.shape, dtype, source_dtype, cat_axis=self.cat_axis, transpose=self.transpose
        )


# Shipped tensors no Hugging Face parameter comes from: expert-load statistics, TransformerEngine
# extra state (io.BytesIO), precomputed rotary frequencies.
DROPPED = re.compile(
    r"^(layers\.\d+\.feed_forward\.(running_gate_stats_3E|global_gate_stats_3E|expert_activation_DE)"
    r"|.*\._extra_state|rope\.freqs)$"
)


def _split(shape: tuple[int, ...], axis: int | None, mp: int) -> tuple[int, ...]:
    if axis is None:
        return shape
    out = list(shape)
    out[axis] //= mp
    return tuple(out)


class _Table:
    def __init__(self, mp: int) -> None:
        self.mp = mp
        self.targets: list[Target] = []

    def one(self, name: str, source: str, shape: tuple[int, ...], axis: int | None) -> None:
        """A tensor stored as is, split over the shards along ``axis`` (None: replicated)."""
        self.targets.append(Target(name, (Part(source, axis),), shape, (_split(shape, axis, self.mp),)))

    def fused(self, names: list[str], source: str, rows: list[int], cols: int) -> None:
        """Tensors stacked by rows in each shard (``wqkv`` = [q; k; v], ``fc1`` = [w1; w3])."""
        per_shard = [r // self.mp for r in rows]
        stored = (sum(per_shard), cols)
        start = 0
        for name, full, part in zip(names, rows, per_shard, strict=True):
            self.targets.append(Target(name, (Part(source, 0, take=(start, start + part)),), (full, cols), (stored,)))
            start += part


def tensor_table(p: Llama4Params, mp: int, vocab: int) -> list[Target]:
    """Every Hugging Face tensor of the model ``p`` describes, stored in ``mp`` shards."""
    t = _Table(mp)
    d, hd = p.dim, p.head_dim
    t.one("language_model.model.embed_tokens.weight", "tok_embeddings.weight", (vocab, d), 0)
    t.one("language_model.model.norm.weight", "norm.weight", (d,), None)
    t.one("language_model.lm_head.weight", "output.weight", (vocab, d), 0)
    q, kv = p.n_heads * hd, p.n_kv_heads * hd
    for i in range(p.n_layers):
        src, dst = f"layers.{i}.", f"language_model.model.layers.{i}."
        names = [f"{dst}self_attn.{x}_proj.weight" for x in "qkv"]
        t.fused(names, src + "attention.wqkv.weight", [q, kv, kv], d)
        t.one(dst + "self_attn.o_proj.weight", src + "attention.wo.weight", (d, q), 1)
        t.one(dst + "input_layernorm.weight", src + "attention.wqkv.layer_norm_weight", (d,), None)
        ff, hf = src + "feed_forward.", dst + "feed_forward."
        if p.is_moe_layer(i):
            _moe(t, p, ff, hf, dst)
        else:
            fd = p.dense_hidden_dim
            t.one(dst + "post_attention_layernorm.weight", ff + "mlp.layer_norm_weight", (d,), None)
            t.fused([hf + "gate_proj.weight", hf + "up_proj.weight"], ff + "mlp.fc1_weight", [fd, fd], d)
            t.one(hf + "down_proj.weight", ff + "mlp.fc2_weight", (d, fd), 1)
    if p.vision is None:  # a text-only model is a Llama4ForCausalLM: model.*, lm_head.*
        return [dataclasses.replace(x, name=x.name.removeprefix("language_model.")) for x in t.targets]
    _vision(t, p)
    return t.targets


def _moe(t: _Table, p: Llama4Params, ff: str, hf: str, dst: str) -> None:
    d, e, f, mp = p.dim, p.moe.num_experts, p.moe_hidden_dim, t.mp
    t.one(dst + "post_attention_layernorm.weight", ff + "norm.weight", (d,), None)
    t.targets += [
        Target(hf + "router.weight", (Part(ff + "router_DE", None),), (e, d), ((d, e),), transpose=True),
        Target(
            hf + "experts.gate_up_proj",
            (Part(ff + "experts.moe_w_in_eD_F", 1), Part(ff + "experts.moe_w_swiglu_eD_F", 1)),
            (e, d, 2 * f),
            ((e * d, f // mp), (e * d, f // mp)),
            cat_axis=1,
        ),
        Target(
            hf + "experts.down_proj",
            (Part(ff + "experts.moe_w_out_eF_D", 1, view=(e, f // mp, d)),),
            (e, f, d),
            ((e * f // mp, d),),
        ),
    ]
    t.one(hf + "shared_expert.gate_proj.weight", ff + "w_in_shared_FD.weight", (f, d), 0)
    t.one(hf + "shared_expert.up_proj.weight", ff + "w_swiglu_FD.weight", (f, d), 0)
    t.one(hf + "shared_expert.down_proj.weight", ff + "w_out_shared_DF.weight", (d, f), 1)


def _vision(t: _Table, p: Llama4Params) -> None:
    v = p.vision
    assert v is not None
    dv, enc, dst = v.dim, "vision_embeddings.vision_encoder.", "vision_model."
    t.one(dst + "patch_embedding.linear.weight", enc + "conv1._linear.weight", (dv, 3 * v.patch_size**2), 0)
    t.one(dst + "class_embedding", enc + "class_embedding", (dv,), None)
    t.one(dst + "positional_embedding_vlm", enc + "positional_embedding_vlm", (v.n_positions, dv), None)
    for hf_norm, meta_norm in (("layernorm_pre", "ln_pre"), ("layernorm_post", "ln_post")):
        for k in ("weight", "bias"):
            t.one(f"{dst}{hf_norm}.{k}", f"{enc}{meta_norm}.{k}", (dv,), None)
    for n in range(v.n_layers):
        src, hf = f"{enc}transformer.resblocks.{n}.", f"{dst}model.layers.{n}."
        for proj in "qkv":
            t.one(f"{hf}self_attn.{proj}_proj.weight", f"{src}attn.w{proj}.weight", (dv, dv), 0)
            t.one(f"{hf}self_attn.{proj}_proj.bias", f"{src}attn.w{proj}.bias", (dv,), 0)
        t.one(hf + "self_attn.o_proj.weight", src + "attn.wo.weight", (dv, dv), 1)
        t.one(hf + "self_attn.o_proj.bias", src + "attn.wo.bias", (dv,), None)
        t.one(hf + "mlp.fc1.weight", src + "mlp.c_fc.weight", (v.mlp_dim, dv), 0)
        t.one(hf + "mlp.fc1.bias", src + "mlp.c_fc.bias", (v.mlp_dim,), 0)
        t.one(hf + "mlp.fc2.weight", src + "mlp.c_proj.weight", (dv, v.mlp_dim), 1)
        t.one(hf + "mlp.fc2.bias", src + "mlp.c_proj.bias", (dv,), None)
        for hf_norm, meta_norm in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            for k in ("weight", "bias"):
                t.one(f"{hf}{hf_norm}.{k}", f"{src}{meta_norm}.{k}", (dv,), None)
    adapter = "vision_embeddings.vision_adapter.mlp."
    t.one(dst + "vision_adapter.mlp.fc1.weight", adapter + "c_fc.weight", (v.output_dim, v.adapter_in_dim), 0)
    t.one(dst + "vision_adapter.mlp.fc2.weight", adapter + "c_proj.weight", (v.output_dim, v.output_dim), 1)
    t.one("multi_modal_projector.linear_1.weight", "vision_projection.weight", (p.dim, v.output_dim), 0)


def shard_shapes(table: list[Target]) -> dict[str, tuple[int, ...]]:
    """The shape every shipped tensor has in each shard, implied by the table."""
    return {part.source: shape for target in table for part, shape in zip(target.parts, target.stored, strict=True)}
