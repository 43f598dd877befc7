"""Llama 3.1 405B FP8 (Meta's layout, 405B-shaped MP8 at tiny widths): converted as the bf16 model it is.

The FP8 fixture is made from a bf16 checkpoint with fbgemm's row-wise rule; its twin holds the exact
dequantized bf16 values (``tests/fp8_fixtures.py``). References: transformers 4.47.1's official converter
on the twin, Meta's reference model on the twin, and our (llama.cpp-checked) bf16 route on the twin.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_logits_close, hf_logits, make_checkpoint, meta_reference_logits, tiny
from fp8_fixtures import fbgemm_quantize, make_fp8_llama3
from safetensors.torch import load_file

from llama_convert import convert
from llama_convert.dtypes import e4m3_to_f32, f32_to_e4m3
from llama_convert.execute import dequantize_rows

BASELINE_PYTHON = os.environ.get("LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON")
NAME = "Llama-3.1-405B-Instruct"  # as Meta's FP8 download is named: the folder says nothing about FP8


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fp8")
    bf16 = make_checkpoint(root, f"bf16/{NAME}", tiny("llama3.1-405b-mp8", head_dim=2, n_layers=4))
    fp8, twin = root / "fp8" / NAME, root / "twin" / NAME
    make_fp8_llama3(bf16, fp8, twin)
    return fp8, twin


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
    )


def test_e4m3_codec_is_torchs():
    every = torch.arange(256, dtype=torch.uint8)
    assert np.array_equal(e4m3_to_f32(every.numpy()), every.view(torch.float8_e4m3fn).float().numpy(), equal_nan=True)
    values = torch.cat([torch.randn(100_000) * 50, every.view(torch.float8_e4m3fn).float()[:127] * 1.0625]).clamp(
        -448, 448
    )
    values = values[~values.isnan()]
    assert np.array_equal(f32_to_e4m3(values.numpy()), values.to(torch.float8_e4m3fn).view(torch.uint8).numpy())


def test_dequantization_is_q_times_scale_rounded_once():
    w = torch.randn(64, 48, dtype=torch.bfloat16)
    q, scale = fbgemm_quantize(w)
    ours = dequantize_rows(q.view(torch.uint8).numpy(), scale.numpy(), 0)
    assert np.array_equal(ours, (q.float() * scale[:, None]).to(torch.bfloat16).view(torch.uint16).numpy())
    assert np.array_equal(dequantize_rows(q.view(torch.uint8).numpy()[8:20], scale.numpy(), 8), ours[8:20])
    nan = q.clone().view(torch.uint8)
    nan[3, 5], nan[4, 6] = 0x7F, 0xFF  # e4m3's NaN codes stay NaN (the NaN bit pattern is not compared)
    out = dequantize_rows(nan.numpy(), scale.numpy(), 0)
    assert (out[3, 5] & 0x7FFF) > 0x7F80 and (out[4, 6] & 0x7FFF) > 0x7F80
    keep = np.ones(out.shape, bool)
    keep[3, 5] = keep[4, 6] = False
    assert np.array_equal(out[keep], ours[keep])


def test_fp8_is_recognised_from_content(fp8_pair):
    from llama_convert.detect import detect

    fp8, twin = fp8_pair
    spec = detect(fp8)
    weights = next(e for e in spec.evidence if e.topic == "weights")
    assert "FP8" in weights.decision and "fp8_scales_N.pt" in weights.because
    assert spec.source_dtype.torch_name == "bfloat16" and spec.fp8 is not None
    assert detect(twin).fp8 is None and spec.name == detect(twin).name


@pytest.mark.slow
def test_fp8_to_hf_is_the_twin_and_meta_reference_logits(fp8_pair, tmp_path, model_parallel):
    fp8, twin = fp8_pair
    convert(fp8, tmp_path / "ours")
    convert(twin, tmp_path / "twin")
    ours, theirs = _tensors(tmp_path / "ours"), _tensors(tmp_path / "twin")
    assert ours.keys() == theirs.keys()
    assert all(_same_bytes(ours[k], theirs[k]) for k in ours)
    tokens = np.random.default_rng(0).integers(0, 128000, size=(2, 7))
    reference = meta_reference_logits(twin, tokens, embed_split=0)
    assert_logits_close(hf_logits(tmp_path / "ours", tokens), reference)


@pytest.mark.slow
@pytest.mark.skipif(BASELINE_PYTHON is None, reason="LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON is not set")
def test_fp8_to_hf_equals_the_official_converter_on_the_twin(fp8_pair, tmp_path):
    fp8, twin = fp8_pair
    convert(fp8, tmp_path / "ours")
    argv = [BASELINE_PYTHON, "-m", "transformers.models.llama.convert_llama_weights_to_hf", "--input_dir", str(twin)]
    argv += ["--output_dir", str(tmp_path / "official"), "--llama_version", "3.1", "--num_shards", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=600)
    ours, official = _tensors(tmp_path / "ours"), _tensors(tmp_path / "official")
    assert ours.keys() == official.keys()
    different = [k for k in ours if not _same_bytes(ours[k], official[k])]
    assert not different


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_fp8_to_gguf_is_the_twins_gguf(fp8_pair, tmp_path, outtype):
    """GGUF has no e4m3: the FP8 source goes through its exact dequantization, so the file is byte for byte
    the twin's (whose bf16 GGUF route is checked against llama.cpp's converter elsewhere)."""
    fp8, twin = fp8_pair
    convert(fp8, tmp_path / "fp8.gguf", outtype=outtype)
    convert(twin, tmp_path / "twin.gguf", outtype=outtype)
    assert (tmp_path / "fp8.gguf").read_bytes() == (tmp_path / "twin.gguf").read_bytes()


@pytest.mark.parametrize("mp", [8, 1])
def test_fp8_back_to_meta_bf16_is_the_twin(fp8_pair, tmp_path, mp):
    fp8, twin = fp8_pair
    convert(fp8, tmp_path / "meta", to="meta", mp=mp)
    convert(twin, tmp_path / "twin", to="meta", mp=mp)
    for a, b in zip(sorted((tmp_path / "meta").glob("*.pth")), sorted((tmp_path / "twin").glob("*.pth")), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "meta").glob("fp8_scales_*"))
    if mp == 8:  # same degree: the twin's own shards, bit for bit
        for rank in range(8):
            ours = torch.load(tmp_path / "meta" / f"consolidated.{rank:02d}.pth", weights_only=True)
            theirs = torch.load(twin / f"consolidated.{rank:02d}.pth", weights_only=True)
            assert all(_same_bytes(ours[k], theirs[k]) for k in theirs)


def test_keep_fp8_is_an_fbgemm_fp8_folder(fp8_pair, tmp_path):
    """gate/up: Meta's bytes and scales; down: requantized per full row with fbgemm's rule (torch's own
    quantizer on the twin gives the same bytes), within one e4m3 step; everything else = the twin's."""
    from transformers import FbgemmFp8Config

    fp8, twin = fp8_pair
    result = convert(fp8, tmp_path / "keep", keep_fp8=True)
    convert(twin, tmp_path / "twin")
    ours, theirs = _tensors(tmp_path / "keep"), _tensors(tmp_path / "twin")
    shards = [torch.load(fp8 / f"consolidated.{r:02d}.pth", weights_only=True) for r in range(8)]
    scales = [torch.load(fp8 / f"fp8_scales_{r}.pt", weights_only=True) for r in range(8)]
    quantized = {f"model.layers.{i}.mlp.{p}.weight" for i in (1, 2) for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(ours) == set(theirs) | {n + "_scale" for n in quantized}
    for name in set(theirs) - quantized:
        assert _same_bytes(ours[name], theirs[name]), name
    worst = 0.0
    for i in (1, 2):
        for meta, hf in (("w1", "gate_proj"), ("w3", "up_proj")):
            weight, scale = ours[f"model.layers.{i}.mlp.{hf}.weight"], ours[f"model.layers.{i}.mlp.{hf}.weight_scale"]
            meta_q = torch.cat([s[f"layers.{i}.feed_forward.{meta}.weight"] for s in shards], dim=0)
            meta_s = torch.cat([s[f"{i}_feed_forward.{meta}_{r}"] for r, s in enumerate(scales)])
            assert weight.dtype == torch.float8_e4m3fn and _same_bytes(weight, meta_q)
            assert scale.dtype == torch.float32 and scale.shape == (meta_q.shape[0], 1)
            assert torch.equal(scale[:, 0], meta_s)
        name = f"model.layers.{i}.mlp.down_proj.weight"
        exact = theirs[name].float()  # the twin: Meta's exact dequantized values
        q_ref, s_ref = fbgemm_quantize(exact)
        assert _same_bytes(ours[name], q_ref) and torch.equal(ours[name + "_scale"][:, 0], s_ref)
        step = ours[name].float().abs().clamp(min=2.0**-6) * 2.0**-3 * ours[name + "_scale"]  # one e4m3 step
        deq = ours[name].float() * ours[name + "_scale"]
        assert bool(((deq - exact).abs() <= step).all())
        worst = max(worst, float(((deq - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)).max()))
    config = (tmp_path / "keep" / "config.json").read_text()
    qc = __import__("json").loads(config)["quantization_config"]
    assert qc["quant_method"] == "fbgemm_fp8" and qc["activation_scale_ub"] == 1200.0
    skipped = qc["modules_to_not_convert"]
    assert skipped[-1] == "lm_head"
    assert all(f"model.layers.{i}.self_attn.{p}_proj" in skipped for i in range(4) for p in "qkvo")
    assert {f"model.layers.{i}.mlp.{p}" for i in (0, 3) for p in ("gate_proj", "up_proj", "down_proj")} <= set(skipped)
    assert not any(".mlp." in s and s.split(".")[2] in ("1", "2") for s in skipped)
    assert FbgemmFp8Config(**{k: v for k, v in qc.items() if k != "quant_method"}).activation_scale_ub == 1200.0
    (note,) = [n for n in result.notes if "requantized" in n]
    assert f"largest relative change {worst:.3g}" in note


def test_keep_fp8_is_refused_elsewhere(fp8_pair, tmp_path):
    from llama_convert.errors import UnsupportedError

    fp8, twin = fp8_pair
    with pytest.raises(UnsupportedError, match="GGUF has no e4m3 type"):
        convert(fp8, tmp_path / "x.gguf", keep_fp8=True)
    with pytest.raises(UnsupportedError, match="stores no float8 weights"):
        convert(twin, tmp_path / "x", keep_fp8=True)
    assert not list(tmp_path.iterdir())
