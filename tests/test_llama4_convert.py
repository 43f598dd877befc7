"""End to end: tiny Llama 4 checkpoints made with Meta's reference model, converted with no flags,
loaded by transformers' Llama4ForConditionalGeneration; fp32 logits equal Meta's on text and on
image + text.

Tolerance: both sides compute in fp32 on bit-identical weights (bf16 upcast), so the logits differ only
by summation order: measured ≤ 1e-6 × max |logit|. The bound is 1e-4 relative, the project's bar. Top-1
routing with random routers has score gaps ≫ 1e-6, so no token changes expert between the two sides;
a wrong expert, axis or rotary layout moves the logits by order 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama4_fixtures as fx
import numpy as np
import pytest

import llama_convert
from llama_convert.errors import InputError, ShapeMismatchError, UnsupportedError

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

REL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _model_parallel(tmp_path_factory) -> None:
    fx.init_model_parallel(tmp_path_factory.mktemp("gloo"))
    fx.cpu_threads()


@pytest.fixture(scope="module")
def models():
    return fx.reference_models(first_seed=10)


def _write(root: Path, name: str, kind: str, mp: int, models, **options) -> Path:
    params = fx.PARAMS[kind]
    return fx.write_checkpoint(root / name, params, fx.shipped_shards(models[kind], params, mp), **options)


def _hf_text_logits(dst: Path, tokens: np.ndarray) -> np.ndarray:
    import torch
    from transformers import Llama4ForConditionalGeneration

    model = Llama4ForConditionalGeneration.from_pretrained(dst, dtype=torch.float32).eval()
    with torch.inference_mode():  # the language model directly: 5.24's full forward fails on return_dict
        return model.language_model(input_ids=torch.from_numpy(tokens)).logits.float().numpy()


def _close(ours: np.ndarray, reference: np.ndarray) -> None:
    err, scale = float(np.abs(ours - reference).max()), float(np.abs(reference).max())
    assert err <= REL * scale, f"max |Δlogit| {err:.3g} > {REL} × {scale:.3g}"


@pytest.mark.parametrize(("kind", "mp"), [("scout", 1), ("maverick", 1), ("maverick", 2)])
def test_text_logits_equal_metas(tmp_path, models, kind, mp):
    src = _write(tmp_path, f"Llama-4-{kind.title()}-tiny", kind, mp, models)
    result = llama_convert.convert(src, tmp_path / "hf", tokenizer=False)  # tokenizer: tested on its own
    assert result.spec.family == "llama4" and result.spec.variant == kind.title() and result.spec.mp == mp
    assert not result.spec.instruct
    tokens = fx.sample_tokens(10, seed=mp)
    _close(_hf_text_logits(tmp_path / "hf", tokens), fx.reference_logits(fx.reference_from_folder(src), tokens))


def test_scout_mp2_instruct_zero_flags_text_and_image(tmp_path, models):
    import torch
    from llama_models.llama4.datatypes import MaskedEmbedding, TransformerInput
    from transformers import AutoTokenizer, Llama4ForConditionalGeneration

    src = _write(tmp_path, "Llama-4-Scout-tiny-Instruct", "scout", 2, models, extra_state=True)
    dst = tmp_path / "hf"
    result = llama_convert.convert(src, dst)
    assert result.spec.instruct and result.spec.name.startswith("Llama 4 Scout")
    assert {p.name for p in dst.iterdir()} >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
    }
    config = json.loads((dst / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] == 10485760
    tok = AutoTokenizer.from_pretrained(dst)
    assert tok.eos_token == "<|eot|>" and tok.chat_template

    text = fx.sample_tokens(12, seed=5)
    reference = fx.reference_from_folder(src)
    _close(_hf_text_logits(dst, text), fx.reference_logits(reference, text))

    # image + text: <|image_start|><|image|> 4×<|patch|> <|image_end|> then text (56-pixel tile, patch 14,
    # pixel shuffle 0.5 → 4 patch tokens)
    ids = torch.tensor([[200000, 200080, 200090, *[200092] * 4, 200081, 1000, 2000, 3000]])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mask = (ids == 200092).unsqueeze(-1)
        image = reference.vision_embeddings([[pixels]], mask, reference.tok_embeddings(ids))
        meta = reference(TransformerInput(ids, 0, MaskedEmbedding(image, mask))).logits.float().numpy()
        text_only = reference(TransformerInput(ids, 0)).logits.float().numpy()
        model = Llama4ForConditionalGeneration.from_pretrained(dst, dtype=torch.float32).eval()
        # transformers' own forward, minus its return_dict bug: embed, encode, project, scatter, decode
        embeds = model.get_input_embeddings()(ids)
        features = model.get_image_features(pixel_values=pixels, return_dict=True).last_hidden_state
        projected = model.multi_modal_projector(features.view(-1, features.size(-1)))
        where = (ids == model.config.image_token_index).unsqueeze(-1).expand_as(embeds)
        ours = model.language_model(inputs_embeds=embeds.masked_scatter(where, projected)).logits.float().numpy()
    assert np.abs(text_only - meta).max() > 0.1 * np.abs(meta).max()  # the image matters
    _close(ours, meta)


def test_inspect_and_plan(tmp_path, models):
    src = _write(tmp_path, "Llama-4-Maverick-tiny-Instruct", "maverick", 2, models)
    plan = llama_convert.plan_conversion(src)
    names = {t.name for t in plan.tensors}
    assert "language_model.model.layers.1.feed_forward.experts.gate_up_proj" in names
    assert "language_model.model.layers.0.feed_forward.gate_proj.weight" in names
    assert not any("global_gate_stats" in t.source for t in plan.tensors)
    report = llama_convert.inspect(src)
    assert "Llama 4 Maverick" in report.summary


def test_refusals(tmp_path, models):
    src = _write(tmp_path, "Llama-4-Scout-q", "scout", 1, models, tokenizer=True)
    params = json.loads((src / "params.json").read_text())
    (src / "params.json").write_text(
        json.dumps({**params, "quantization_args": {"scheme": "int4_weight_int8_dynamic_activation"}})
    )
    with pytest.raises(UnsupportedError, match="quantized Llama 4"):
        llama_convert.plan_conversion(src)
    (src / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    with pytest.raises(ShapeMismatchError, match=r"holds layers\.3\..* but params\.json describes 3 layers"):
        llama_convert.plan_conversion(src)
    (src / "params.json").write_text(json.dumps({**params, "dim": 128}))
    with pytest.raises(ShapeMismatchError, match=r"but params\.json and 1 shard\(s\) imply"):
        llama_convert.plan_conversion(src)
    (src / "params.json").write_text(json.dumps(params))
    import importlib.resources

    llama3 = importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"
    (src / "tokenizer.model").write_bytes(llama3.read_bytes())
    with pytest.raises(InputError, match="is not Meta's Llama 4 tokenizer"):
        llama_convert.plan_conversion(src)


def test_fp8_shards_are_refused(tmp_path, models):
    import torch

    src = _write(tmp_path, "Llama-4-Maverick-tiny-Instruct-FP8", "maverick", 1, models)
    shard = torch.load(src / "consolidated.00.pth", weights_only=True)
    name = "layers.1.feed_forward.experts.moe_w_in_eD_F"
    shard[name] = shard[name].to(torch.float8_e4m3fn)
    torch.save(shard, src / "consolidated.00.pth")
    # one float8 expert tensor where Meta's FP8 release has three (and scale files): refused by name
    with pytest.raises(
        UnsupportedError,
        match=r"moe_w_out_eF_D is not float8, but Meta's FP8 release quantizes exactly the routed experts",
    ):
        llama_convert.plan_conversion(src)


def test_hub_snapshot_original_folder_is_instruct_by_repo_name(tmp_path, models):
    repo = tmp_path / "models--meta-llama--Llama-4-Scout-17B-16E-Instruct" / "snapshots" / "0123abcd"
    _write(repo, "original", "scout", 1, models)
    plan = llama_convert.plan_conversion(repo)
    assert plan.spec.family == "llama4" and plan.spec.instruct
    assert "Llama-4-Scout-17B-16E-Instruct" in plan.spec.instruct_reason
    # the snapshot's own config.json is evidence too: it must describe the same model
    config = {"model_type": "llama4", "text_config": {"hidden_size": 64, "num_hidden_layers": 4}}
    (repo / "config.json").write_text(json.dumps(config))
    assert llama_convert.plan_conversion(repo).spec.family == "llama4"
    config["text_config"]["num_hidden_layers"] = 48
    (repo / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config\.json says num_hidden_layers 48 but .* num_hidden_layers 4;"):
        llama_convert.plan_conversion(repo)


def test_extra_state_is_read_inertly_and_only_latin1_bytes_are_rebuilt(tmp_path):
    import pickle

    from llama_convert.formats.meta.torch_zip import _SafeUnpickler

    def unpickle(data: bytes):
        return _SafeUnpickler(__import__("io").BytesIO(data), tmp_path / "x.pth", {}).load()

    # what torch.save's pickler (protocol 2) writes for TransformerEngine's extra state
    ok = pickle.dumps({"a._extra_state": __import__("io").BytesIO(b"\x00state")}, protocol=2)
    assert b"_codecs" in ok and b"BytesIO" in ok
    assert list(unpickle(ok)) == ["a._extra_state"]
    bad = ok.replace(b"latin1", b"rot_13")
    with pytest.raises(pickle.UnpicklingError, match="latin-1"):
        unpickle(bad)
