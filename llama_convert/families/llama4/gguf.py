"""Llama 4 in GGUF (text: architecture ``llama4``), as llama.cpp's ``convert_hf_to_gguf.py`` writes it for our
Hugging Face output of the same checkpoint; the vision projector's file is ``mmproj.py``.

Tensors come from the family's recipes (``layout.tensor_table``), renamed as llama.cpp's tensor map does.
Hugging Face's Llama 4 keeps Meta's interleaved rotary rows, and so does llama.cpp (``undo_permute = False``).
Routed experts become 3-D tensors, one 2-D recipe per expert stacked: ``ffn_gate_exps``/``ffn_up_exps`` hold
each expert's ``w1``/``w3`` as ``[F, D]`` (Meta's ``moe_w_in_eD_F`` rows of that expert, transposed),
``ffn_down_exps`` its ``w2`` as ``[D, F]``. Metadata is derived key by key, as llama.cpp does, from the
config.json, generation_config.json and tokenizer files (the family's own for a Meta checkpoint, the
folder's for a Hugging Face source). llama.cpp hard-codes NoPE layers, chunked attention, attention
temperature tuning, qk-norm and the sigmoid router for ``llama4``: none of them is a key.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFWriter, Metadata, size_label

from ...errors import UnsupportedError
from ...formats.gguf.vocab import add_bpe_vocab
from ...plan import Part, StackedRecipe, TensorRecipe
from ..llama.gguf import hf_head_dim
from ..llama.gguf import rope_freqs as llama_rope_freqs
from .layout import tensor_table
from .spec import Llama4Spec

__all__ = [
    "ARCH",
    "PRE_TOKENIZER",
    "ROPE_FREQS",
    "add_metadata",
    "gguf_name",
    "gguf_recipes",
    "naming",
    "parameter_counts",
    "refuse_dense",
    "rope_freqs",
    "text_config",
]

ARCH = "llama4"
PRE_TOKENIZER = "llama4"  # llama.cpp's name for Llama 4's pre-tokenizer
ROPE_FREQS = "rope_freqs.weight"
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "feed_forward.router.weight": "ffn_gate_inp.weight",
    "feed_forward.gate_proj.weight": "ffn_gate.weight",
    "feed_forward.up_proj.weight": "ffn_up.weight",
    "feed_forward.down_proj.weight": "ffn_down.weight",
    "feed_forward.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "feed_forward.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "feed_forward.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
}
EXPERTS = {  # HF expert tensor → (GGUF names, split of its last axis into gate | up)
    "feed_forward.experts.gate_up_proj": ("ffn_gate_exps.weight", "ffn_up_exps.weight"),
    "feed_forward.experts.down_proj": ("ffn_down_exps.weight",),
}
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")


def gguf_name(hf_name: str) -> str:
    """``language_model.model.layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight``; KeyError if foreign."""
    name = hf_name.removeprefix("language_model.")
    if name in _GLOBAL:
        return _GLOBAL[name]
    if not name.startswith("model.layers."):
        raise KeyError(hf_name)
    _, _, layer, suffix = name.split(".", 3)
    return f"blk.{layer}.{_LAYER[suffix]}"


def _experts(name: str, spec: Llama4Spec) -> list[StackedRecipe]:
    """The three stacked expert tensors of the layer of HF tensor ``name``: one 2-D recipe per expert."""
    p, mp, src = spec.params, spec.mp, spec.source_dtype
    d, e, f = p.dim, p.moe.num_experts, p.moe_hidden_dim
    layer = name.removeprefix("language_model.").split(".")[2]
    ff, blk = f"layers.{layer}.feed_forward.experts.", f"blk.{layer}."
    if name.endswith("down_proj"):
        rows = f // mp  # each shard's rows of one expert in moe_w_out_eF_D [E·F/mp, D]
        parts = [Part(ff + "moe_w_out_eF_D", 0, take=(x * rows, (x + 1) * rows)) for x in range(e)]
        down = tuple(TensorRecipe(f"{blk}ffn_down_exps.weight", (q,), (d, f), src, src, transpose=True) for q in parts)
        return [StackedRecipe(f"{blk}ffn_down_exps.weight", (e, d, f), down)]
    out = []
    for source, gguf in (("moe_w_in_eD_F", "ffn_gate_exps.weight"), ("moe_w_swiglu_eD_F", "ffn_up_exps.weight")):
        parts = [Part(ff + source, 1, take=(x * d, (x + 1) * d)) for x in range(e)]
        stack = tuple(TensorRecipe(blk + gguf, (q,), (f, d), src, src, cat_axis=1, transpose=True) for q in parts)
        out.append(StackedRecipe(blk + gguf, (e, f, d), stack))
    return out


def gguf_recipes(spec: Llama4Spec) -> list[TensorRecipe | StackedRecipe]:
    """The text model's tensors with GGUF names, in the source's dtype (experts stacked per expert)."""
    p = spec.params
    refuse_dense(p.moe.num_experts, any(p.is_moe_layer(i) for i in range(p.n_layers)), str(spec.folder.root))
    out: list[TensorRecipe | StackedRecipe] = []
    for target in tensor_table(spec.params, spec.mp, spec.vocab_size):
        if target.name.startswith(VISION_PREFIXES):
            continue
        if target.name.endswith("experts.gate_up_proj") or target.name.endswith("experts.down_proj"):
            out += _experts(target.name, spec)
            continue
        recipe = target.recipe(spec.source_dtype, spec.source_dtype)
        out.append(dataclasses.replace(recipe, name=gguf_name(target.name)))
    return out


def refuse_dense(n_experts: int, any_moe: bool, where: str = "") -> None:
    """llama.cpp's ``llama4`` needs routed experts; a dense Llama 4 (Llama Guard 4) does not load there."""
    if n_experts <= 0 or not any_moe:
        raise UnsupportedError(
            f"{where or 'this model'} describes a dense Llama 4 (no expert layers, like Llama Guard 4), which "
            "llama.cpp's llama4 architecture does not load, so no GGUF file is written; convert it to a Hugging Face "
            "folder."
        )


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's view of a Llama 4 config.json: the text config moved to the top level."""
    return {**config, **config.get("text_config", {})}


def parameter_counts(entries: list[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, experts) as gguf's ``GGUFWriter.get_total_parameter_count`` counts them."""
    total = shared = expert = expert_sum = n_expert = 0
    for name, shape in entries:
        size = 1
        for s in shape:
            size *= s
        if "_exps." in name and len(shape) >= 3:
            count = shape[0]  # numpy order: the expert axis leads
            expert += size // count
            expert_sum += count
            n_expert += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert if n_expert else 0)


def naming(writer: GGUFWriter, name: str, config: dict[str, Any], generation: dict[str, Any], counts: Any) -> None:
    """Sampling defaults and naming keys, through gguf's own ``Metadata`` heuristics, as llama.cpp sets them
    (``general.type`` is the caller's: ``model`` or ``mmproj``)."""
    meta = Metadata.apply_metadata_heuristic(Metadata(), None, config, Path(name), counts[0])
    meta.sampling_top_k = generation.get("top_k")
    meta.sampling_top_p = generation.get("top_p")
    meta.sampling_min_p = generation.get("min_p")
    meta.sampling_temp = generation.get("temperature")
    meta.name = meta.name or name
    meta.size_label = meta.size_label or size_label(*counts)
    meta.set_gguf_meta_model(writer)


def _rope(h: dict[str, Any]) -> dict[str, Any]:
    params = dict(h.get("rope_parameters") or h.get("rope_scaling") or {})
    params.setdefault("rope_theta", h.get("rope_theta"))
    return params


def add_metadata(
    writer: GGUFWriter, files: dict[str, bytes], *, name: str, file_type: int, counts: Any, where: str
) -> None:
    """Every metadata key llama.cpp's converter writes for the text model of a Llama 4 folder holding
    ``files`` (config.json, generation_config.json, tokenizer.json, tokenizer_config.json), named ``name``."""
    config = json.loads(files["config.json"])
    h = text_config(config)
    refuse_dense(h.get("num_local_experts", 0), bool(h.get("moe_layers", [0])), where)
    writer.add_type("model")
    naming(writer, name, config, json.loads(files.get("generation_config.json", b"{}")), counts)
    writer.add_block_count(h["num_hidden_layers"])
    writer.add_context_length(h["max_position_embeddings"])
    writer.add_embedding_length(h["hidden_size"])
    writer.add_feed_forward_length(h["intermediate_size_mlp"])  # the dense MLP width (llama.cpp swaps them)
    writer.add_head_count(h["num_attention_heads"])
    writer.add_head_count_kv(h.get("num_key_value_heads", h["num_attention_heads"]))
    rope = _rope(h)
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(h["rms_norm_eps"])
    writer.add_expert_count(h["num_local_experts"])
    writer.add_expert_used_count(h["num_experts_per_tok"])
    if h.get("head_dim") is not None:
        writer.add_key_length(h["head_dim"])
        writer.add_value_length(h["head_dim"])
    writer.add_file_type(file_type)
    writer.add_vocab_size(h["vocab_size"])
    writer.add_rope_dimension_count(hf_head_dim(h))
    writer.add_interleave_moe_layer_step(h["interleave_moe_layer_step"])
    writer.add_expert_feed_forward_length(h["intermediate_size"])
    if "layer_types" in h and all(t == "full_attention" for t in h["layer_types"]):
        writer.add_sliding_window(0)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    add_bpe_vocab(writer, files, h["vocab_size"], pre=PRE_TOKENIZER)


def rope_freqs(config: dict[str, Any]) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` for a Llama 4 config.json (llama3-type scaling: Scout), else None."""
    return llama_rope_freqs(text_config(config))
