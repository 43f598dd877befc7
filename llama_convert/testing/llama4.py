"""Llama 4 release shapes: the params.json of Scout and Maverick as Meta ships them, for tests and benchmarks
(which shrink them); never used by ``convert``."""

from __future__ import annotations

VISION = {
    "image_size": {"height": 336, "width": 336},
    "patch_size": {"height": 14, "width": 14},
    "dim": 1408,
    "n_layers": 34,
    "n_heads": 16,
    "mlp_ratio": 4.0,
    "output_dim": 4096,
    "pixel_shuffle_ratio": 0.5,
}
SCOUT_PARAMS = {
    "dim": 5120,
    "n_layers": 48,
    "n_heads": 40,
    "n_kv_heads": 8,
    "vocab_size": 202048,
    "multiple_of": 2048,
    "ffn_dim_multiplier": 1.2,
    "ffn_exp": 4.0,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
    "nope_layer_interval": 4,
    "use_qk_norm": True,
    "attention_chunk_size": 8192,
    "attn_temperature_tuning": True,
    "floor_scale": 8192,
    "attn_scale": 0.1,
    "moe_args": {
        "num_experts": 16,
        "capacity_factor": 1.0,
        "auto_scale_F": True,
        "top_k": 1,
        "interleave_moe_layer_step": 1,
    },
    "vision_args": VISION,
}
MAVERICK_PARAMS = {
    **SCOUT_PARAMS,
    "use_scaled_rope": False,
    "use_qk_norm": False,
    "moe_args": {**SCOUT_PARAMS["moe_args"], "num_experts": 128, "interleave_moe_layer_step": 2},
}
