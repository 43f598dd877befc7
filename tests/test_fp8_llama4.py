"""Llama 4 Maverick FP8 (Meta's layout, MP2, tiny widths, made with Meta's reference model): the routed
experts of the MoE layers between the first and the last quantized as Meta's quantize script does; the
dequantized conversion is the bf16 twin's, bit for bit, and its logits are Meta's reference on the twin."""

from __future__ import annotations

from pathlib import Path

import llama4_fixtures as fx
import pytest
import torch
from fp8_fixtures import make_fp8_llama4
from safetensors.torch import load_file

import llama_convert
from llama_convert.errors import UnsupportedError


@pytest.fixture(scope="module")
def maverick_fp8(tmp_path_factory) -> tuple[Path, Path]:
    fx.init_model_parallel(tmp_path_factory.mktemp("gloo"))
    fx.cpu_threads()
    root = tmp_path_factory.mktemp("maverick")
    params = fx.PARAMS["maverick"]
    bf16 = fx.make_checkpoint(root / "bf16" / "Llama-4-Maverick-17B-128E-Instruct", "maverick", mp=2, seed=3)
    moe = [
        i for i in range(1, params["n_layers"] - 1) if (i + 1) % params["moe_args"]["interleave_moe_layer_step"] == 0
    ]
    assert moe == [1]
    fp8, twin = root / "fp8" / bf16.name, root / "twin" / bf16.name
    make_fp8_llama4(bf16, fp8, twin, moe)
    return fp8, twin


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_scales_are_per_expert_and_column(maverick_fp8):
    fp8, _ = maverick_fp8
    scales = torch.load(fp8 / "fp8_scales_1.pt", weights_only=True)
    p = fx.PARAMS["maverick"]
    e, d = p["moe_args"]["num_experts"], p["dim"]
    shard = torch.load(fp8 / "consolidated.01.pth", weights_only=True)
    f_local = shard["layers.1.feed_forward.experts.moe_w_in_eD_F"].shape[1]
    assert scales["layers.1.feed_forward.experts.w1"].shape == (e, f_local)
    assert scales["layers.1.feed_forward.experts.w2"].shape == (e, d)
    assert shard["layers.1.feed_forward.experts.moe_w_out_eF_D"].dtype == torch.float8_e4m3fn
    assert shard["layers.1.feed_forward.w_in_shared_FD.weight"].dtype == torch.bfloat16  # shared expert: bf16


def test_dequantized_maverick_is_the_twins_conversion(maverick_fp8, tmp_path):
    fp8, twin = maverick_fp8
    result = llama_convert.convert(fp8, tmp_path / "ours")
    llama_convert.convert(twin, tmp_path / "twin")
    assert any(e.topic == "weights" and "FP8" in e.decision for e in result.spec.evidence)
    ours, theirs = _tensors(tmp_path / "ours"), _tensors(tmp_path / "twin")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(
            ours[name].view(-1).view(torch.uint8), theirs[name].view(-1).view(torch.uint8)
        ), name


def test_dequantized_maverick_logits_are_metas_on_the_twin(maverick_fp8, tmp_path):
    from test_llama4_convert import _close, _hf_text_logits

    fp8, twin = maverick_fp8
    llama_convert.convert(fp8, tmp_path / "ours")
    tokens = fx.sample_tokens(9)
    reference = fx.reference_logits(fx.reference_from_folder(twin), tokens)
    _close(_hf_text_logits(tmp_path / "ours", tokens), reference)


def test_keep_fp8_is_refused_for_llama4(maverick_fp8, tmp_path):
    fp8, _ = maverick_fp8
    with pytest.raises(UnsupportedError, match="--keep-fp8 is not offered for Llama 4"):
        llama_convert.convert(fp8, tmp_path / "out", keep_fp8=True)
    assert not (tmp_path / "out").exists()
