"""SentencePiece BPE → Hugging Face tokenizer: ids and text must equal SentencePiece's own.

Every model here is trained in the test with Llama's trainer settings on a generated text, so the
checks run offline in seconds. The Code Llama infill pieces are tried both ways SentencePiece allows:
appended to a trained model by hand as normal pieces (the layout of Code Llama's 32016 pieces), and
declared as user-defined symbols at training (matched whole).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jinja2
import pytest
import sentencepiece as spm
import transformers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer

from llama_convert.errors import InputError, UnsupportedError
from llama_convert.families.llama.tokenizer import sentencepiece_tokenizer_files
from llama_convert.testing.synth import LLAMA_SPM_TRAINER

LLAMA_TRAINER = {**LLAMA_SPM_TRAINER, "vocab_size": 3000}
INFILL = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
# The 16 pieces Code Llama 7B/13B have after Llama's 32000 (ids 32000-32015), in their order, as
# public vocabulary listings show them; their SentencePiece type is not documented.
CODE_LLAMA_EXTRA = ["▁<SU", "▁<SUF", "▁<PRE", "▁<M", "▁<MID", "▁<E", "▁<EOT", *INFILL] + [
    "▁" + "<EOT>" * n for n in range(2, 7)
]

# Text the tokenizer must get right. Scripts absent from the training text (CJK, emoji, Georgian,
# Devanagari, Thai, Hebrew) are reachable only by byte fallback.
CASES = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    " \t \n ",
    "Hello world",
    " Hello",
    "  Hello  world  ",
    "trailing spaces   ",
    "tabs\t\tand\tmore\t",
    "line one\nline two\r\n\r\nline four",
    "    def forward(self, x):\n        return self.w2(x)\n",
    "\tif x:\n\t\tprint(x)",
    "The year 2023 had 365 days; 3.14159 and 1,000,000 and -42.",
    "0123456789",
    "你好，世界",
    "🦙🦙 llamas 🎉👍🏽",
    "გამარჯობა नमस्ते สวัสดี שלום",
    "mixed: café naïve привет мир γειά 漢字 ok",
    "Ünïcödé çåfé ñandú ß",
    "e\u0301 combining and \u00a0 no-break and \u200b zero-width",
    "▁ a literal U+2581 ▁▁",
    "quotes \"double\" 'single' `back` and <tags> & {braces} [brackets]",
    "x" * 300,
    " ".join(["the"] * 50),
]


def _training_lines(seed: int = 0, n: int = 6000) -> list[str]:
    """Varied synthetic text: prose-like lines with numbers and a few non-Latin words, indented code."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bklmnprst" for v in "aeiou"] + ["the", "ing", "ion", "er", "st", "ch", "ou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(600)]
    words += ["the", "of", "and", "to", "in", "is", "that", "for", "def", "return", "class", "self"]
    foreign = ["café", "naïve", "Über", "straße", "привет", "мир", "γειά", "κόσμος", "ñandú", "élève"]
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            ws = [rng.choice(words) for _ in range(rng.randint(3, 15))]
            if rng.random() < 0.3:
                ws.insert(rng.randrange(len(ws)), rng.choice(foreign))
            if rng.random() < 0.4:
                ws.insert(rng.randrange(len(ws)), str(rng.randint(0, 100000)))
            line = " ".join(ws)
            lines.append(line[0].upper() + line[1:] + rng.choice(".!?,;:"))
        elif kind < 0.8:
            indent = " " * rng.choice([0, 2, 4, 8, 12])
            head = rng.choice(["def ", "return ", "x = ", "if ", "for i in range(", "print(", "<PRE> "])
            tail = rng.choice(["()", "(x, y):", " + 1", "[0]", ")", ":", " < 10", " > 2"])
            lines.append(indent + head + rng.choice(words) + tail)
        else:
            middle = " ".join(rng.choice(words).upper() for _ in range(rng.randint(1, 5)))
            lines.append(rng.choice(["\t", "    ", "", "  "]) + middle + rng.choice(["  ", "\t", "", " end"]))
    return lines


def _train(directory: Path, name: str, **overrides: object) -> Path:
    options = {**LLAMA_TRAINER, **overrides}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()), model_prefix=str(directory / name), **options
    )
    return directory / f"{name}.model"


def _load_proto(path: Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def _save(proto: sentencepiece_model_pb2.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _append_pieces(proto: sentencepiece_model_pb2.ModelProto, pieces: list[str], *, first: bool = False) -> None:
    """Append the normal pieces not there yet, scored below every existing one (as further BPE merges
    would be) or, with ``first``, above every one (merged before all others)."""
    have = {p.piece for p in proto.pieces}
    scores = [p.score for p in proto.pieces]
    score = max(scores) + len(pieces) + 1 if first else min(scores)
    for text in pieces:
        if text not in have:
            score -= 1
            proto.pieces.add(piece=text, score=score, type=sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL)
            have.add(text)


def _convert(model: Path, dst: Path, *, version: str = "2", instruct: bool = False) -> Path:
    files = sentencepiece_tokenizer_files(model, version=version, instruct=instruct, context_length=4096)
    dst.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (dst / name).write_bytes(content)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Llama-like, Code-Llama-like (appended pieces and user-defined pieces) and unigram models."""
    directory = tmp_path_factory.mktemp("spm")
    llama = _train(directory, "llama")
    # Code Llama layout: the 16 extra pieces appended to a finished model. The parts they are merged
    # from ("▁<", "PRE", …) come first where the small model lacks them, and the extra pieces merge
    # before all others, so that BPE reaches "▁<PRE>" even where the small model would merge "MI".
    code = _load_proto(llama)
    _append_pieces(code, [*"<>SUFPREMIDOT", "▁<", "SU", "PR", "PRE", "ID", "OT"])
    _append_pieces(code, CODE_LLAMA_EXTRA, first=True)
    _save(code, directory / "code.model")
    user_defined = _train(directory, "user_defined", user_defined_symbols=INFILL)
    unigram = _train(directory, "unigram", model_type="unigram", vocab_size=800)
    return {"llama": llama, "code": directory / "code.model", "user_defined": user_defined, "unigram": unigram}


@pytest.fixture(scope="module")
def converted(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hf")
    return {name: _convert(models[name], out / name) for name in ("llama", "code", "user_defined")}


def _sp(model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(model))


def _random_texts(seed: int, count: int) -> list[str]:
    """Random mixtures of training lines, whitespace, markers and characters outside the vocabulary."""
    rng = random.Random(seed)
    lines = _training_lines(seed=seed + 1, n=300)
    pool = [*"  \t\n\r", *"abcxyzAEIOU0123456789.,;:!?()[]{}<>=+-_*/\\\"'"]
    pool += ["▁", "你", "🦙", "ж", "é", "\u0301", "\u00a0", "<PRE>", " <SUF>", "<EOT><EOT>", "PRE", "    "]
    texts = []
    for _ in range(count):
        if rng.random() < 0.4:
            texts.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 40))))
        else:
            text = "\n".join(rng.choice(lines) for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(0, 4)):
                i = rng.randint(0, len(text))
                text = text[:i] + rng.choice(pool) + text[i:]
            texts.append(text)
    return texts


def test_files_and_config(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    files = sentencepiece_tokenizer_files(models["llama"], version="2", instruct=False, context_length=4096)
    assert sorted(files) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert files["tokenizer.model"] == models["llama"].read_bytes()
    config = json.loads(files["tokenizer_config.json"])
    assert config == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    assert json.loads(files["special_tokens_map.json"]) == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    spec = json.loads(files["tokenizer.json"])
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is True
    assert spec["pre_tokenizer"] is None
    assert [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"]] == [
        (0, "<unk>", True),
        (1, "<s>", True),
        (2, "</s>", True),
    ]
    assert len(spec["model"]["vocab"]) == len(_load_proto(models["llama"]).pieces)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("name", ["llama", "code", "user_defined"])
def test_ids_and_text_match_sentencepiece(name: str, models: dict[str, Path], converted: dict[str, Path]) -> None:
    sp = _sp(models[name])
    raw = Tokenizer.from_file(str(converted[name] / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(converted[name])
    texts = [*CASES, " <PRE> def f(x): <SUF>\n    return x <MID>", "<PRE>x", "x<PRE>", " <EOT><EOT>"]
    for text in texts:
        expected = [sp.bos_id(), *sp.encode(text)]
        assert raw.encode(text).ids == expected, text
        assert auto(text)["input_ids"] == expected, text
        assert auto.decode(expected, skip_special_tokens=True) == sp.decode(expected), text
        assert raw.decode(expected) == sp.decode(expected), text


@pytest.mark.parametrize("name", ["llama", "code", "user_defined"])
def test_random_text_matches_sentencepiece(name: str, models: dict[str, Path], converted: dict[str, Path]) -> None:
    sp = _sp(models[name])
    raw = Tokenizer.from_file(str(converted[name] / "tokenizer.json"))
    for text in _random_texts(seed=len(name), count=3000):
        ids = sp.encode(text)
        assert raw.encode(text, add_special_tokens=False).ids == ids, text
        assert raw.decode(ids) == sp.decode(ids), text


@pytest.mark.parametrize("name", ["llama", "code", "user_defined"])
def test_decoding_any_ids_matches_sentencepiece(name: str, models: dict[str, Path], converted: dict[str, Path]) -> None:
    # Ids as a model may generate them: any piece, control pieces included, and byte pieces that
    # spell whole characters (a leading "<0x20>" must keep its space). Byte runs that are not UTF-8
    # are left out: `tokenizers` replaces the whole run, SentencePiece each bad byte.
    sp = _sp(models[name])
    raw = Tokenizer.from_file(str(converted[name] / "tokenizer.json"))
    rng = random.Random(11)
    pieces = [i for i in range(1, sp.get_piece_size()) if not sp.is_byte(i)]
    byte_ids = {b: sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    for _ in range(3000):
        ids: list[int] = []
        for _ in range(rng.randint(0, 8)):
            if rng.random() < 0.3:
                ids += [byte_ids[b] for b in rng.choice(" \nañ你🦙").encode()]
            else:
                ids.append(rng.choice(pieces))
        assert raw.decode(ids) == sp.decode(ids), [sp.id_to_piece(i) for i in ids]


def test_exact_with_config_json_of_a_llama_model(models: dict[str, Path], tmp_path: Path) -> None:
    # A converted folder also holds config.json (model_type "llama"); AutoTokenizer must still
    # load tokenizer.json as written, not rebuild it as LlamaTokenizer.
    dst = _convert(models["llama"], tmp_path / "hf")
    (dst / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    sp = _sp(models["llama"])
    auto = transformers.AutoTokenizer.from_pretrained(dst)
    for text in CASES:
        assert auto(text)["input_ids"] == [1, *sp.encode(text)], text


def test_code_llama_infill_pieces(models: dict[str, Path], converted: dict[str, Path]) -> None:
    sp = _sp(models["code"])
    vocab = json.loads((converted["code"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    base = vocab["▁<SU"]
    # Same offsets as Code Llama's 32007-32010 after its 32000 base pieces.
    assert [vocab[piece] for piece in INFILL] == [base + 7, base + 8, base + 9, base + 10]
    assert len(vocab) == base + 16
    raw = Tokenizer.from_file(str(converted["code"] / "tokenizer.json"))
    text = "def f(x): <SUF>\n    return x <MID>"
    encoding = raw.encode(text)
    assert encoding.ids == [1, *sp.encode(text)]
    assert "▁<SUF>" in encoding.tokens and "▁<MID>" in encoding.tokens


def test_user_defined_pieces_match_whole(models: dict[str, Path], converted: dict[str, Path]) -> None:
    sp = _sp(models["user_defined"])
    raw = Tokenizer.from_file(str(converted["user_defined"] / "tokenizer.json"))
    pre = sp.piece_to_id("▁<PRE>")
    for text, expected_tokens in [
        ("<PRE>", ["<s>", "▁<PRE>"]),  # the dummy prefix makes "▁<PRE>"
        (" <PRE>", ["<s>", "▁", "▁<PRE>"]),
        ("the <PRE>b", ["<s>", "▁the", "▁<PRE>", "b"]),
    ]:
        encoding = raw.encode(text)
        assert encoding.ids == [1, *sp.encode(text)], text
        assert encoding.tokens == expected_tokens, text
    assert pre in raw.encode("x <PRE>").ids
    assert sp.piece_to_id("▁<PRE>") not in raw.encode("x<PRE>").ids


def test_split_digits_is_a_trainer_option_only(models: dict[str, Path], tmp_path: Path) -> None:
    # SentencePiece's encoder merges digits whenever a piece allows it, split_digits or not; so the
    # converted tokenizer must not split digits either (a trained model simply has no such piece).
    proto = _load_proto(models["llama"])
    assert proto.trainer_spec.split_digits
    _append_pieces(proto, ["12"], first=True)
    model = _save(proto, tmp_path / "tokenizer.model")
    sp = _sp(model)
    raw = Tokenizer.from_file(str(_convert(model, tmp_path / "hf") / "tokenizer.json"))
    for text in ["12", " 123", "a12b", "2012"]:
        assert raw.encode(text).ids == [1, *sp.encode(text)], text
    assert "12" in sp.encode("a12b", out_type=str)


@pytest.mark.parametrize(
    ("overrides", "texts"),
    [
        ({"add_dummy_prefix": False}, ["Hello", " Hello", "a  b", "\tx", ""]),
        ({"remove_extra_whitespaces": True}, ["  Hello   world  ", " \t x \n ", "   ", "a ▁", "x  ▁ "]),
        ({"byte_fallback": False}, ["你好 世界", "a你好b🦙", "①①x", "plain"]),
    ],
    ids=["no-dummy-prefix", "remove-extra-whitespaces", "no-byte-fallback"],
)
def test_normalizer_flags_are_honoured(overrides: dict[str, object], texts: list[str], tmp_path: Path) -> None:
    model = _train(tmp_path, "variant", vocab_size=1500, **overrides)
    sp = _sp(model)
    raw = Tokenizer.from_file(str(_convert(model, tmp_path / "hf") / "tokenizer.json"))
    for text in texts + _random_texts(seed=7, count=500):
        assert raw.encode(text, add_special_tokens=False).ids == sp.encode(text), text


def test_literal_control_text_becomes_the_special_token(converted: dict[str, Path]) -> None:
    # SentencePiece never makes <s> from text; Hugging Face does, as chat templates rely on.
    raw = Tokenizer.from_file(str(converted["llama"] / "tokenizer.json"))
    assert raw.encode("<s>[INST] hi", add_special_tokens=False).ids[0] == 1
    assert raw.decode([1, *raw.encode("hi", add_special_tokens=False).ids, 2]) == "hi"


# --- Llama 2 chat template -------------------------------------------------------------------

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _meta_chat_ids(sp: spm.SentencePieceProcessor, dialog: list[dict[str, str]]) -> list[int]:
    """Meta's documented Llama 2 chat encoding: each turn encoded separately with BOS (and EOS)."""
    if dialog[0]["role"] == "system":
        first = {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
        dialog = [first, *dialog[2:]]
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [sp.bos_id(), *sp.encode(text), sp.eos_id()]
    return [*ids, sp.bos_id(), *sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")]


@pytest.fixture(scope="module")
def chat_tokenizer(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    dst = _convert(models["llama"], tmp_path_factory.mktemp("chat"), instruct=True)
    return transformers.AutoTokenizer.from_pretrained(dst)


SYSTEM_USER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
]
USER_ONLY = [{"role": "user", "content": "  What is 2 + 2?\n"}]
MULTI_TURN = [
    {"role": "system", "content": " Answer in French. "},
    {"role": "user", "content": "Hello\n"},
    {"role": "assistant", "content": " Bonjour ! "},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "De rien."},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (SYSTEM_USER, "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there! [/INST]"),
        (USER_ONLY, "<s>[INST] What is 2 + 2? [/INST]"),
        (
            MULTI_TURN,
            "<s>[INST] <<SYS>>\n Answer in French. \n<</SYS>>\n\nHello [/INST] Bonjour ! </s>"
            "<s>[INST] Thanks [/INST] De rien. </s><s>[INST] Bye [/INST]",
        ),
    ],
    ids=["system-user", "user-only", "multi-turn"],
)
def test_chat_template_renders_meta_format(
    messages: list[dict[str, str]], expected: str, chat_tokenizer: Any, models: dict[str, Path]
) -> None:
    assert chat_tokenizer.apply_chat_template(messages, tokenize=False) == expected
    ids = chat_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids == _meta_chat_ids(_sp(models["llama"]), messages)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "Hi"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "system", "content": "s"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
        [{"role": "user", "content": "a"}, {"role": "tool", "content": "{}"}],
    ],
    ids=["assistant-first", "user-twice", "system-only", "system-later", "tool"],
)
def test_chat_template_rejects_wrong_role_order(messages: list[dict[str, str]], chat_tokenizer: Any) -> None:
    with pytest.raises(jinja2.TemplateError):
        chat_tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize(
    ("version", "instruct", "has_template"),
    [("2", True, True), ("code", True, True), ("2", False, False), ("code", False, False), ("1", True, False)],
)
def test_chat_template_only_for_llama2_style_instruct(
    version: str, instruct: bool, has_template: bool, models: dict[str, Path]
) -> None:
    files = sentencepiece_tokenizer_files(models["llama"], version=version, instruct=instruct, context_length=16384)
    config = json.loads(files["tokenizer_config.json"])
    assert ("chat_template" in config) is has_template
    assert config["model_max_length"] == 16384


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all\n", b"\x0a\xff\xff\xff\xff\x0fgarbage", b"\x00" * 64],
    ids=["empty", "text", "garbage", "zeros"],
)
def test_garbage_file_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(InputError) as excinfo:
        sentencepiece_tokenizer_files(path, version="2", instruct=False, context_length=4096)
    assert str(excinfo.value) == (
        f"{path} is not a SentencePiece model, or is truncated; download tokenizer.model again."
    )


def test_truncated_model_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    data = models["llama"].read_bytes()
    proto = _load_proto(models["llama"])
    proto.ClearField("trainer_spec")
    proto.ClearField("normalizer_spec")
    for index, content in enumerate([data[: len(data) // 2], proto.SerializeToString()]):
        path = tmp_path / f"tokenizer{index}.model"
        path.write_bytes(content)
        with pytest.raises(InputError, match="is not a SentencePiece model, or is truncated"):
            sentencepiece_tokenizer_files(path, version="2", instruct=False, context_length=4096)


def test_unigram_model_is_unsupported(models: dict[str, Path]) -> None:
    path = models["unigram"]
    with pytest.raises(UnsupportedError) as excinfo:
        sentencepiece_tokenizer_files(path, version="2", instruct=False, context_length=4096)
    assert str(excinfo.value) == (
        f"{path} is a SentencePiece unigram model; only BPE models (Llama 1, Llama 2, Code Llama) are supported."
    )


def test_normalization_rule_is_unsupported(models: dict[str, Path], tmp_path: Path) -> None:
    proto = _load_proto(models["llama"])
    proto.normalizer_spec.precompiled_charsmap = b"\x00\x01"
    path = _save(proto, tmp_path / "tokenizer.model")
    with pytest.raises(UnsupportedError, match="uses a normalization rule, which no Llama tokenizer does"):
        sentencepiece_tokenizer_files(path, version="2", instruct=False, context_length=4096)


def test_missing_bos_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    proto = _load_proto(models["llama"])
    proto.trainer_spec.bos_id = -1
    path = _save(proto, tmp_path / "tokenizer.model")
    with pytest.raises(InputError) as excinfo:
        sentencepiece_tokenizer_files(path, version="2", instruct=False, context_length=4096)
    assert str(excinfo.value) == f"{path} has no bos piece at bos_id=-1; download tokenizer.model again."


def test_llama3_version_is_refused(models: dict[str, Path]) -> None:
    path = models["llama"]
    with pytest.raises(InputError) as excinfo:
        sentencepiece_tokenizer_files(path, version="3", instruct=False, context_length=8192)
    assert str(excinfo.value) == (
        f"{path} is a SentencePiece tokenizer, which Llama 3 does not use; "
        "check that the folder holds Llama 3's own tokenizer.model."
    )
