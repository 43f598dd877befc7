"""Llama 4's vision projector in GGUF: ``mmproj-<stem>.gguf`` as llama.cpp's ``convert_hf_to_gguf.py --mmproj``
writes it (architecture ``clip``, projector type ``llama4``).

The tensors are the vision tower, the pixel-shuffle adapter and the projection into the text model, from the
family's recipes, renamed as llama.cpp's tensor map does (``v.*``, ``mm.model.*``). Metadata comes from the
config.json's ``vision_config`` and the preprocessor files, key by key as llama.cpp's ``MmprojModel`` and
``Llama4VisionModel`` write them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gguf import GGML_QUANT_VERSION, GGUFWriter

from ...plan import TensorRecipe
from .gguf import naming
from .layout import tensor_table
from .spec import Llama4Spec

__all__ = ["ARCH", "PREFIX", "add_metadata", "gguf_name", "gguf_recipes"]

ARCH = "clip"
PREFIX = "mmproj-"
PROJECTOR_TYPE = "llama4"
_GLOBAL = {
    "vision_model.patch_embedding.linear.weight": "v.patch_embd.weight",
    "vision_model.class_embedding": "v.class_embd",
    "vision_model.positional_embedding_vlm": "v.position_embd.weight",
    "vision_model.layernorm_pre.weight": "v.pre_ln.weight",
    "vision_model.layernorm_pre.bias": "v.pre_ln.bias",
    "vision_model.layernorm_post.weight": "v.post_ln.weight",
    "vision_model.layernorm_post.bias": "v.post_ln.bias",
    "vision_model.vision_adapter.mlp.fc1.weight": "mm.model.mlp.1.weight",
    "vision_model.vision_adapter.mlp.fc2.weight": "mm.model.mlp.2.weight",
    "multi_modal_projector.linear_1.weight": "mm.model.fc.weight",
}
_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_out",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
    "input_layernorm": "ln1",
    "post_attention_layernorm": "attn_post_norm",  # llama.cpp's tensor map names Llama 4's second norm so
}


def gguf_name(hf_name: str) -> str | None:
    """The mmproj name of an HF tensor of the vision side; None for a text tensor; KeyError if foreign."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    if not hf_name.startswith("vision_model.model.layers."):
        if hf_name.startswith(("vision_model.", "multi_modal_projector.")):
            raise KeyError(hf_name)
        return None
    _, _, _, layer, rest = hf_name.split(".", 4)
    module, _, kind = rest.rpartition(".")
    return f"v.blk.{layer}.{_LAYER[module]}.{kind}"


def gguf_recipes(spec: Llama4Spec) -> list[TensorRecipe]:
    """The vision side's tensors with mmproj names, in the source's dtype."""
    out = []
    for target in tensor_table(spec.params, spec.mp, spec.vocab_size):
        name = gguf_name(target.name)
        if name is not None:
            out.append(dataclasses.replace(target.recipe(spec.source_dtype, spec.source_dtype), name=name))
    return out


def add_metadata(
    writer: GGUFWriter, files: dict[str, bytes], *, name: str, file_type: int, counts: Any, where: str
) -> None:
    """Every metadata key of llama.cpp's mmproj file for a Llama 4 folder holding ``files`` (config.json,
    generation_config.json, preprocessor_config.json, processor_config.json), named ``name``."""
    config = json.loads(files["config.json"])
    vision = config["vision_config"]
    text = {**config, **config.get("text_config", {})}
    pre: dict[str, Any] = {}
    for file, inner in (("preprocessor_config.json", "media_proc_cfg"), ("processor_config.json", "image_processor")):
        if file in files:
            cfg = json.loads(files[file])
            pre = {**pre, **cfg, **cfg.get(inner, {})}
    writer.add_type("mmproj")
    naming(writer, name, config, json.loads(files.get("generation_config.json", b"{}")), counts)
    writer.add_file_type(file_type)
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(text["hidden_size"])
    writer.add_vision_image_size(vision["image_size"])
    writer.add_vision_patch_size(vision["patch_size"])
    writer.add_vision_embedding_length(vision["hidden_size"])
    writer.add_vision_feed_forward_length(vision["intermediate_size"])
    writer.add_vision_block_count(vision["num_hidden_layers"])
    writer.add_vision_head_count(vision["num_attention_heads"])
    writer.add_vision_image_mean(pre["image_mean"])
    writer.add_vision_image_std(pre["image_std"])
    writer.add_clip_projector_type(PROJECTOR_TYPE)
    writer.add_vision_attention_layernorm_eps(vision["norm_eps"])
    writer.add_vision_projector_scale_factor(int(1.0 / vision["pixel_shuffle_ratio"]))
    writer.add_vision_use_gelu(True)
    writer.add_quantization_version(GGML_QUANT_VERSION)
