"""Tokenizer metadata for GGUF from Hugging Face tokenizer files, as llama.cpp's converter writes it.

Two vocabularies exist for Llama: byte-level BPE (``tokenizer.ggml.model`` ``gpt2``: tokens and merges
from tokenizer.json) and SentencePiece (``llama``: pieces, scores and types from tokenizer.model). The
special-token ids, ``add_*_token`` flags, merges and chat template come from ``gguf.SpecialVocab`` —
the class llama.cpp's converter uses — reading the same files it would read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from ...errors import InputError

__all__ = ["add_bpe_vocab", "add_sentencepiece_vocab", "bpe_tokens", "sentencepiece_tokens"]

_SPECIAL_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")


def bpe_tokens(tokenizer_json: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types of a byte-level BPE tokenizer.json, ids 0..vocab_size-1: added tokens are
    control (special) or user-defined, the rest normal, missing ids ``[PADn]`` unused (as llama.cpp's
    ``get_vocab_base``)."""
    by_id: dict[int, str] = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens") or []}
    by_id.update({i: t["content"] for i, t in added.items()})
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            token = by_id[i]
            if added[i].get("special") or _looks_special(token):
                types.append(TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, types


def _looks_special(token: str) -> bool:
    """llama.cpp's ``does_token_look_special``."""
    if token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]"):
        return True
    pairs = (("<|", "|>"), ("<｜", "｜>"), ("<unused", ">"))
    return any(token.startswith(a) and token.endswith(b) for a, b in pairs)


def sentencepiece_tokens(
    model: Path, vocab_size: int, tokenizer_config: dict[str, Any] | None
) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and types of a SentencePiece model (as llama.cpp's ``_create_vocab_sentencepiece``):
    unknown 2, control 3, unused 5, byte 6, else normal; ``added_tokens_decoder`` entries of
    tokenizer_config.json override (control when special, else user-defined, score -1000)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(model))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        tokens[i] = sp.id_to_piece(i).encode("utf-8")
        scores[i] = sp.get_score(i)
        types[i] = int(
            TokenType.UNKNOWN
            if sp.is_unknown(i)
            else TokenType.CONTROL
            if sp.is_control(i)
            else TokenType.UNUSED
            if sp.is_unused(i)
            else TokenType.BYTE
            if sp.is_byte(i)
            else TokenType.NORMAL
        )
    for key, data in ((tokenizer_config or {}).get("added_tokens_decoder") or {}).items():
        i, text = int(key), data["content"]
        if i >= vocab_size:
            continue
        if data.get("special") or _looks_special(text):
            types[i] = int(TokenType.CONTROL)
        else:
            text = text.replace("\u2581", " ")
            types[i] = int(TokenType.USER_DEFINED)
        scores[i] = -1000.0
        tokens[i] = text.encode("utf-8")
    return tokens, scores, types


def _special_vocab(files: dict[str, bytes], n_vocab: int, *, load_merges: bool) -> SpecialVocab:
    """``gguf.SpecialVocab`` over the tokenizer and config files (written to a scratch folder: it reads
    from a path)."""
    with tempfile.TemporaryDirectory(prefix="llama-convert-vocab-") as tmp, _quiet("gguf"):
        for name in _SPECIAL_FILES:
            if name in files:
                (Path(tmp) / name).write_bytes(files[name])
        try:
            return SpecialVocab(tmp, load_merges=load_merges, n_vocab=n_vocab)
        except Exception as exc:  # gguf's reader of files from strangers: any exception type is possible
            names = ", ".join(n for n in _SPECIAL_FILES if n in files)
            raise InputError(
                f"{names}: gguf cannot read the special tokens ({type(exc).__name__}: {exc}); save the tokenizer again."
            ) from None


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Library code does not print: gguf's warnings (e.g. that it does not model Llama's sentence-pair
    template, which llama.cpp never uses) would reach stderr through logging's last-resort handler."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def add_bpe_vocab(writer: GGUFWriter, files: dict[str, bytes], vocab_size: int, *, pre: str) -> None:
    """``tokenizer.ggml.*`` for a byte-level BPE tokenizer (llama.cpp's ``_set_vocab_gpt2``)."""
    tokens, types = bpe_tokens(json.loads(files["tokenizer.json"]), vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    _special_vocab(files, len(tokens), load_merges=True).add_to_gguf(writer, quiet=True)


def add_sentencepiece_vocab(writer: GGUFWriter, files: dict[str, bytes], model: Path, vocab_size: int) -> None:
    """``tokenizer.ggml.*`` for a SentencePiece tokenizer (llama.cpp's ``_set_vocab_sentencepiece``)."""
    config = json.loads(files["tokenizer_config.json"]) if "tokenizer_config.json" in files else None
    tokens, scores, types = sentencepiece_tokens(model, vocab_size, config)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    _special_vocab(files, len(tokens), load_merges=False).add_to_gguf(writer, quiet=True)
