"""Llama Guard 4 against what is published for meta-llama/Llama-Guard-4-12B (tests/data/guard4_published):
our template renders the published template's prompts exactly, the ids through AutoTokenizer are Meta's
tokenizer's for them, and config values match the published ones where a source states them."""

from __future__ import annotations

import json
from pathlib import Path

import llama4_fixtures as fx
import pytest
from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer
from llama_models.sku_list import all_registered_models
from llama_models.sku_types import CoreModelId
from transformers import AutoTokenizer

from llama_convert.dtypes import BF16
from llama_convert.families.llama4 import guard4
from llama_convert.families.llama4.hf_config import config_json, context_length, generation_config_json
from llama_convert.families.llama4.params import parse_llama4_params
from llama_convert.families.llama4.tokenizer import llama4_tokenizer_files

PUBLISHED = json.loads((Path(__file__).parent / "data" / "guard4_published" / "published.json").read_text())
RENDERED = {r["name"]: r for r in PUBLISHED["rendered"]}
FACTS = {f["key"]: f["value"] for f in PUBLISHED["facts"]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The tokenizer folder a Guard 4 conversion writes (Meta's Llama 4 tokenizer.model, the Guard 4 template)."""
    folder = tmp_path_factory.mktemp("guard4-tok")
    template = guard4.chat_template()
    files = llama4_tokenizer_files(fx.TOKENIZER_MODEL, instruct=True, context_length=8192, template=template)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("name", list(RENDERED))
def test_renders_the_published_prompt(tok, name):
    r = RENDERED[name]
    ours = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=r["add_generation_prompt"])
    assert ours == r["text"]


@pytest.mark.parametrize("name", list(RENDERED))
def test_ids_are_metas_for_the_published_prompt(tok, name):
    r = RENDERED[name]
    ours = tok.apply_chat_template(
        r["messages"], tokenize=True, return_dict=True, add_generation_prompt=r["add_generation_prompt"]
    )["input_ids"]
    meta = MetaTokenizer(fx.TOKENIZER_MODEL).encode(r["text"], bos=False, eos=False, allowed_special="all")
    assert list(ours) == meta == tok(r["text"], add_special_tokens=False)["input_ids"]


def _user(text: str, images: int = 0) -> dict:
    return {"role": "user", "content": [*[{"type": "image"}] * images, {"type": "text", "text": text}]}


def test_excluded_categories_are_dropped(tok):
    """The blog's call: apply_chat_template(messages, excluded_category_keys=["S9", "S2", "S1"])."""
    r = RENDERED["script_user"]
    ours = tok.apply_chat_template(r["messages"], tokenize=False, excluded_category_keys=["S9", "S2", "S1"])
    expected = r["text"]
    for line in ("S1: Violent Crimes.\n", "S2: Non-Violent Crimes.\n", "S9: Indiscriminate Weapons.\n"):
        expected = expected.replace(line, "")
    assert ours == expected and "S3: Sex Crimes.\n" in ours


def test_images_drop_code_interpreter_abuse_and_exclusions_still_apply(tok):
    text = tok.apply_chat_template([_user("Is this safe?", images=2)], tokenize=False, excluded_category_keys=["S1"])
    assert "S14:" not in text and "S1:" not in text and "S13: Elections.\n<END UNSAFE" in text
    assert "User: <|image|><|image|>Is this safe?\\n\\n\n\n<END CONVERSATION>" in text


def test_image_in_an_earlier_turn_renders_in_that_turn(tok):
    both = [_user("Look.", images=1), {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]}]
    text = tok.apply_chat_template(both, tokenize=False)
    assert "User: <|image|>Look.\\n\\n\n\nAgent: Fine.\\n\\n\n\n<END CONVERSATION>" in text
    assert "'Agent' messages" in text and "ONLY THE LAST Agent message" in text


def test_string_content_renders_like_a_text_part(tok):
    r = RENDERED["script_user"]
    plain = [{"role": "user", "content": r["messages"][0]["content"][0]["text"]}]
    assert tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=True) == r["text"]


def test_roles_must_alternate(tok):
    with pytest.raises(Exception, match="must alternate"):
        tok.apply_chat_template([_user("a"), _user("b")], tokenize=False)


GUARD4_12B = {k: v for k, v in fx.PARAMS["scout"].items() if k != "moe_args"}


def test_generation_config_ids_are_published():
    gen = generation_config_json()
    assert gen["eos_token_id"] == FACTS["generation_config.eos_token_id"]
    assert gen["pad_token_id"] == FACTS["generation_config.pad_token_id"]


def test_config_values_are_published(tmp_path):
    """Values a source states for the published config: attention_chunk_size null, context = Meta's max_seq_len."""
    params_json = tmp_path / "params.json"
    params_json.write_text(json.dumps(GUARD4_12B | {"attention_chunk_size": None}))
    p = parse_llama4_params(json.loads(params_json.read_text()), params_json)
    text = config_json(p, BF16, vocab=202048, instruct=True)["text_config"]
    assert text["attention_chunk_size"] is FACTS["text_config.attention_chunk_size"] is None
    assert text["eos_token_id"] == FACTS["generation_config.eos_token_id"]
    assert text["pad_token_id"] == FACTS["generation_config.pad_token_id"]
    (meta,) = [m for m in all_registered_models() if m.core_model_id == CoreModelId.llama_guard_4_12b]
    assert context_length(p, True) == text["max_position_embeddings"] == meta.max_seq_length == FACTS["max_seq_len"]
    assert meta.pth_file_count == FACTS["pth_file_count"] == 1


def test_tokenizer_eos_is_published(tok):
    assert tok.eos_token == FACTS["tokenizer.eos_token"] and tok.eos_token_id == 200008
    assert tok.pad_token_id == FACTS["generation_config.pad_token_id"]  # '<|finetune_right_pad|>', Meta's name
