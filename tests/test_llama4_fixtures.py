"""The Llama 4 test checkpoints are what Meta's loader expects: its resharder and load hooks turn
them back into the random model they were made from (same logits, bit for bit)."""

from __future__ import annotations

import llama4_fixtures as fx
import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def _model_parallel(tmp_path_factory) -> None:
    fx.init_model_parallel(tmp_path_factory.mktemp("gloo"))
    fx.cpu_threads()


@pytest.mark.parametrize("kind", ["scout", "maverick"])
def test_meta_loader_reproduces_the_random_model(tmp_path, kind):
    params = fx.PARAMS[kind]
    model = fx.build_reference(params)
    fx.randomize(model, seed=3)
    tokens = fx.sample_tokens(10)
    expected = fx.reference_logits(model, tokens)
    folder = fx.write_checkpoint(tmp_path / kind, params, fx.shipped_shards(model, params, 2), extra_state=True)
    loaded = fx.reference_from_folder(folder)
    np.testing.assert_array_equal(fx.reference_logits(loaded, tokens), expected)


def test_shipped_layout_names_and_shapes(tmp_path):
    import torch

    params = fx.PARAMS["maverick"]
    model = fx.build_reference(params)
    fx.randomize(model, seed=0)
    shards = fx.shipped_shards(model, params, 2)
    d, e, hd = params["dim"], params["moe_args"]["num_experts"], params["dim"] // params["n_heads"]
    s = shards[1]
    assert s["tok_embeddings.weight"].shape == (fx.VOCAB // 2, d)
    assert s["layers.0.attention.wqkv.weight"].shape == ((4 + 2 * 2) * hd // 2, d)
    assert s["layers.0.feed_forward.mlp.fc1_weight"].shape == (2 * 224 // 2, d)  # dense layer (even i)
    assert s["layers.1.feed_forward.experts.moe_w_in_eD_F"].shape == (e * d, 128 // 2)  # MoE layer (odd i)
    assert s["layers.1.feed_forward.experts.moe_w_out_eF_D"].shape == (e * 128 // 2, d)
    assert s["layers.1.feed_forward.router_DE"].shape == (d, e)
    assert s["vision_projection.weight"].shape == (d // 2, 48)
    assert all(t.dtype == torch.bfloat16 for t in s.values())
    assert "layers.0.feed_forward.router_DE" not in s and "layers.1.feed_forward.mlp.fc1_weight" not in s
