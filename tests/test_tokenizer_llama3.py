"""Llama 3.x tokenizer.model → Hugging Face files: the same ids and text as Meta's tokenizer."""

from __future__ import annotations

import base64
import importlib.resources
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from llama_convert.errors import InputError
from llama_convert.families.llama.tokenizer import llama3_tokenizer_files, special_token_names, tokenizer_files
from llama_convert.tokenizer.tiktoken_bpe import derive_merges

META_MODEL = Path(str(importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"))
CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus"


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def meta() -> MetaTokenizer:
    return MetaTokenizer(META_MODEL)


@pytest.fixture(scope="module")
def base31(tmp_path_factory) -> Path:
    files = llama3_tokenizer_files(META_MODEL, version="3.1", instruct=False, context_length=131072)
    return _write(tmp_path_factory.mktemp("llama31_base"), files)


@pytest.fixture(scope="module")
def instruct3(tmp_path_factory) -> Path:
    files = llama3_tokenizer_files(META_MODEL, version="3", instruct=True, context_length=8192)
    return _write(tmp_path_factory.mktemp("llama3_instruct"), files)


@pytest.fixture(scope="module")
def hf(base31: Path):
    return AutoTokenizer.from_pretrained(base31)


# --- the corpus -------------------------------------------------------------------------------------


def _corpus_files() -> list[tuple[str, str]]:
    return [(path.name, path.read_text(encoding="utf-8")) for path in sorted(CORPUS.glob("*.txt"))]


def _language_lines() -> list[tuple[str, str]]:
    lines = (CORPUS / "languages.txt").read_text(encoding="utf-8").splitlines()
    return [(line.split(":")[0].split("：")[0][:24], line) for line in lines]


WHITESPACE = [
    *(f"word{' ' * n}word" for n in (1, 2, 3, 4, 7, 8, 15, 16, 33)),
    "    indented four\n        indented eight\n\ttab\n\t\ttwo tabs\n",
    "trailing spaces   \nand tabs\t\t\n\n\n\nfour newlines",
    "windows\r\nline\r\n\r\nendings\r\n",
    "mixed \r\n \n\r \r\r\n\n\r\n  end",
    "   leading and trailing   ",
    "\n\n\n",
    "\t \t \n \n",
    " " * 40,
    "a\u00a0b\u2009c\u3000d\u2028e\u2029f\x0bg\x0ch\x85i\u202fj",
    "x \u00a0 \u00a0y",
]
DIGITS = [
    " ".join(str(10**k + 7) for k in range(30)),
    *("".join(str(i % 10) for i in range(n)) for n in range(1, 26)),
    "3.14159265358979 1,000,000 -42 +7 0x1F 1e-9 2024-07-26 12:30:45.123",
    "१२३४५ ٣٤٥٦ ০১২৩ ๑๒๓ ①②③ ½¾ Ⅻ ²³ 𝟙𝟚𝟛",
    "v1.2.3-rc4 x86_64 utf8 3rd 21st 1990s",
]
EMOJI = [
    "👍 👍🏽 👍🏿",
    "👨‍👩‍👧‍👦 family, 🧑🏿‍🚀 astronaut, ❤️‍🔥 heart on fire, 🏳️‍🌈 flag",
    "🇫🇷🇯🇵🇺🇸🇧🇷🇮🇳 flags and 🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland",
    "#️⃣ 1️⃣ *️⃣ keycaps ☺️ ✌🏼 🤌",
    "emoji😀glued🙃to😎words",
]
CONTRACTIONS = [
    "I'D they'LL WE'Re you'VE it'S she'M don'T",
    "i'd THEY'll we'rE You'Ve IT's",
    "'s's'S'd'D'll'LL 'tis rock'n'roll o'clock",
    "it’s curly ’ quotes ‘not’ matched",
]
SPECIAL_TEXT = [  # names that mean the same id in Meta's tokenizer and in the Llama 3.1 table
    "<|begin_of_text|>",
    "text<|eot_id|>more",
    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "a<|reserved_special_token_0|>b<|reserved_special_token_1|>c",
    "<|end_of_text|><|eom_id|><|python_tag|>print(1)<|finetune_right_pad_id|>",
    "<|eot_id|<|not_a_token|><|EOT_ID|>",
]
# Pre-tokens tiktoken only reaches through a part ranked above the result (e.g. " nghiệ" for
# " nghiệng"), or only as a whole pre-token (".:.:").
MERGE_EDGE_CASES = [
    " nghiệng nghiệp nghiệx nghiệa việc việcx hợp hợpx",
    ".:.: .:.:.:.: .:.:. :.:.:",
    " maktadır maktadırlar ektedir",
]


def _random_unicode(count: int, seed: int = 20240726) -> list[str]:
    """Random strings over all planes; surrogates (not encodable) are replaced."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, 40)):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
        if rng.random() < 0.3:
            chars.insert(rng.randrange(len(chars) + 1), rng.choice([" ", "  ", "\n", "\t", "'s", "123"]))
        texts.append("".join(chars))
    return texts


CASES = [
    *_corpus_files(),
    *_language_lines(),
    *((f"whitespace{i}", text) for i, text in enumerate(WHITESPACE)),
    *((f"digits{i}", text) for i, text in enumerate(DIGITS)),
    *((f"emoji{i}", text) for i, text in enumerate(EMOJI)),
    *((f"contractions{i}", text) for i, text in enumerate(CONTRACTIONS)),
    *((f"special{i}", text) for i, text in enumerate(SPECIAL_TEXT)),
    *((f"merges{i}", text) for i, text in enumerate(MERGE_EDGE_CASES)),
    ("empty", ""),
]


@pytest.mark.parametrize("text", [text for _, text in CASES], ids=[name for name, _ in CASES])
def test_ids_and_decoding_match_meta(hf, meta, text):
    expected = meta.encode(text, bos=True, eos=False, allowed_special="all")
    ids = hf.encode(text)
    assert ids == expected
    assert hf.decode(ids) == meta.decode(expected)


def test_random_unicode_matches_meta(hf, meta):
    for text in _random_unicode(400):
        expected = meta.encode(text, bos=True, eos=False, allowed_special="all")
        assert hf.encode(text) == expected, repr(text)
        assert hf.decode(expected) == meta.decode(expected) == "<|begin_of_text|>" + text


def test_corpus_covers_twenty_scripts():
    assert len(_language_lines()) >= 40


def test_whole_corpus_in_one_piece(hf, meta):
    text = "\r\n".join(text for _, text in CASES)
    expected = meta.encode(text, bos=True, eos=False, allowed_special="all")
    assert hf.encode(text) == expected
    assert hf.decode(expected) == meta.decode(expected)


# --- tokenizer.json ---------------------------------------------------------------------------------


def test_tokenizer_json_pipeline(base31):
    spec = json.loads((base31 / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    assert (model["type"], model["ignore_merges"], model["byte_fallback"], model["unk_token"]) == (
        "BPE",
        True,
        False,
        None,
    )
    assert len(model["vocab"]) == 128000
    assert spec["normalizer"] is None
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"] == {"Regex": MetaTokenizer.pat_str}
    assert (split["type"], split["behavior"], split["invert"]) == ("Split", "Isolated", False)
    assert (byte_level["type"], byte_level["add_prefix_space"], byte_level["use_regex"]) == (
        "ByteLevel",
        False,
        False,
    )
    assert spec["decoder"]["type"] == "ByteLevel"
    post = spec["post_processor"]
    assert post["type"] == "TemplateProcessing"
    assert post["special_tokens"] == {
        "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}
    }
    assert [item.get("SpecialToken", {}).get("id") for item in post["single"]] == ["<|begin_of_text|>", None]


def test_bos_added_and_never_eos(hf):
    assert hf.encode("hi") == [128000, 6151]
    assert hf.encode("hi", add_special_tokens=False) == [6151]
    assert hf("a", "b")["input_ids"] == [128000, 64, 128000, 65]


def test_ignore_merges_keeps_whole_pre_tokens(base31, meta):
    # " việc" is in the vocabulary, but merging its bytes gets stuck at " vi", "ệ", "c".
    text = " việc"
    assert meta.encode(text, bos=False, eos=False) == [100769]
    exact = Tokenizer.from_file(str(base31 / "tokenizer.json"))
    assert exact.encode(text, add_special_tokens=False).ids == [100769]
    spec = json.loads((base31 / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["ignore_merges"] = False
    merging = Tokenizer.from_str(json.dumps(spec))
    assert merging.encode(text, add_special_tokens=False).ids == [3355, 26298, 66]


def test_merges_come_from_tiktoken_merge_order():
    tokens = [b"a", b"b", b"c", b"abc", b"ab", b"x", b"y", b"z", b"xyz"]
    # "abc" is built from "ab", ranked above it; "xyz" only exists as a whole pre-token.
    assert derive_merges(tokens) == [(b"ab", b"c"), (b"a", b"b")]


def test_merges_of_meta_file(meta):
    tokens = [meta.model.decode_single_token_bytes(i) for i in range(128000)]
    merges = derive_merges(tokens)
    assert len(merges) == 127156
    assert merges[0] == (b" ", b" ")  # rank 256, the first multi-byte token
    ranks = {token: rank for rank, token in enumerate(tokens)}
    result_ranks = [ranks[left + right] for left, right in merges]
    assert result_ranks == sorted(set(result_ranks))


# --- special tokens and configuration ---------------------------------------------------------------

LLAMA3_NAMES = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128002: "<|reserved_special_token_0|>",
    128003: "<|reserved_special_token_1|>",
    128004: "<|reserved_special_token_2|>",
    128005: "<|reserved_special_token_3|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|reserved_special_token_4|>",
    128009: "<|eot_id|>",
    128010: "<|reserved_special_token_5|>",
    128011: "<|reserved_special_token_6|>",
    128255: "<|reserved_special_token_250|>",
}
LLAMA31_NAMES = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128002: "<|reserved_special_token_0|>",
    128003: "<|reserved_special_token_1|>",
    128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
    128011: "<|reserved_special_token_3|>",
    128255: "<|reserved_special_token_247|>",
}


@pytest.mark.parametrize(("folder", "table"), [("base31", LLAMA31_NAMES), ("instruct3", LLAMA3_NAMES)])
def test_special_token_names(request, folder, table):
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(folder))
    assert len(tok) == 128256
    names = tok.convert_ids_to_tokens(list(range(128000, 128256)))
    assert len(set(names)) == 256
    assert all(name.startswith("<|") and name.endswith("|>") for name in names)
    for token_id, name in table.items():
        assert names[token_id - 128000] == name
        assert tok.encode(name, add_special_tokens=False) == [token_id]
        assert tok.decode([token_id]) == name


def test_special_token_tables_per_version():
    assert special_token_names("3.2") == special_token_names("3.3") == special_token_names("3.1")
    assert special_token_names("3") != special_token_names("3.1")


def test_hf_names_differ_from_meta_class_where_expected(meta):
    hf_names = special_token_names("3.1")
    meta_names = {token_id: name for name, token_id in meta.special_tokens.items()}
    differing = [i for i in range(256) if hf_names[i] != meta_names[128000 + i]]
    # <|step_id|> and <|image|> in Meta's class, and its reserved numbering shifts from there on.
    assert differing == [5, *range(11, 256)]
    assert meta_names[128005] == "<|step_id|>" and meta_names[128011] == "<|image|>"


def test_config_base(base31, hf):
    config = json.loads((base31 / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["bos_token"] == "<|begin_of_text|>"
    assert config["eos_token"] == "<|end_of_text|>"
    assert config["model_max_length"] == 131072
    assert config["clean_up_tokenization_spaces"] is False
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "chat_template" not in config
    decoder = config["added_tokens_decoder"]
    assert len(decoder) == 256
    assert decoder["128009"] == {
        "content": "<|eot_id|>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    assert (hf.bos_token_id, hf.eos_token_id, hf.model_max_length) == (128000, 128001, 131072)
    special_map = json.loads((base31 / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special_map["bos_token"]["content"] == "<|begin_of_text|>"
    assert special_map["eos_token"]["content"] == "<|end_of_text|>"


def test_config_instruct(instruct3):
    tok = AutoTokenizer.from_pretrained(instruct3)
    assert (tok.bos_token, tok.eos_token, tok.eos_token_id) == ("<|begin_of_text|>", "<|eot_id|>", 128009)
    assert tok.model_max_length == 8192
    assert tok.chat_template.startswith("{#- Llama 3 instruct")
    special_map = json.loads((instruct3 / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special_map["eos_token"]["content"] == "<|eot_id|>"


def test_dispatch_through_package_entry_point():
    files = tokenizer_files(META_MODEL, version="3.3", instruct=True, context_length=131072)
    assert sorted(files) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads(files["tokenizer_config.json"])["eos_token"] == "<|eot_id|>"


# --- bad input ----------------------------------------------------------------------------------------


def _ranks_file(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _valid_lines(count: int) -> list[bytes]:
    return [base64.b64encode(bytes([i % 256]) * (1 + i // 256)) + b" %d" % i for i in range(count)]


def test_malformed_line_names_file_and_line(tmp_path):
    lines = _valid_lines(5)
    lines[2] = b"!!not-base64!! 2"
    path = _ranks_file(tmp_path / "tokenizer.model", lines)
    with pytest.raises(InputError) as info:
        llama3_tokenizer_files(path, version="3.1", instruct=False, context_length=8192)
    assert str(info.value) == (
        f"{path} line 3 is not 'base64-token rank' (found '!!not-base64!! 2'); download tokenizer.model again."
    )


def test_missing_rank_column(tmp_path):
    path = _ranks_file(tmp_path / "tokenizer.model", [*_valid_lines(3), b"IQ=="])
    with pytest.raises(InputError, match=r"line 4 is not 'base64-token rank'"):
        llama3_tokenizer_files(path, version="3", instruct=False, context_length=8192)


def test_repeated_rank(tmp_path):
    lines = _valid_lines(4)
    lines[3] = base64.b64encode(b"zz") + b" 1"
    path = _ranks_file(tmp_path / "tokenizer.model", lines)
    with pytest.raises(InputError) as info:
        llama3_tokenizer_files(path, version="3", instruct=False, context_length=8192)
    assert str(info.value) == f"{path} line 4 repeats rank 1; download tokenizer.model again."


def test_truncated_file(tmp_path):
    data = b"\n".join(_valid_lines(1000))
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data[: len(data) - 3])  # cut inside the last line
    with pytest.raises(InputError, match=r"line 1000 is not 'base64-token rank'"):
        llama3_tokenizer_files(path, version="3.1", instruct=True, context_length=131072)


def test_ranks_with_a_gap(tmp_path):
    lines = _valid_lines(1000)
    del lines[500]
    path = _ranks_file(tmp_path / "tokenizer.model", lines)
    with pytest.raises(InputError) as info:
        llama3_tokenizer_files(path, version="3.1", instruct=True, context_length=131072)
    assert str(info.value) == (
        f"{path} holds 999 tokens with ranks up to 999, not the contiguous ranks 0… of a tiktoken BPE file; "
        "download tokenizer.model again."
    )


def test_smaller_vocabularies_put_the_specials_after_the_last_rank(tmp_path):
    path = _ranks_file(tmp_path / "tokenizer.model", _valid_lines(1000))
    files = llama3_tokenizer_files(path, version="3.1", instruct=True, context_length=131072)
    config = json.loads(files["tokenizer_config.json"])
    assert config["added_tokens_decoder"]["1000"]["content"] == "<|begin_of_text|>"
    assert config["added_tokens_decoder"]["1009"]["content"] == "<|eot_id|>"


def test_unknown_version():
    with pytest.raises(InputError) as info:
        llama3_tokenizer_files(META_MODEL, version="2", instruct=False, context_length=4096)
    assert str(info.value) == (
        "Llama version '2' does not use the tiktoken tokenizer.model; expected one of 3, 3.1, 3.2, 3.3."
    )
