"""config.json, generation_config.json and preprocessor_config.json as the published meta-llama
Llama-3.2-11B/90B-Vision(-Instruct) repositories have them.

The published config.json is a full dump by transformers 4.45.0.dev0: every key of the text and vision
sub-configs is written, including the generic ``PretrainedConfig`` ones. It is reproduced key for key;
only the sizes come from the checkpoint.
"""

from __future__ import annotations

from typing import Any, Final

from ...dtypes import DType
from .params import INTERMEDIATE_LAYERS, PATCH_SIZE, VISION_HEADS, VisionParams, supported_aspect_ratios

__all__ = [
    "BOS_ID",
    "IMAGE_TOKEN_ID",
    "PAD_ID",
    "config_json",
    "generation_config_json",
    "preprocessor_config_json",
]

BOS_ID: Final = 128000
EOS_BASE: Final = 128001
EOS_INSTRUCT: Final = (128001, 128008, 128009)
PAD_ID: Final = 128004  # <|finetune_right_pad_id|>
IMAGE_TOKEN_ID: Final = 128256  # <|image|>, appended after Meta's 128256 tokens
CONTEXT_LENGTH: Final = 131072
ROPE_SCALING: Final = {  # Meta's reference code hard-codes factor 8 for the Vision models' text rope
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
TRANSFORMERS_VERSION: Final = "4.45.0.dev0"
# CLIP's normalisation, as Meta's image transform and the published preprocessor use.
IMAGE_MEAN: Final = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD: Final = [0.26862954, 0.26130258, 0.27577711]

# The generic PretrainedConfig keys every sub-config of the published files carries, with their values.
_GENERIC: Final[dict[str, Any]] = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "architectures": None,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torchscript": False,
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def _eos(instruct: bool) -> int | list[int]:
    return list(EOS_INSTRUCT) if instruct else EOS_BASE


def config_json(p: VisionParams, dtype: DType, *, instruct: bool) -> dict[str, Any]:
    """The ``MllamaForConditionalGeneration`` config."""
    text = {
        **_GENERIC,
        "bos_token_id": BOS_ID,
        "cross_attention_layers": list(p.cross_layers),
        "dropout": 0,
        "eos_token_id": _eos(instruct),
        "hidden_act": "silu",
        "hidden_size": p.dim,
        "initializer_range": 0.02,
        "intermediate_size": p.intermediate_size,
        "max_position_embeddings": CONTEXT_LENGTH,
        "model_type": "mllama_text_model",
        "num_attention_heads": p.n_heads,
        "num_hidden_layers": p.n_layers + p.n_cross,
        "num_key_value_heads": p.n_kv_heads,
        "pad_token_id": PAD_ID,
        "rms_norm_eps": p.norm_eps,
        "rope_scaling": dict(ROPE_SCALING) if p.use_scaled_rope else None,
        "rope_theta": float(p.rope_theta),
        "tie_word_embeddings": False,
        "torch_dtype": dtype.torch_name,
        "use_cache": True,
        "vocab_size": p.vocab_size,
    }
    vision = {
        **_GENERIC,
        "attention_heads": VISION_HEADS,
        "bos_token_id": None,
        "eos_token_id": None,
        "hidden_act": "gelu",
        "hidden_size": p.vision_width,
        "image_size": p.tile_size,
        "intermediate_layers_indices": list(INTERMEDIATE_LAYERS),
        "intermediate_size": 4 * p.vision_width,
        "max_num_tiles": p.max_tiles,
        "model_type": "mllama_vision_model",
        "norm_eps": 1e-05,
        "num_channels": 3,
        "num_global_layers": p.vision_global_layers,
        "num_hidden_layers": p.vision_layers,
        "pad_token_id": None,
        "patch_size": PATCH_SIZE,
        "supported_aspect_ratios": [list(r) for r in supported_aspect_ratios(p.max_tiles)],
        # The published files carry PretrainedConfig's default here; nothing in the vision model is tied.
        "tie_word_embeddings": True,
        "torch_dtype": dtype.torch_name,
        "vision_output_dim": p.vision_output_dim,
    }
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "image_token_index": IMAGE_TOKEN_ID,
        "model_type": "mllama",
        "text_config": dict(sorted(text.items())),
        "torch_dtype": dtype.torch_name,
        "transformers_version": TRANSFORMERS_VERSION,
        "vision_config": dict(sorted(vision.items())),
    }


def generation_config_json(*, instruct: bool) -> dict[str, Any]:
    """Meta's sampling defaults (temperature 0.6, top_p 0.9); instruct models also stop at end of turn."""
    return {
        "bos_token_id": BOS_ID,
        "do_sample": True,
        "eos_token_id": _eos(instruct),
        "pad_token_id": PAD_ID,
        "temperature": 0.6,
        "top_p": 0.9,
        "transformers_version": TRANSFORMERS_VERSION,
    }


def preprocessor_config_json(p: VisionParams) -> dict[str, Any]:
    """``MllamaImageProcessor`` settings: tiles of ``vision_chunk_size``, at most ``vision_max_num_chunks``."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGE_MEAN,
        "image_processor_type": "MllamaImageProcessor",
        "image_std": IMAGE_STD,
        "max_image_tiles": p.max_tiles,
        "resample": 2,  # bilinear
        "rescale_factor": 1 / 255,
        "size": {"height": p.tile_size, "width": p.tile_size},
    }
