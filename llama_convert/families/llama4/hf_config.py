"""config.json, generation_config.json and the processor files of a converted Llama 4.

Key for key as the published meta-llama/Llama-4-* repositories have them, with two deliberate
differences, both to agree with Meta's reference model (``llama_models.llama4``):

* Scout's ``rope_scaling`` is Meta's (factor 16, high-frequency factor 1), not Llama 3.1's
  (8, 4) that the published config carries; with the published values transformers computes
  different rotary frequencies than Meta's ``precompute_freqs_cis`` for every scaled frequency.
* ``attn_temperature_tuning`` is the boolean Meta's args hold (the published 4 is truthy too).
"""

from __future__ import annotations

from typing import Any, Final

from ...dtypes import DType
from .params import (
    SCALED_ROPE_LOW_FREQ_FACTOR,
    SCALED_ROPE_ORIGINAL_CONTEXT,
    Llama4Params,
)

__all__ = [
    "BOS_ID",
    "EOS_IDS",
    "PAD_ID",
    "config_json",
    "context_length",
    "generation_config_json",
    "preprocessor_config_json",
    "processor_config_json",
]

BOS_ID: Final = 200000  # <|begin_of_text|>
EOS_IDS: Final = [200001, 200007, 200008]  # <|end_of_text|>, <|eom|>, <|eot|>
PAD_ID: Final = 200018  # <|finetune_right_pad|>
BOI_ID, EOI_ID, IMAGE_ID = 200080, 200081, 200092  # <|image_start|>, <|image_end|>, <|image|>
MIN_TRANSFORMERS: Final = "4.51.0"  # first release with Llama 4

# Published max_position_embeddings: 256K for the base models, 10M for Scout Instruct, 1M for
# Maverick Instruct. Scout and Maverick differ in structure: Scout has a MoE in every layer and
# scaled rope, Maverick alternates dense and MoE layers.
_BASE_CONTEXT: Final = 262144
_INSTRUCT_CONTEXT: Final = {"Scout": 10485760, "Maverick": 1048576}
# Llama Guard 4: what transformers' converter writes for a dense Llama 4 (``max_context_length``, the branch
# added for Guard 4), and Meta's max_seq_len for Llama-Guard-4-12B in llama_models' sku_types (8192); the
# published config.json itself was not available offline (tests/data/guard4_published).
GUARD4_CONTEXT: Final = 8192
GUARD4_INTERMEDIATE_SIZE: Final = 8192  # unused without experts; transformers' converter writes 8192


def variant(p: Llama4Params) -> str:
    """ "Scout" (a MoE in every layer), "Maverick" (dense and MoE layers interleaved) or "Guard 4" (dense)."""
    if p.moe is None:
        return "Guard 4"
    return "Scout" if p.moe.interleave_moe_layer_step == 1 else "Maverick"


def context_length(p: Llama4Params, instruct: bool) -> int:
    if p.moe is None:
        return GUARD4_CONTEXT
    return _INSTRUCT_CONTEXT[variant(p)] if instruct else _BASE_CONTEXT


def _rope_scaling(p: Llama4Params) -> dict[str, Any] | None:
    if not p.use_scaled_rope:
        return None
    return {
        "factor": float(p.rope_scaling_factor or 0.0),
        "high_freq_factor": float(p.rope_high_freq_factor or 0.0),
        "low_freq_factor": SCALED_ROPE_LOW_FREQ_FACTOR,
        "original_max_position_embeddings": SCALED_ROPE_ORIGINAL_CONTEXT,
        "rope_type": "llama3",
    }


def _number(x: float) -> float | int:
    """Whole floats as ints, as the published files write floor_scale (8192)."""
    return int(x) if float(x).is_integer() else x


def text_config(p: Llama4Params, dtype: DType, *, vocab: int, instruct: bool) -> dict[str, Any]:
    return {
        "attention_bias": False,
        "attention_chunk_size": p.attention_chunk_size,
        "attention_dropout": 0.0,
        "attn_scale": p.attn_scale,
        "attn_temperature_tuning": p.attn_temperature_tuning,
        "bos_token_id": BOS_ID,
        "eos_token_id": list(EOS_IDS),
        "floor_scale": _number(p.floor_scale),
        "for_llm_compressor": False,
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "hidden_size": p.dim,
        "initializer_range": 0.02,
        "interleave_moe_layer_step": p.moe.interleave_moe_layer_step if p.moe else 0,
        "intermediate_size": p.moe_hidden_dim if p.moe else GUARD4_INTERMEDIATE_SIZE,
        "intermediate_size_mlp": p.dense_hidden_dim,
        "max_position_embeddings": context_length(p, instruct),
        "model_type": "llama4_text",
        "moe_layers": [i for i in range(p.n_layers) if p.is_moe_layer(i)],
        # 1 = this layer uses RoPE, 0 = a NoPE layer (transformers' convention)
        "no_rope_layers": [0 if p.is_nope_layer(i) else 1 for i in range(p.n_layers)],
        "num_attention_heads": p.n_heads,
        "num_experts_per_tok": p.moe.top_k if p.moe else 1,
        "num_hidden_layers": p.n_layers,
        "num_key_value_heads": p.n_kv_heads,
        "num_local_experts": p.moe.num_experts if p.moe else 0,
        "output_router_logits": False,
        "pad_token_id": PAD_ID,
        "rms_norm_eps": p.norm_eps,
        "rope_scaling": _rope_scaling(p),
        "rope_theta": p.rope_theta,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "torch_dtype": dtype.torch_name,
        "use_cache": True,
        "use_qk_norm": p.use_qk_norm,
        "vocab_size": vocab,
    }


def vision_config(p: Llama4Params) -> dict[str, Any]:
    v = p.vision
    assert v is not None
    return {
        "attention_dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": v.dim,
        "image_size": v.image_size,
        "initializer_range": 0.02,
        "intermediate_size": v.mlp_dim,
        "model_type": "llama4_vision_model",
        "multi_modal_projector_bias": False,
        "norm_eps": 1e-05,
        "num_attention_heads": v.n_heads,
        "num_channels": 3,
        "num_hidden_layers": v.n_layers,
        "patch_size": v.patch_size,
        "pixel_shuffle_ratio": v.pixel_shuffle_ratio,
        "projector_dropout": 0.0,
        "projector_input_dim": v.output_dim,
        "projector_output_dim": v.output_dim,
        "rope_theta": 10000,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vision_output_dim": v.output_dim,
    }


def config_json(p: Llama4Params, dtype: DType, *, vocab: int, instruct: bool) -> dict[str, Any]:
    """The ``Llama4ForConditionalGeneration`` config (``Llama4ForCausalLM`` when there is no vision)."""
    text = text_config(p, dtype, vocab=vocab, instruct=instruct)
    if p.vision is None:
        return {"architectures": ["Llama4ForCausalLM"], **text, "transformers_version": MIN_TRANSFORMERS}
    return {
        "architectures": ["Llama4ForConditionalGeneration"],
        "boi_token_index": BOI_ID,
        "eoi_token_index": EOI_ID,
        "image_token_index": IMAGE_ID,
        "model_type": "llama4",
        "text_config": text,
        "tie_word_embeddings": False,
        "torch_dtype": dtype.torch_name,
        "transformers_version": MIN_TRANSFORMERS,
        "vision_config": vision_config(p),
    }


def generation_config_json() -> dict[str, Any]:
    """Meta's sampling defaults (temperature 0.6, top_p 0.9); generation stops at any of Llama 4's ends."""
    return {
        "bos_token_id": BOS_ID,
        "do_sample": True,
        "eos_token_id": list(EOS_IDS),
        "pad_token_id": PAD_ID,
        "temperature": 0.6,
        "top_p": 0.9,
        "transformers_version": MIN_TRANSFORMERS,
    }


def preprocessor_config_json(p: Llama4Params) -> dict[str, Any]:
    """Image processor settings of the published repos (Meta's tiling: up to 16 tiles of image_size)."""
    v = p.vision
    assert v is not None
    return {
        "crop_size": None,
        "data_format": "channels_first",
        "default_to_square": True,
        "device": None,
        "do_center_crop": None,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Llama4ImageProcessorFast",
        "image_std": [0.5, 0.5, 0.5],
        "input_data_format": None,
        "max_patches": 16,
        "processor_class": "Llama4Processor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "resize_to_max_canvas": False,
        "return_tensors": None,
        "size": {"height": v.image_size, "width": v.image_size},
    }


def processor_config_json(p: Llama4Params) -> dict[str, Any]:
    v = p.vision
    assert v is not None
    return {
        "fake_image_token": "<|image|>",
        "image_token": "<|image|>",
        "patch_size": v.patch_size,
        "processor_class": "Llama4Processor",
    }
