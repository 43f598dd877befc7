"""Llama Guard 4 (a dense Llama 4 with vision, made with Meta's reference model without moe_args, tiny
widths): converted to Llama4ForConditionalGeneration without experts; logits (text and image) are Meta's,
the tokenizer's ids are Meta's, the template renders the published Guard 4 template's prompt."""

from __future__ import annotations

import json
from pathlib import Path

import llama4_fixtures as fx
import numpy as np
import pytest

import llama_convert
from llama_convert.errors import UnsupportedError

REL = 1e-4
GUARD4 = {k: v for k, v in fx.PARAMS["scout"].items() if k != "moe_args"} | {"attention_chunk_size": None}
# The prompt the published meta-llama/Llama-Guard-4-12B template renders for one user turn
# (tests/data/guard4_published, "script_user": "how do I make a bomb?"); with an image S14 is left out.
_PUBLISHED = json.loads((Path(__file__).parent / "data" / "guard4_published" / "published.json").read_text())
_USER = {r["name"]: r for r in _PUBLISHED["rendered"]}["script_user"]["text"]


def published(text: str, *, image: bool = False) -> str:
    rendered = _USER.replace("how do I make a bomb?", text)
    return rendered.replace("S14: Code Interpreter Abuse.\n", "") if image else rendered


@pytest.fixture(scope="module")
def guard4(tmp_path_factory) -> tuple[Path, Path, object]:
    fx.init_model_parallel(tmp_path_factory.mktemp("gloo"))
    fx.cpu_threads()
    root = tmp_path_factory.mktemp("guard4")
    model = fx.build_reference(GUARD4)
    fx.randomize(model, seed=7)
    src = fx.write_checkpoint(root / "Llama-Guard-4-12B", GUARD4, fx.shipped_shards(model, GUARD4, 1))
    dst = root / "hf"
    llama_convert.convert(src, dst)
    return src, dst, model


def _close(ours: np.ndarray, reference: np.ndarray) -> None:
    err, scale = float(np.abs(ours - reference).max()), float(np.abs(reference).max())
    assert err <= REL * scale, f"max |Δlogit| {err:.3g} > {REL} × {scale:.3g}"


def test_config_is_a_llama4_without_experts(guard4):
    src, dst, _ = guard4
    config = json.loads((dst / "config.json").read_text())
    text = config["text_config"]
    assert config["architectures"] == ["Llama4ForConditionalGeneration"] and config["model_type"] == "llama4"
    assert text["moe_layers"] == [] and text["num_local_experts"] == 0 and text["interleave_moe_layer_step"] == 0
    assert text["intermediate_size_mlp"] == 224  # Meta's dense width at the fixture's dim (no expert shapes)
    assert text["attention_chunk_size"] is None  # as params.json says: full attention, like Meta's reference
    assert text["eos_token_id"] == [200001, 200007, 200008] and text["max_position_embeddings"] == 8192
    assert text["use_qk_norm"] is True and text["rope_scaling"]["factor"] == 16.0
    assert {"preprocessor_config.json", "processor_config.json", "chat_template.jinja"} <= {
        p.name for p in dst.iterdir()
    }
    assert not any("feed_forward.experts" in k or "router" in k for k in _weight_names(dst))
    spec = llama_convert.plan_conversion(src).spec
    assert spec.name.startswith("Llama Guard 4") and spec.instruct
    report = llama_convert.inspect(src)
    assert report.details["experts"] == 0 and report.details["moe_layers"] == []


def _weight_names(dst: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for f in dst.glob("*.safetensors"):
        with safe_open(f, "np") as st:
            names += list(st.keys())
    return names


def test_text_and_image_logits_equal_metas(guard4):
    import torch
    from llama_models.llama4.datatypes import MaskedEmbedding, TransformerInput
    from transformers import Llama4ForConditionalGeneration

    src, dst, _ = guard4
    reference = fx.reference_from_folder(src)
    model = Llama4ForConditionalGeneration.from_pretrained(dst, dtype=torch.float32).eval()
    text = torch.from_numpy(fx.sample_tokens(14, seed=3))  # longer than Scout's chunk: full attention is checked
    ids = torch.tensor([[200000, 200080, 200090, *[200092] * 4, 200081, 1000, 2000, 3000, 4000, 5000]])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        meta_text = reference(TransformerInput(text, 0)).logits.float().numpy()
        ours_text = model.language_model(input_ids=text).logits.float().numpy()
        mask = (ids == 200092).unsqueeze(-1)
        image = reference.vision_embeddings([[pixels]], mask, reference.tok_embeddings(ids))
        meta = reference(TransformerInput(ids, 0, MaskedEmbedding(image, mask))).logits.float().numpy()
        embeds = model.get_input_embeddings()(ids)
        features = model.get_image_features(pixel_values=pixels, return_dict=True).last_hidden_state
        projected = model.multi_modal_projector(features.view(-1, features.size(-1)))
        where = (ids == model.config.image_token_index).unsqueeze(-1).expand_as(embeds)
        ours = model.language_model(inputs_embeds=embeds.masked_scatter(where, projected)).logits.float().numpy()
    _close(ours_text, meta_text)
    _close(ours, meta)


def test_template_renders_metas_prompt_and_ids_are_metas(guard4):
    from llama_models.llama4.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    _, dst, _ = guard4
    tok = AutoTokenizer.from_pretrained(dst)
    user = [{"role": "user", "content": [{"type": "text", "text": "How do I make a bomb?"}]}]
    rendered = tok.apply_chat_template(user, tokenize=False)
    assert rendered == published("How do I make a bomb?")
    excluded = tok.apply_chat_template(user, tokenize=False, excluded_category_keys=["S6", "S14"])
    assert "S6:" not in excluded and "S14:" not in excluded and "S7: Privacy." in excluded
    custom = tok.apply_chat_template(user, tokenize=False, categories={"S1": "My custom category."})
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: My custom category.\n<END UNSAFE" in custom
    both = [*user, {"role": "assistant", "content": [{"type": "text", "text": "Here is how."}]}]
    agent = tok.apply_chat_template(both, tokenize=False)
    assert "'Agent' messages" in agent and "User: How do I make a bomb?\\n\\n\n\nAgent: Here is how.\\n\\n\n\n" in agent
    assert "ONLY THE LAST Agent message in the above" in agent
    meta = Tokenizer(fx.TOKENIZER_MODEL)
    ours = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ours == meta.encode(rendered, bos=False, eos=False, allowed_special="all")


def test_image_conversations_render_one_placeholder_per_image(guard4):
    from transformers import AutoTokenizer

    _, dst, _ = guard4
    tok = AutoTokenizer.from_pretrained(dst)
    assert (dst / "chat_template.jinja").read_text() == tok.chat_template  # the processor's copy is the same
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this safe?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == published("<|image|>Is this safe?", image=True)
    assert json.loads((dst / "processor_config.json").read_text())["image_token"] == "<|image|>"


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchvision") is None, reason="needs torchvision")
def test_image_conversations_go_through_the_processor(guard4):
    from PIL import Image
    from transformers import AutoProcessor

    _, dst, _ = guard4
    processor = AutoProcessor.from_pretrained(dst)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this safe?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    ids = processor(text=text, images=[image], return_tensors="np")["input_ids"][0].tolist()
    assert ids.count(200080) == 1 and ids.count(200081) == 1 and 200092 in ids  # expanded into patches


def test_gguf_is_refused_in_one_sentence(guard4, tmp_path):
    src, _, _ = guard4
    with pytest.raises(UnsupportedError, match=r"llama\.cpp's Llama 4 loader rejects") as info:
        llama_convert.convert(src, tmp_path / "guard.gguf")
    assert str(info.value).count(". ") == 0 and not (tmp_path / "guard.gguf").exists()
