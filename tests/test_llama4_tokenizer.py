"""Llama 4 tokenizer files: ids equal Meta's own Llama 4 tokenizer (llama_models.llama4.tokenizer)."""

from __future__ import annotations

import json

import pytest
from llama4_fixtures import TOKENIZER_MODEL, tokenizer_files
from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer
from tokenizers import Tokenizer

from llama_convert.errors import InputError
from llama_convert.families.llama4.tokenizer import llama4_tokenizer_files, special_token_names, tokenizer_config_json

CORPUS = [
    "Hello, world! This is Llama 4.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\nprint(fib(30))\r\n",
    "for (int i = 0; i < 10; ++i) { std::cout << i << '\\n'; }  // C++",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 🦙🔥👩‍👩‍👧‍👦 ✨ and flags 🇫🇷🇯🇵",
    "    leading spaces, trailing spaces    \n\n\n\t\ttabs\t and   runs      of     whitespace \u00a0nbsp",
    "Numbers 1234567890 3.14159 -42 1e-5 0x1F and dates 2025-04-05",
    "It's we'll they've I'M YOU'RE don't — contractions in CAPS and MiXeD cAsE",
    "Literal specials: <|begin_of_text|> <|header_start|>user<|header_end|> <|eot|><|eom|> <|image|><|patch|>",
    "Reserved: <|reserved_special_token_0|> <|vision_reserved_special_token_1047|> <|finetune_right_pad|>",
    "URL https://example.com/a/b?c=d&e=f#g and path /usr/local/bin/ and email a.b@c.org",
    "Ελληνικά, русский текст, العربية, עברית, हिन्दी, ไทย, Tiếng Việt",
    "",
    "a",
    "\n",
]


@pytest.fixture(scope="module")
def meta() -> MetaTokenizer:
    return MetaTokenizer(TOKENIZER_MODEL)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return tokenizer_files(instruct=True)


@pytest.fixture(scope="module")
def ours(files) -> Tokenizer:
    return Tokenizer.from_str(files["tokenizer.json"].decode())


def test_special_token_names_are_metas(meta):
    names = special_token_names()
    assert len(names) == 2048
    assert {name: 200000 + i for i, name in enumerate(names)} == meta.special_tokens


@pytest.mark.parametrize("text", CORPUS)
def test_ids_equal_metas(meta, ours, text):
    expected = meta.encode(text, bos=True, eos=False, allowed_special="all")
    assert ours.encode(text).ids == expected
    assert ours.decode(expected, skip_special_tokens=False) == meta.decode(expected)


def test_long_mixed_text(meta, ours):
    text = "\n".join(CORPUS) * 20
    assert ours.encode(text, add_special_tokens=False).ids == meta.encode(
        text, bos=False, eos=False, allowed_special="all"
    )


def test_config_files(files):
    config = json.loads(files["tokenizer_config.json"])
    assert config["bos_token"] == "<|begin_of_text|>"
    assert config["eos_token"] == "<|eot|>"
    assert config["pad_token"] == "<|finetune_right_pad|>"
    assert config["model_max_length"] == 10485760
    assert config["added_tokens_decoder"]["200018"]["content"] == "<|finetune_right_pad|>"
    assert len(config["added_tokens_decoder"]) == 2048
    assert "chat_template" in config
    base = tokenizer_config_json(instruct=False, context_length=262144)
    assert base["eos_token"] == "<|end_of_text|>" and "chat_template" not in base


def test_transformers_loads_the_files(tmp_path, files, meta):
    from transformers import AutoTokenizer

    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (200000, 200008, 200018)
    assert len(tok) == 202048
    text = CORPUS[8]
    assert tok(text)["input_ids"] == meta.encode(text, bos=True, eos=False, allowed_special="all")


def test_wrong_tokenizer_is_refused(tmp_path):
    llama3 = tmp_path / "tokenizer.model"
    import importlib.resources

    llama3.write_bytes((importlib.resources.files("llama_models") / "llama3" / "tokenizer.model").read_bytes())
    with pytest.raises(InputError, match=r"holds 128000 ranks, not the 200000 of Meta's Llama 4 tokenizer"):
        llama4_tokenizer_files(llama3, instruct=True, context_length=1)
