"""Llama 3.2 Vision end to end: checkpoints made by Meta's reference model, converted with zero flags,
run by transformers and compared with Meta's reference logits.

Text logits are compared in this process (transformers 5.x). Image logits, from the converted folder's
processor inputs, are compared with Meta's in ``test_mllama_inputs.py`` (they need transformers 4.47.1).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mllama_fixture as fx
import numpy as np
import pytest
from conftest import assert_logits_close

from llama_convert import convert
from llama_convert.detect import detect
from llama_convert.errors import InputError, UnsupportedError
from llama_convert.families.mllama import FAMILY as MLLAMA

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

TOKENS = np.array([[128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13, 128009]])


class Case:
    def __init__(self, model, shape: fx.VisionShape, src: Path, dst: Path) -> None:
        self.model, self.shape, self.src, self.dst = model, shape, src, dst


@pytest.fixture(scope="module", params=[fx.SHAPE_11B, fx.SHAPE_90B], ids=["11B-MP1", "90B-MP2"])
def case(request, model_parallel, tmp_path_factory) -> Case:
    shape: fx.VisionShape = request.param
    root = tmp_path_factory.mktemp(shape.name)
    model = fx.build_model(shape)
    if shape.mp == 1:  # a Hub snapshot: the one shard named consolidated.pth under original/
        src = fx.save_checkpoint(
            model, shape, root / "Llama-3.2-11B-Vision-Instruct" / "original", tokenizer=fx.default_tokenizer(),
            hub_single_name=True,
        )  # fmt: skip
    else:
        src = fx.save_checkpoint(model, shape, root / "Llama3.2-90B-Vision", tokenizer=fx.default_tokenizer())
    dst = root / "hf"
    convert(src.parent if shape.mp == 1 else src, dst)
    return Case(model, shape, src, dst)


def hf_model(folder: Path):
    import torch
    from transformers import MllamaForConditionalGeneration

    model, info = MllamaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def test_zero_flag_conversion_recognises_size_variant_and_layout(case):
    spec = detect(case.src)
    assert spec.family == "mllama" and spec.mp == case.shape.mp
    assert spec.parameter_count == sum(p.numel() for p in case.model.parameters())
    if case.shape.mp == 1:
        assert spec.variant == "instruct" and spec.name.endswith("Vision Instruct")
        assert spec.folder.shards[0].name == "consolidated.pth"
    else:
        assert spec.variant == "base" and spec.name.endswith("Vision")
    config = json.loads((case.dst / "config.json").read_text())
    p = case.shape
    assert config["text_config"]["num_hidden_layers"] == p.n_layers + p.n_cross
    assert config["text_config"]["cross_attention_layers"] == [3, 8]  # every 4th layer from the end, as 11B/90B
    assert config["vision_config"]["hidden_size"] == p.vision_width
    names = {f.name for f in case.dst.iterdir()}
    assert {"preprocessor_config.json", "tokenizer.json", "generation_config.json"} <= names
    assert ("chat_template.json" in names) == (spec.variant == "instruct")


def test_text_logits_equal_metas_reference(case):
    import torch

    reference = fx.meta_text_logits(case.model, TOKENS)
    model = hf_model(case.dst)
    with torch.inference_mode():
        ours = model(input_ids=torch.from_numpy(TOKENS)).logits.float().numpy()
    assert_logits_close(ours, reference)


def image_inputs(folder: Path) -> dict[str, np.ndarray]:
    """The converted folder's processor, called with its defaults, on one image (50 × 20 pixels: 1 tile high,
    2 wide) and a prompt: the chat template's (instruct) or, for a base model, the image first then text."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "MllamaProcessor"
    image = Image.fromarray((np.random.default_rng(1).random((20, 50, 3)) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in it?"}]}]
    if processor.tokenizer.chat_template is not None:
        prompt = processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        prompt = "<|image|>If I had to write a haiku for this one, it would be:"
    inputs = processor(images=image, text=prompt, return_tensors="np")
    return {k: np.asarray(v) for k, v in inputs.items()}


def test_autoprocessor_inputs_run_through_the_converted_model(case):
    import torch

    inputs = image_inputs(case.dst)
    assert inputs["input_ids"][0].tolist().count(128256) == 1
    assert inputs["input_ids"][0].tolist().count(128000) == 1
    assert inputs["aspect_ratio_ids"].tolist() == [[2]]  # 50 × 20 pixels: 1 tile high, 2 wide
    model = hf_model(case.dst)
    with torch.inference_mode():
        logits = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    assert logits.shape == (1, inputs["input_ids"].shape[1], 128256) and np.isfinite(logits).all()
    # the image matters: the same prompt without it gives other logits after the image token
    with torch.inference_mode():
        text_only = model(input_ids=torch.from_numpy(inputs["input_ids"])).logits.numpy()
    assert np.abs(logits[0, -1] - text_only[0, -1]).max() > 1e-2


def test_guard_3_vision_by_name_and_contradictions_refused(case, tmp_path):
    if case.shape.mp != 1:
        pytest.skip("one layout is enough")
    guard = tmp_path / "Llama-Guard-3-11B-Vision"
    guard.mkdir()
    for f in case.src.iterdir():
        (guard / f.name).symlink_to(f)
    spec = detect(guard)
    assert spec.variant == "guard" and spec.name == f"Llama Guard 3 {spec.size} Vision"
    files = MLLAMA.metadata_files(spec, spec.source_dtype)
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>" in json.loads(files["tokenizer_config.json"])["chat_template"]

    text_params = tmp_path / "no-vision-keys"
    text_params.mkdir()
    for f in case.src.iterdir():
        (text_params / f.name).symlink_to(f)
    params = {k: v for k, v in case.shape.params().items() if not k.startswith("vision_")}
    (text_params / "params.json").unlink()
    (text_params / "params.json").write_text(json.dumps(params))
    with pytest.raises(
        InputError, match=re.escape("has no vision keys but consolidated.pth has Llama 3.2 Vision tensor names")
    ):
        detect(text_params)

    fewer = tmp_path / "fewer-layers"
    fewer.mkdir()
    for f in case.src.iterdir():
        (fewer / f.name).symlink_to(f)
    (fewer / "params.json").unlink()
    (fewer / "params.json").write_text(json.dumps({**case.shape.params(), "n_layers": 6}))
    message = "holds text_model.layers.6.attention.wk.weight, which Llama 3.2 Vision does not have"
    with pytest.raises(UnsupportedError, match=re.escape(message)):
        detect(fewer)

    snapshot = tmp_path / "Llama-3.2-11B-Vision"  # a Hub snapshot whose config.json is another model's
    (snapshot / "original").mkdir(parents=True)
    for f in case.src.iterdir():
        (snapshot / "original" / f.name).symlink_to(f)
    config = json.loads((case.dst / "config.json").read_text())
    config["text_config"]["hidden_size"] = 4096
    (snapshot / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=re.escape("config.json says hidden_size 4096 but")):
        detect(snapshot)
