"""Llama 4 tensor table: Meta's shipped tensors ↔ Hugging Face ``Llama4ForConditionalGeneration``.

Data only. Each output tensor names the shipped tensors it is made of, the axis along which the
model-parallel shards of each are concatenated (the axis of the fairscale module that owns it, as
Meta's resharder ``llama_models.checkpoint`` splits it), an optional view of each shard's bytes
(routed experts are stored 2-D as ``[E·D, F/mp]`` and ``[E·F/mp, D]``) and an optional row range
of each shard (fused ``wqkv`` and ``fc1``). Llama 4's text attention keeps Meta's interleaved
complex rotary layout in Hugging Face too, so no rotary permutation appears anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .params import Llama4Params

__all__ = ["DROPPED", "Source", "Target", "shard_shapes", "tensor_table"]


@dataclass(frozen=True)
class Source:
    """One shipped tensor merged over the model-parallel shards."""

    name: str
    mp_axis: int | None  # shards concatenated along this axis of the (viewed) tensor; None: replicated
    view: tuple[int, ...] | None = None  # each shard's bytes seen as this shape first
    take: tuple[int, int] | None = None  # rows [a, b) of each shard's tensor (a fused tensor's part)


@dataclass(frozen=True)
class Target:
    """One Hugging Face tensor: its sources, concatenated along ``cat_axis``, shaped ``shape``."""

    name: str
    parts: tuple[Source, ...]
    shape: tuple[int, ...]
    cat_axis: int = 0
    transpose: bool = False  # 2-D transpose of the assembled tensor (the router, D×E → E×D)


# Shipped tensors no Hugging Face parameter comes from: expert-load statistics, TransformerEngine
# extra state (io.BytesIO), precomputed rotary frequencies.
DROPPED = re.compile(
    r"^(layers\.\d+\.feed_forward\.(running_gate_stats_3E|global_gate_stats_3E|expert_activation_DE)"
    r"|.*\._extra_state|rope\.freqs)$"
)


def _one(name: str, source: str, shape: tuple[int, ...], axis: int | None) -> Target:
    return Target(name, (Source(source, axis),), shape)


def tensor_table(p: Llama4Params, mp: int, vocab: int) -> list[Target]:
    """Every Hugging Face tensor of the model described by ``p`` stored in ``mp`` shards."""
    d, hd = p.dim, p.head_dim
    out = [
        _one("language_model.model.embed_tokens.weight", "tok_embeddings.weight", (vocab, d), 0),
        _one("language_model.model.norm.weight", "norm.weight", (d,), None),
        _one("language_model.lm_head.weight", "output.weight", (vocab, d), 0),
    ]
    q, kv = p.n_heads * hd, p.n_kv_heads * hd
    qs, kvs = q // mp, kv // mp
    for i in range(p.n_layers):
        src, dst = f"layers.{i}.", f"language_model.model.layers.{i}."
        wqkv = src + "attention.wqkv.weight"
        out += [
            Target(dst + "self_attn.q_proj.weight", (Source(wqkv, 0, take=(0, qs)),), (q, d)),
            Target(dst + "self_attn.k_proj.weight", (Source(wqkv, 0, take=(qs, qs + kvs)),), (kv, d)),
            Target(dst + "self_attn.v_proj.weight", (Source(wqkv, 0, take=(qs + kvs, qs + 2 * kvs)),), (kv, d)),
            _one(dst + "self_attn.o_proj.weight", src + "attention.wo.weight", (d, q), 1),
            _one(dst + "input_layernorm.weight", src + "attention.wqkv.layer_norm_weight", (d,), None),
        ]
        ff, hf = src + "feed_forward.", dst + "feed_forward."
        if p.is_moe_layer(i):
            e, f = p.moe.num_experts, p.moe_hidden_dim
            out += [
                _one(dst + "post_attention_layernorm.weight", ff + "norm.weight", (d,), None),
                Target(hf + "router.weight", (Source(ff + "router_DE", None),), (e, d), transpose=True),
                Target(
                    hf + "experts.gate_up_proj",
                    (
                        Source(ff + "experts.moe_w_in_eD_F", 2, view=(e, d, f // mp)),
                        Source(ff + "experts.moe_w_swiglu_eD_F", 2, view=(e, d, f // mp)),
                    ),
                    (e, d, 2 * f),
                    cat_axis=2,
                ),
                Target(
                    hf + "experts.down_proj",
                    (Source(ff + "experts.moe_w_out_eF_D", 1, view=(e, f // mp, d)),),
                    (e, f, d),
                ),
                _one(hf + "shared_expert.gate_proj.weight", ff + "w_in_shared_FD.weight", (f, d), 0),
                _one(hf + "shared_expert.up_proj.weight", ff + "w_swiglu_FD.weight", (f, d), 0),
                _one(hf + "shared_expert.down_proj.weight", ff + "w_out_shared_DF.weight", (d, f), 1),
            ]
        else:
            fd = p.dense_hidden_dim
            fc1, fds = ff + "mlp.fc1_weight", fd // mp
            out += [
                _one(dst + "post_attention_layernorm.weight", ff + "mlp.layer_norm_weight", (d,), None),
                Target(hf + "gate_proj.weight", (Source(fc1, 0, take=(0, fds)),), (fd, d)),
                Target(hf + "up_proj.weight", (Source(fc1, 0, take=(fds, 2 * fds)),), (fd, d)),
                _one(hf + "down_proj.weight", ff + "mlp.fc2_weight", (d, fd), 1),
            ]
    if p.vision is not None:
        out += _vision_table(p, vocab)
    return out


def _vision_table(p: Llama4Params, vocab: int) -> list[Target]:
    v = p.vision
    assert v is not None
    dv, enc, dst = v.dim, "vision_embeddings.vision_encoder.", "vision_model."
    out = [
        _one(dst + "patch_embedding.linear.weight", enc + "conv1._linear.weight", (dv, 3 * v.patch_size**2), 0),
        _one(dst + "class_embedding", enc + "class_embedding", (dv,), None),
        _one(dst + "positional_embedding_vlm", enc + "positional_embedding_vlm", (v.n_positions, dv), None),
    ]
    for hf_norm, meta_norm in (("layernorm_pre", "ln_pre"), ("layernorm_post", "ln_post")):
        out += [_one(f"{dst}{hf_norm}.{k}", f"{enc}{meta_norm}.{k}", (dv,), None) for k in ("weight", "bias")]
    for n in range(v.n_layers):
        src, hf = f"{enc}transformer.resblocks.{n}.", f"{dst}model.layers.{n}."
        for proj in ("q", "k", "v"):
            out += [
                _one(f"{hf}self_attn.{proj}_proj.weight", f"{src}attn.w{proj}.weight", (dv, dv), 0),
                _one(f"{hf}self_attn.{proj}_proj.bias", f"{src}attn.w{proj}.bias", (dv,), 0),
            ]
        out += [
            _one(hf + "self_attn.o_proj.weight", src + "attn.wo.weight", (dv, dv), 1),
            _one(hf + "self_attn.o_proj.bias", src + "attn.wo.bias", (dv,), None),
            _one(hf + "mlp.fc1.weight", src + "mlp.c_fc.weight", (v.mlp_dim, dv), 0),
            _one(hf + "mlp.fc1.bias", src + "mlp.c_fc.bias", (v.mlp_dim,), 0),
            _one(hf + "mlp.fc2.weight", src + "mlp.c_proj.weight", (dv, v.mlp_dim), 1),
            _one(hf + "mlp.fc2.bias", src + "mlp.c_proj.bias", (dv,), None),
        ]
        for hf_norm, meta_norm in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            out += [_one(f"{hf}{hf_norm}.{k}", f"{src}{meta_norm}.{k}", (dv,), None) for k in ("weight", "bias")]
    adapter = "vision_embeddings.vision_adapter.mlp."
    out += [
        _one(dst + "vision_adapter.mlp.fc1.weight", adapter + "c_fc.weight", (v.output_dim, v.adapter_in_dim), 0),
        _one(dst + "vision_adapter.mlp.fc2.weight", adapter + "c_proj.weight", (v.output_dim, v.output_dim), 1),
        _one("multi_modal_projector.linear_1.weight", "vision_projection.weight", (p.dim, v.output_dim), 0),
    ]
    return out


def shard_shapes(table: list[Target], mp: int) -> dict[str, tuple[int, ...]]:
    """The shape every shipped tensor has in each of the ``mp`` shards, implied by the table."""
    shapes: dict[str, tuple[int, ...]] = {}
    for target in table:
        for part in target.parts:
            shape = _shard_shape(target, part, mp)
            if part.take is not None and part.name in shapes:  # a fused tensor: its parts end in turn
                shape = (max(shapes[part.name][0], shape[0]), *shape[1:])
            shapes[part.name] = shape
    return shapes


def _shard_shape(target: Target, part: Source, mp: int) -> tuple[int, ...]:
    if part.take is not None:
        return (part.take[1], *target.shape[1:])
    if part.view is not None:  # routed experts: [E·D, F/mp] or [E·F/mp, D]
        e, a, b = part.view
        return (e * a, b)
    shape = list(target.shape[::-1] if target.transpose else target.shape)
    if part.mp_axis is not None:
        shape[part.mp_axis] //= mp
    return tuple(shape)
