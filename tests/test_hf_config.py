"""config.json / generation_config.json equal the published meta-llama repos for each release."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_convert.dtypes import DTYPES
from llama_convert.families.llama.hf_config import config_json, generation_config_json
from llama_convert.families.llama.releases import RELEASES
from llama_convert.families.llama.spec import LlamaSpec as ModelSpec
from llama_convert.formats.meta.folder import MetaFolder, parse_params
from llama_convert.testing.synth import PRESETS

BF16 = DTYPES["bfloat16"]


def spec_for(preset: str, version: str, *, instruct: bool, kv_fold: int = 1) -> ModelSpec:
    synth = PRESETS[preset]
    params = parse_params(synth.params, Path("params.json"))
    vocab = params.vocab_size or synth.vocab_size
    folder = MetaFolder(Path("x"), Path("x/params.json"), synth.params, params, (), None)
    release = RELEASES[version]
    return ModelSpec(
        family="llama",
        name="?",
        folder=folder,
        mp=synth.mp,
        source_dtype=BF16,
        instruct=instruct,
        evidence=(),
        summary="",
        parameter_count=0,
        notes=(),
        release=release,
        params=params,
        vocab_size=vocab,
        size="?",
        instruct_reason="",
        version_reason="",
        kv_fold=kv_fold,
        tie_embeddings=release.ties_embeddings,
        rope_scaling_factor=release.rope_scaling_factor,
        guard=None,
    )


COMMON = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "mlp_bias": False,
    "model_type": "llama",
    "pretraining_tp": 1,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}
# The published files name the transformers version that wrote them; we name the oldest that reads them.
MIN_TRANSFORMERS = {"3": "4.40.0", "3.1": "4.43.0", "3.2": "4.45.0", "3.3": "4.45.0"}
LLAMA3 = {**COMMON, "bos_token_id": 128000, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256}


def rope(factor: float) -> dict:
    return {
        "factor": factor,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }


PUBLISHED = {
    # meta-llama/Meta-Llama-3-8B
    ("llama3-8b", "3", False): {
        **LLAMA3,
        "eos_token_id": 128001,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rope_scaling": None,
        "tie_word_embeddings": False,
    },
    # meta-llama/Meta-Llama-3-70B-Instruct
    ("llama3-70b", "3", True): {
        **LLAMA3,
        "eos_token_id": 128009,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "max_position_embeddings": 8192,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "rope_scaling": None,
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-8B-Instruct
    ("llama3.1-8b", "3.1", True): {
        **LLAMA3,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rope_scaling": rope(8.0),
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-70B
    ("llama3.1-70b", "3.1", False): {
        **LLAMA3,
        "eos_token_id": 128001,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "max_position_embeddings": 131072,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "rope_scaling": rope(8.0),
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-405B (the MP16 download folds its 16 duplicated KV heads to the published 8)
    ("llama3.1-405b-mp16", "3.1", False): {
        **LLAMA3,
        "eos_token_id": 128001,
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "max_position_embeddings": 131072,
        "num_attention_heads": 128,
        "num_hidden_layers": 126,
        "num_key_value_heads": 8,
        "rope_scaling": rope(8.0),
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.2-1B
    ("llama3.2-1b", "3.2", False): {
        **LLAMA3,
        "eos_token_id": 128001,
        "head_dim": 64,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "rope_scaling": rope(32.0),
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.2-3B-Instruct
    ("llama3.2-3b", "3.2", True): {
        **LLAMA3,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": 128,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "num_attention_heads": 24,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rope_scaling": rope(32.0),
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.3-70B-Instruct
    ("llama3.3-70b", "3.3", True): {
        **LLAMA3,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": 128,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "max_position_embeddings": 131072,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "rope_scaling": rope(8.0),
        "tie_word_embeddings": False,
    },
}

GENERATION = {
    ("3", False): {"bos_token_id": 128000, "do_sample": True, "eos_token_id": 128001, "temperature": 0.6, "top_p": 0.9},
    ("3", True): {
        "bos_token_id": 128000,
        "do_sample": True,
        "eos_token_id": [128001, 128009],
        "temperature": 0.6,
        "top_p": 0.9,
    },
    ("3.1", True): {
        "bos_token_id": 128000,
        "do_sample": True,
        "eos_token_id": [128001, 128008, 128009],
        "temperature": 0.6,
        "top_p": 0.9,
    },
    ("3.2", False): {
        "bos_token_id": 128000,
        "do_sample": True,
        "eos_token_id": 128001,
        "temperature": 0.6,
        "top_p": 0.9,
    },
}


@pytest.mark.parametrize(("key", "expected"), list(PUBLISHED.items()), ids=[f"{k[0]}-{k[2]}" for k in PUBLISHED])
def test_config_equals_published(key, expected):
    preset, version, instruct = key
    fold = 2 if preset.endswith("mp16") else 1
    expected = {**expected, "transformers_version": MIN_TRANSFORMERS[version]}
    assert config_json(spec_for(preset, version, instruct=instruct, kv_fold=fold), BF16) == expected


@pytest.mark.parametrize(("key", "expected"), list(GENERATION.items()), ids=str)
def test_generation_config_equals_published(key, expected):
    version, instruct = key
    preset = {"3": "llama3-8b", "3.1": "llama3.1-8b", "3.2": "llama3.2-1b"}[version]
    assert generation_config_json(spec_for(preset, version, instruct=instruct)) == expected


def test_intermediate_sizes_of_the_releases():
    sizes = {name: parse_params(p.params, Path("p")).intermediate_size for name, p in PRESETS.items()}
    assert sizes["llama2-7b"] == 11008
    assert sizes["llama2-13b"] == 13824
    assert sizes["llama2-70b"] == 28672
    assert sizes["codellama-34b"] == 22016
    assert sizes["llama3.1-8b"] == 14336
    assert sizes["llama3.1-405b-mp8"] == 53248
    assert sizes["llama3.2-1b"] == 8192
    assert sizes["llama3.2-3b"] == 8192


def test_torch_dtype_follows_what_was_written():
    spec = spec_for("llama3.1-8b", "3.1", instruct=False)
    assert config_json(spec, DTYPES["float16"])["torch_dtype"] == "float16"
    assert config_json(spec, DTYPES["float32"])["torch_dtype"] == "float32"
