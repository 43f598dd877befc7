"""config.json and generation_config.json exactly as the published meta-llama repos have them."""

from __future__ import annotations

from typing import Any

from ...dtypes import DType
from .spec import LlamaSpec

__all__ = ["config_json", "generation_config_json"]


def _eos(spec: LlamaSpec, for_generation: bool) -> int | list[int]:
    release = spec.release
    if spec.guard is not None:
        ids = spec.guard.generation_eos
        return ids[0] if len(ids) == 1 else list(ids)
    if not spec.instruct:
        return release.eos_token_id
    ids = release.instruct_eos_token_ids if for_generation else release.instruct_config_eos
    if isinstance(ids, int):
        return ids
    return ids[0] if len(ids) == 1 else list(ids)


def config_json(spec: LlamaSpec, dtype: DType) -> dict[str, Any]:
    """The ``LlamaForCausalLM`` config of the converted model."""
    p, release = spec.params, spec.release
    rope_scaling = None
    if spec.rope_scaling_factor is not None:
        rope_scaling = {
            "factor": spec.rope_scaling_factor,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        }
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": release.bos_token_id,
        "eos_token_id": _eos(spec, for_generation=False),
    }
    if release.write_head_dim:
        config["head_dim"] = p.head_dim
    config.update(
        {
            "hidden_act": "silu",
            "hidden_size": p.dim,
            "initializer_range": 0.02,
            "intermediate_size": p.intermediate_size,
            "max_position_embeddings": spec.guard.context_length if spec.guard else release.context_length,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": p.n_heads,
            "num_hidden_layers": p.n_layers,
            "num_key_value_heads": spec.n_kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": p.norm_eps,
            "rope_scaling": rope_scaling,
            "rope_theta": float(spec.rope_theta),
            "tie_word_embeddings": spec.tie_embeddings,
            "torch_dtype": dtype.torch_name,
            "transformers_version": release.min_transformers,
            "use_cache": True,
            "vocab_size": spec.vocab_size,
        }
    )
    if spec.guard is not None:
        # Published departures from the shape the Guard model was fine-tuned from; the spec already holds the
        # rope factor (name and tensors decide it) and the tying (the tensors show it).
        config.update(
            {k: v for k, v in spec.guard.config_overrides.items() if k not in ("rope_scaling", "tie_word_embeddings")}
        )
    return config


def generation_config_json(spec: LlamaSpec) -> dict[str, Any]:
    """Sampling defaults Meta publishes: temperature 0.6, top_p 0.9; eos includes end-of-turn for chat."""
    config: dict[str, Any] = {
        "bos_token_id": spec.release.bos_token_id,
        "do_sample": True,
        "eos_token_id": _eos(spec, for_generation=True),
    }
    config.update(dict(spec.release.generation_extras))
    config.update({"temperature": 0.6, "top_p": 0.9})
    return config
