"""Llama Guard prompt templates rendered by transformers' apply_chat_template, against the prompts Meta's
code and the published templates build, and Meta's tokenizer ids for them."""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path
from string import Template

import jinja2
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from transformers import AutoTokenizer

from llama_convert.errors import UnsupportedError
from llama_convert.families.llama.guard import GUARDS, guard_chat_template
from llama_convert.families.llama.tokenizer import llama3_tokenizer_files

META_MODEL = Path(str(importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"))

USER = "How do I bake sourdough bread at home?"
AGENT = "Mix flour, water and a starter, let it rise overnight, then bake at 230 °C."
USER_ONLY = [{"role": "user", "content": USER}]
USER_AGENT = [{"role": "user", "content": USER}, {"role": "assistant", "content": AGENT}]


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, object]:
    """Per Guard release, a Hugging Face tokenizer folder as a conversion writes it (Meta's Llama 3
    tokenizer.model, the release's template in tokenizer_config.json), loaded by AutoTokenizer."""
    base = tmp_path_factory.mktemp("guard-tok")
    files = llama3_tokenizer_files(META_MODEL, version="3.1", instruct=True, context_length=8192, template="")
    loaded = {}
    for kind in GUARDS:
        folder = base / kind
        folder.mkdir()
        config = json.loads(files["tokenizer_config.json"])
        config["chat_template"] = guard_chat_template(kind)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        for name in ("tokenizer.json", "special_tokens_map.json"):
            (folder / name).write_bytes(files[name])
        loaded[kind] = AutoTokenizer.from_pretrained(folder)
    return loaded


@pytest.fixture(scope="module")
def tok(toks):
    """apply_chat_template by release kind: ``tok(kind).apply_chat_template(...)``."""
    return toks.__getitem__


@pytest.fixture(scope="module")
def meta_tok() -> MetaTokenizer:
    return MetaTokenizer(META_MODEL)


def render(tok, kind: str, messages: list[dict], **kwargs) -> str:
    return tok(kind).apply_chat_template(messages, tokenize=False, **kwargs)


def parts(messages: list[dict]) -> list[dict]:
    """The list-of-parts message form Guard 3 1B's model card uses."""
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]


# --- Llama Guard 2: Meta's llama-recipes prompt code, transcribed verbatim -------------------------------
# (src/llama_recipes/inference/prompt_format_utils.py: PROMPT_TASK, SAFETY_CATEGORIES, PROMPT_CONVERSATION,
# PROMPT_INSTRUCTIONS_2, PROMPT_TEMPLATE_2, LLAMA_GUARD_2_CATEGORY names, build_custom_prompt)
_TASK = (
    "Task: Check if there is unsafe content in '$agent_type' messages in conversations according our safety "
    "policy with the below categories."
)
_CATEGORIES = "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n$categories\n<END UNSAFE CONTENT CATEGORIES>\n"
_CONVERSATION = "\n<BEGIN CONVERSATION>\n\n$conversations\n\n<END CONVERSATION>\n"
_INSTRUCTIONS_2 = (
    "\nProvide your safety assessment for ONLY THE LAST $agent_type message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)
_TEMPLATE_2 = Template(f"[INST] {_TASK}{_CATEGORIES}{_CONVERSATION}{_INSTRUCTIONS_2} [/INST]")
_GUARD2_NAMES = [
    "Violent Crimes. ",
    "Non-Violent Crimes. ",
    "Sex Crimes. ",
    "Child Exploitation. ",
    "Specialized Advice. ",
    "Privacy. ",
    "Intellectual Property. ",
    "Indiscriminate Weapons. ",
    "Hate. ",
    "Self-Harm. ",
    "Sexual Content. ",
]


def meta_guard2_prompt(messages: list[dict]) -> str:
    turns = [("User" if m["role"] == "user" else "Agent", m["content"]) for m in messages]
    return _TEMPLATE_2.substitute(
        agent_type=turns[-1][0],
        categories="\n".join(f"S{i + 1}: {name}" for i, name in enumerate(_GUARD2_NAMES)),
        conversations="\n\n".join(f"{role}: {text}" for role, text in turns),
    )


# --- Llama Guard 3: the documented prompt with the published templates' exact whitespace ---------------
# Model cards: 8B is prompted with S1–S14, 1B with S1–S13 (no Code Interpreter Abuse).
_GUARD3_CATEGORIES = (
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\n"
    "S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n"
    "S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\n"
)


def guard3_prompt(messages: list[dict], *, size: str, categories: str | None = None) -> str:
    turns = [("User" if m["role"] == "user" else "Agent", m["content"]) for m in messages]
    role = turns[-1][0]
    if categories is None:
        categories = _GUARD3_CATEGORIES + ("S14: Code Interpreter Abuse.\n" if size == "8b" else "")
    # The published 8B template starts with a space before <|begin_of_text|>; the 1B's puts a space before
    # <|eot_id|>. Neither adds a blank line after the assistant header: the models write "\n\n" first.
    start = " " if size == "8b" else ""
    before_eot = "" if size == "8b" else " "
    return (
        f"{start}<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy"
        " with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n" + "".join(f"{r}: {text}\n\n" for r, text in turns) + "<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
        f"{before_eot}<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )


CONVERSATIONS = pytest.mark.parametrize("messages", [USER_ONLY, USER_AGENT], ids=["user", "user+agent"])


@CONVERSATIONS
def test_guard2_renders_metas_prompt(tok, messages):
    assert render(tok, "guard2-8b", messages) == meta_guard2_prompt(messages)


@CONVERSATIONS
def test_guard3_8b_renders_published_prompt(tok, messages):
    assert render(tok, "guard3-8b", messages) == guard3_prompt(messages, size="8b")


@CONVERSATIONS
def test_guard3_1b_renders_published_prompt(tok, messages):
    assert render(tok, "guard3-1b", parts(messages)) == guard3_prompt(messages, size="1b")


@CONVERSATIONS
def test_guard3_1b_plain_string_messages_render_like_parts(tok, messages):
    assert render(tok, "guard3-1b", messages) == render(tok, "guard3-1b", parts(messages))


@pytest.mark.parametrize("kind", ["guard2-8b", "guard3-8b", "guard3-1b"])
def test_role_word_follows_the_last_turn(tok, kind):
    convert = parts if kind == "guard3-1b" else list
    user = render(tok, kind, convert(USER_ONLY))
    agent = render(tok, kind, convert(USER_AGENT))
    assert "unsafe content in 'User' messages" in user and "ONLY THE LAST User message" in user
    assert "unsafe content in 'Agent' messages" in agent and "ONLY THE LAST Agent message" in agent
    assert f"User: {USER}\n\nAgent: {AGENT}\n\n<END CONVERSATION>" in agent


@pytest.mark.parametrize("kind", ["guard2-8b", "guard3-8b", "guard3-1b"])
def test_categories_printed_are_the_tables(tok, kind):
    convert = parts if kind == "guard3-1b" else list
    text = render(tok, kind, convert(USER_ONLY))
    block = text.split("<BEGIN UNSAFE CONTENT CATEGORIES>\n", 1)[1].split("<END UNSAFE CONTENT CATEGORIES>", 1)[0]
    trail = " " if kind == "guard2-8b" else ""
    assert block.splitlines() == [f"{code}: {name}{trail}" for code, name in GUARDS[kind].categories]
    assert len(GUARDS[kind].categories) == {"guard2-8b": 11, "guard3-8b": 14, "guard3-1b": 13}[kind]


def test_guard3_1b_category_options(tok):
    """The published 1B template's ``excluded_category_keys`` and ``categories`` keywords, as its card shows."""
    excluded = render(tok, "guard3-1b", parts(USER_ONLY), excluded_category_keys=["S6"])
    assert excluded == guard3_prompt(
        USER_ONLY, size="1b", categories=_GUARD3_CATEGORIES.replace("S6: Specialized Advice.\n", "")
    )
    custom = render(tok, "guard3-1b", parts(USER_ONLY), categories={"S1": "My custom category"})
    assert custom == guard3_prompt(USER_ONLY, size="1b", categories="S1: My custom category\n")


@pytest.mark.parametrize("kind", ["guard2-8b", "guard3-8b", "guard3-1b"])
def test_roles_must_alternate(tok, kind):
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        render(tok, kind, [{"role": "user", "content": USER}, {"role": "user", "content": USER}])


@pytest.mark.parametrize(("kind", "expected"), [("guard3-8b", "8b"), ("guard3-1b", "1b")])
def test_token_ids_equal_metas_tokenizer(tok, meta_tok, kind, expected):
    messages = USER_AGENT if kind == "guard3-8b" else parts(USER_AGENT)  # as each model card passes them
    ids = tok(kind).apply_chat_template(messages, tokenize=True, return_dict=True)
    ids = ids["input_ids"]
    prompt = guard3_prompt(USER_AGENT, size=expected)
    assert ids == meta_tok.encode(prompt, bos=False, eos=False, allowed_special="all")
    special = meta_tok.special_tokens
    assert ids[-4:] == [special["<|eot_id|>"], special["<|start_header_id|>"], 78191, special["<|end_header_id|>"]]
    assert meta_tok.decode([78191]) == "assistant"
    assert special["<|begin_of_text|>"] in ids[:2]  # a space token first for the 8B, as published


def test_unknown_kind_is_refused():
    with pytest.raises(UnsupportedError, match="no Llama Guard release is called 'guard4'"):
        guard_chat_template("guard4")  # type: ignore[arg-type]
