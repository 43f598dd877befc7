"""The Llama 4 tensor table covers exactly what each side has: every parameter of transformers'
Llama4ForConditionalGeneration (built from our config) with its shape, and every tensor of
the shipped shards (made with Meta's model) with its per-shard shape, or is a known drop."""

from __future__ import annotations

from pathlib import Path

import llama4_fixtures as fx
import pytest

from llama_convert.dtypes import DTYPES
from llama_convert.families.llama4.hf_config import config_json
from llama_convert.families.llama4.layout import DROPPED, shard_shapes, tensor_table
from llama_convert.families.llama4.params import parse_llama4_params


@pytest.fixture(scope="module", autouse=True)
def _model_parallel(tmp_path_factory) -> None:
    fx.init_model_parallel(tmp_path_factory.mktemp("gloo"))


@pytest.mark.parametrize("kind", ["scout", "maverick"])
def test_table_matches_transformers_parameters(kind):
    import torch
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    p = parse_llama4_params(fx.PARAMS[kind], Path("params.json"))
    config = Llama4Config(**config_json(p, DTYPES["bfloat16"], vocab=fx.VOCAB, instruct=True))
    with torch.device("meta"):
        model = Llama4ForConditionalGeneration(config)
    hf = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    ours = {t.name: t.shape for t in tensor_table(p, 2, fx.VOCAB)}
    assert ours == hf


@pytest.mark.parametrize("kind", ["scout", "maverick"])
def test_table_matches_shipped_shards(kind):
    params = fx.PARAMS[kind]
    model = fx.build_reference(params)
    p = parse_llama4_params(params, Path("params.json"))
    for mp in (1, 2):
        shard = fx.shipped_shards(model, params, mp)[0]
        expected = shard_shapes(tensor_table(p, mp, fx.VOCAB))
        kept = {k: tuple(v.shape) for k, v in shard.items() if not DROPPED.match(k)}
        assert kept == expected
        assert all(DROPPED.match(k) for k in set(shard) - set(kept))
        assert len(shard) > len(kept)  # the fixture carries expert statistics to drop


def test_text_only_table_matches_llama4_for_causal_lm():
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    params = {k: v for k, v in fx.PARAMS["maverick"].items() if k != "vision_args"}
    p = parse_llama4_params(params, Path("params.json"))
    config = config_json(p, DTYPES["bfloat16"], vocab=fx.VOCAB, instruct=False)
    assert config["architectures"] == ["Llama4ForCausalLM"]
    with torch.device("meta"):
        model = Llama4ForCausalLM(Llama4TextConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    hf = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert {t.name: t.shape for t in tensor_table(p, 1, fx.VOCAB)} == hf
