"""config.json → params.json: the published meta-llama configs give the params.json Meta ships."""

from __future__ import annotations

import pytest

from llama_convert.errors import UnsupportedError
from llama_convert.families.llama.from_hf import target_from_hf_config
from llama_convert.formats.meta.folder import ffn_width as meta_ffn_width

_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def hf_config(dim, layers, heads, kv, vocab, ffn, *, eps=1e-5, theta=10000.0, factor=None, tie=False, ctx=4096):
    """A config.json as transformers 4.x writes it (rope_theta + rope_scaling)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_size": dim,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": None if factor is None else {"factor": factor, "rope_type": "llama3", **_LLAMA3_ROPE},
        "tie_word_embeddings": tie,
        "max_position_embeddings": ctx,
        "torch_dtype": "bfloat16",
    }


def as_v5(config: dict) -> dict:
    """The same config as transformers 5.x writes it (rope_parameters, dtype)."""
    out = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    rope = config["rope_scaling"] or {"rope_type": "default"}
    out["rope_parameters"] = {**rope, "rope_theta": config["rope_theta"]}
    out["dtype"] = config["torch_dtype"]
    return out


def meta(dim, layers, heads, kv=None, **rest):
    """params.json content (key order does not matter: compared as parsed JSON)."""
    out = {"dim": dim, "n_layers": layers, "n_heads": heads, **({"n_kv_heads": kv} if kv else {})}
    return {**out, "norm_eps": 1e-05, **rest}


L2 = {"multiple_of": 256, "vocab_size": -1}
CODE = {"multiple_of": 256, "ffn_dim_multiplier": 1.0, "rope_theta": 1000000}
L3 = {"vocab_size": 128256, "rope_theta": 500000.0}
S = {**L3, "use_scaled_rope": True}
R3 = {"theta": 500000.0}
R31 = {"theta": 500000.0, "factor": 8.0, "ctx": 131072}
R32 = {"theta": 500000.0, "factor": 32.0, "tie": True, "ctx": 131072}

# Published HF configs (meta-llama repos) and Meta's params.json of the same release (reference table).
RELEASES = {
    "llama1-7b": (
        hf_config(4096, 32, 32, 32, 32000, 11008, eps=1e-6, ctx=2048),
        meta(4096, 32, 32, **L2, norm_eps=1e-06),
    ),
    "llama2-7b": (hf_config(4096, 32, 32, 32, 32000, 11008), meta(4096, 32, 32, **L2)),
    "llama2-13b": (hf_config(5120, 40, 40, 40, 32000, 13824), meta(5120, 40, 40, **L2)),
    "llama2-70b": (
        hf_config(8192, 80, 64, 8, 32000, 28672),
        meta(8192, 80, 64, 8, **{**L2, "multiple_of": 4096}, ffn_dim_multiplier=1.3),
    ),
    "codellama-7b": (hf_config(4096, 32, 32, 32, 32016, 11008, theta=1e6, ctx=16384), meta(4096, 32, 32, **CODE)),
    "codellama-34b": (hf_config(8192, 48, 64, 8, 32000, 22016, theta=1e6, ctx=16384), meta(8192, 48, 64, 8, **CODE)),
    "llama3-8b": (
        hf_config(4096, 32, 32, 8, 128256, 14336, **R3),
        meta(4096, 32, 32, 8, multiple_of=1024, ffn_dim_multiplier=1.3, **L3),
    ),
    "llama3.1-8b": (
        hf_config(4096, 32, 32, 8, 128256, 14336, **R31),
        meta(4096, 32, 32, 8, multiple_of=1024, ffn_dim_multiplier=1.3, **S),
    ),
    "llama3.1-70b": (
        hf_config(8192, 80, 64, 8, 128256, 28672, **R31),
        meta(8192, 80, 64, 8, multiple_of=4096, ffn_dim_multiplier=1.3, **S),
    ),
    "llama3.1-405b": (
        hf_config(16384, 126, 128, 8, 128256, 53248, **R31),
        meta(16384, 126, 128, 8, multiple_of=4096, ffn_dim_multiplier=1.2, **S),
    ),
    "llama3.2-1b": (
        hf_config(2048, 16, 32, 8, 128256, 8192, **R32),
        meta(2048, 16, 32, 8, multiple_of=256, ffn_dim_multiplier=1.5, **S),
    ),
    "llama-guard-3-1b": (  # Llama 3.2 1B's shape, untied, rope factor 8
        hf_config(2048, 16, 32, 8, 128256, 8192, theta=500000.0, factor=8.0, ctx=131072),
        meta(2048, 16, 32, 8, multiple_of=256, ffn_dim_multiplier=1.5, **S),
    ),
    "llama3.2-3b": (
        hf_config(3072, 28, 24, 8, 128256, 8192, **R32),
        meta(3072, 28, 24, 8, multiple_of=256, ffn_dim_multiplier=1.0, **S),
    ),
}


@pytest.mark.parametrize("release", sorted(RELEASES))
@pytest.mark.parametrize("style", ["4.x", "5.x"])
def test_published_config_gives_meta_params(release, style):
    config, expected = RELEASES[release]
    target = target_from_hf_config(config if style == "4.x" else as_v5(config))
    assert target.params == expected
    assert (
        meta_ffn_width(target.dim, target.params["multiple_of"], target.params.get("ffn_dim_multiplier"))
        == (config["intermediate_size"])
    )
    assert target.embedding_split_dim == (0 if "vocab_size" in expected and expected["vocab_size"] > 0 else 1)


@pytest.mark.parametrize("width", [11000, 11008, 12345, 14336, 4097, 28672])
def test_any_ffn_width_is_reproduced_exactly(width):
    target = target_from_hf_config(hf_config(4096, 2, 32, 8, 128256, width, theta=500000.0))
    assert meta_ffn_width(4096, target.params["multiple_of"], target.params.get("ffn_dim_multiplier")) == width


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_bias": True}, "sets attention_bias; Meta's Llama has no bias terms"),
        ({"mlp_bias": True}, "sets mlp_bias; Meta's Llama has no bias terms"),
        ({"hidden_act": "gelu"}, "uses activation 'gelu'; Meta's Llama uses SiLU only."),
        ({"head_dim": 64}, "has head_dim 64 with hidden_size 4096 and 32 heads"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "describes model_type 'mistral'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "uses rope scaling 'linear'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "uses rope scaling 'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 16.0, **_LLAMA3_ROPE}}, "llama3 rope scaling factor 16"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, **_LLAMA3_ROPE, "high_freq_factor": 2.0}},
            "llama3 rope scaling with high_freq_factor 2.0",
        ),
    ],
)
def test_configs_meta_cannot_express_are_refused(change, message):
    config = {**hf_config(4096, 32, 32, 8, 128256, 14336, theta=500000.0), **change}
    with pytest.raises(UnsupportedError) as err:
        target_from_hf_config(config, where="m/config.json")
    assert str(err.value).startswith("m/config.json")
    assert message in str(err.value)
