"""Llama 4 params.json → config.json, generation_config.json and processor files.

Compared key by key with the published meta-llama/Llama-4-Scout-17B-16E(-Instruct) and
Llama-4-Maverick-17B-128E-Instruct files (values transcribed below), and the rotary frequencies
transformers derives from our config with Meta's reference ``precompute_freqs_cis``.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from llama4_fixtures import PARAMS

from llama_convert.dtypes import DTYPES
from llama_convert.errors import InputError, UnsupportedError
from llama_convert.families.llama4 import hf_config
from llama_convert.families.llama4.params import is_llama4_params, parse_llama4_params
from llama_convert.testing.llama4 import MAVERICK_PARAMS, SCOUT_PARAMS, VISION

BF16 = DTYPES["bfloat16"]
# Published text_config values (meta-llama/Llama-4-Scout-17B-16E-Instruct, config.json).
PUBLISHED_SCOUT_TEXT = {
    "attention_bias": False,
    "attention_chunk_size": 8192,
    "attention_dropout": 0.0,
    "attn_scale": 0.1,
    "attn_temperature_tuning": 4,
    "bos_token_id": 200000,
    "eos_token_id": [200001, 200007, 200008],
    "floor_scale": 8192,
    "for_llm_compressor": False,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "interleave_moe_layer_step": 1,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "max_position_embeddings": 10485760,
    "model_type": "llama4_text",
    "moe_layers": list(range(48)),
    "no_rope_layers": [0 if (i + 1) % 4 == 0 else 1 for i in range(48)],
    "num_attention_heads": 40,
    "num_experts_per_tok": 1,
    "num_hidden_layers": 48,
    "num_key_value_heads": 8,
    "num_local_experts": 16,
    "output_router_logits": False,
    "pad_token_id": 200018,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_qk_norm": True,
    "vocab_size": 202048,
}
PUBLISHED_MAVERICK_TEXT = {
    **PUBLISHED_SCOUT_TEXT,
    "interleave_moe_layer_step": 2,
    "max_position_embeddings": 1048576,
    "moe_layers": list(range(1, 48, 2)),
    "num_local_experts": 128,
    "rope_scaling": None,
    "use_qk_norm": False,
}
PUBLISHED_VISION = {
    "attention_dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1408,
    "image_size": 336,
    "initializer_range": 0.02,
    "intermediate_size": 5632,
    "model_type": "llama4_vision_model",
    "multi_modal_projector_bias": False,
    "norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 34,
    "patch_size": 14,
    "pixel_shuffle_ratio": 0.5,
    "projector_dropout": 0.0,
    "projector_input_dim": 4096,
    "projector_output_dim": 4096,
    "rope_theta": 10000,
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
    "vision_output_dim": 4096,
}
PUBLISHED_TOP = {
    "architectures": ["Llama4ForConditionalGeneration"],
    "boi_token_index": 200080,
    "eoi_token_index": 200081,
    "image_token_index": 200092,
    "model_type": "llama4",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
PUBLISHED_GENERATION = {
    "bos_token_id": 200000,
    "do_sample": True,
    "eos_token_id": [200001, 200007, 200008],
    "pad_token_id": 200018,
    "temperature": 0.6,
    "top_p": 0.9,
}
PUBLISHED_PROCESSOR = {
    "fake_image_token": "<|image|>",
    "image_token": "<|image|>",
    "patch_size": 14,
    "processor_class": "Llama4Processor",
}
# Ours differs on purpose here (see hf_config's docstring): Meta's reference model is the truth.
DELIBERATE = {"rope_scaling", "attn_temperature_tuning"}


def _config(params: dict, instruct: bool = True) -> dict:
    p = parse_llama4_params(params, Path("params.json"))
    return hf_config.config_json(p, BF16, vocab=202048, instruct=instruct)


@pytest.mark.parametrize(
    ("params", "published"), [(SCOUT_PARAMS, PUBLISHED_SCOUT_TEXT), (MAVERICK_PARAMS, PUBLISHED_MAVERICK_TEXT)]
)
def test_config_equals_published(params, published):
    config = _config(params)
    assert {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "transformers_version")} == (
        PUBLISHED_TOP
    )
    text = config["text_config"]
    assert set(text) == set(published)
    assert {k: v for k, v in text.items() if k not in DELIBERATE} == {
        k: v for k, v in published.items() if k not in DELIBERATE
    }
    assert text["attn_temperature_tuning"] is True
    assert config["vision_config"] == PUBLISHED_VISION


def test_scout_rope_is_metas_and_base_context():
    text = _config(SCOUT_PARAMS)["text_config"]
    assert text["rope_scaling"] == {
        "factor": 16.0,
        "high_freq_factor": 1.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }
    assert _config(SCOUT_PARAMS, instruct=False)["text_config"]["max_position_embeddings"] == 262144
    assert _config(MAVERICK_PARAMS, instruct=False)["text_config"]["max_position_embeddings"] == 262144


def _hf_inv_freq(text_config: dict) -> np.ndarray:
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextRotaryEmbedding

    return Llama4TextRotaryEmbedding(Llama4TextConfig(**text_config)).inv_freq.double().numpy()


def _meta_freqs(head_dim: int, theta: float, scaled: bool, factor: float, high: float) -> np.ndarray:
    from llama_models.llama4.model import precompute_freqs_cis

    angles = precompute_freqs_cis(head_dim, 2, theta, scaled, factor, high)[1]  # position 1: the frequencies
    return np.angle(angles.numpy()).astype(np.float64)


def test_rotary_frequencies_equal_metas_reference():
    text = {k: v for k, v in _config(SCOUT_PARAMS)["text_config"].items() if k not in ("torch_dtype",)}
    meta = _meta_freqs(128, 500000.0, True, 16, 1)
    np.testing.assert_allclose(_hf_inv_freq(text), meta, rtol=1e-6)
    # The published Llama 3.1 values give other frequencies: those our test would catch.
    published = {**text, "rope_scaling": PUBLISHED_SCOUT_TEXT["rope_scaling"]}
    assert not np.allclose(_hf_inv_freq(published), meta, rtol=1e-3)
    maverick = {k: v for k, v in _config(MAVERICK_PARAMS)["text_config"].items() if k != "torch_dtype"}
    np.testing.assert_allclose(_hf_inv_freq(maverick), _meta_freqs(128, 500000.0, False, 0, 0), rtol=1e-6)


def test_generation_and_processor_files_equal_published():
    p = parse_llama4_params(SCOUT_PARAMS, Path("params.json"))
    generation = hf_config.generation_config_json()
    assert {k: v for k, v in generation.items() if k != "transformers_version"} == PUBLISHED_GENERATION
    assert hf_config.processor_config_json(p) == PUBLISHED_PROCESSOR
    pre = hf_config.preprocessor_config_json(p)
    assert pre["size"] == {"height": 336, "width": 336} and pre["max_patches"] == 16
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5]
    assert pre["image_processor_type"] == "Llama4ImageProcessorFast" and pre["resize_to_max_canvas"] is False


def test_processor_defaults_match_transformers():
    """The image processor values are transformers' own Llama 4 defaults (its class cannot run here)."""
    import ast
    import inspect

    import transformers.models.llama4 as pkg

    folder = Path(inspect.getfile(pkg)).parent
    defaults: dict = {}
    for path in sorted(folder.glob("image_processing_llama4*.py")):  # 4.x: *_fast.py; 5.x: one file
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name in ("Llama4ImageProcessor", "Llama4ImageProcessorFast"):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                        with contextlib.suppress(ValueError):
                            defaults[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    pre = hf_config.preprocessor_config_json(parse_llama4_params(SCOUT_PARAMS, Path("p")))
    keys = ("image_mean", "image_std", "size", "do_resize", "do_rescale", "do_normalize", "do_convert_rgb")
    keys += ("max_patches", "resize_to_max_canvas")
    assert {k: pre[k] for k in keys} == {k: defaults[k] for k in keys}


def test_transformers_reads_our_config(tmp_path):
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps(_config(SCOUT_PARAMS)))
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config).__name__ == "Llama4Config"
    assert config.text_config.no_rope_layers[3] == 0 and config.text_config.moe_layers == list(range(48))
    assert config.text_config.layer_types[:4] == ["chunked_attention"] * 3 + ["full_attention"]


def test_params_detection_and_refusals():
    assert is_llama4_params(SCOUT_PARAMS) and is_llama4_params({"model": SCOUT_PARAMS})
    assert not is_llama4_params({"dim": 4096, "n_layers": 32, "n_heads": 32})
    quantized = {**SCOUT_PARAMS, "quantization_args": {"scheme": "int4_weight_int8_dynamic_activation"}}
    with pytest.raises(UnsupportedError, match="quantized Llama 4"):
        parse_llama4_params(quantized, Path("params.json"))
    broken = copy.deepcopy(SCOUT_PARAMS)
    del broken["moe_args"]["num_experts"]
    with pytest.raises(InputError, match=r"lacks the key 'moe_args\.num_experts'"):
        parse_llama4_params(broken, Path("params.json"))
    odd = {**SCOUT_PARAMS, "vision_args": {**VISION, "mlp_ratio": 3.0}}
    with pytest.raises(UnsupportedError, match="vision MLP width"):
        parse_llama4_params(odd, Path("params.json"))


def test_fixture_widths_follow_metas_formulas():
    p = parse_llama4_params(PARAMS["maverick"], Path("params.json"))
    assert (p.moe_hidden_dim, p.dense_hidden_dim) == (128, 224)
    release = parse_llama4_params(SCOUT_PARAMS, Path("params.json"))
    assert (release.moe_hidden_dim, release.dense_hidden_dim) == (8192, 16384)
