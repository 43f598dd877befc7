"""Hugging Face ``tokenizer.json`` (byte-level BPE) → Meta's tiktoken ``tokenizer.model`` (the way back).

Meta's file lists every base token as ``base64(token bytes) rank``, one per line, rank = id; the
special tokens are not in it (Meta's tokenizer class appends them after the last rank). The
Hugging Face vocabulary holds the same tokens as GPT-2 byte-level strings, so the token bytes come
back through the inverse of the GPT-2 byte map.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsupportedError
from .tiktoken_bpe import bytes_to_unicode

__all__ = ["tiktoken_model_from_tokenizer_json"]


def _fail(path: Path, why: str) -> InputError:
    return InputError(f"{path} {why}; copy the release's tokenizer.model into the folder instead.")


def tiktoken_model_from_tokenizer_json(path: Path, *, vocab_size: int | None = None) -> bytes:
    """The bytes of Meta's ``tokenizer.model`` for a Llama 3-style byte-level BPE ``tokenizer.json``.

    Base tokens are the vocabulary entries that are not special added tokens; they must hold the
    contiguous ids 0…N-1 and the special tokens the ids after them (Meta's layout), else we refuse.
    """
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"cannot be read as JSON ({exc})") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedError(
            f"{path} is not a byte-level BPE tokenizer (Llama 3 style); copy the release's tokenizer.model instead."
        )
    specials = {int(t["id"]) for t in data.get("added_tokens") or [] if t.get("special")}
    # The GPT-2 map sends each byte to one character; translating back to latin-1 characters of the same
    # ordinal makes ``encode("latin-1")`` return the token's bytes (C speed for 128k tokens).
    # Characters below 256 outside the map's image are dropped, so that they show as a length change.
    to_latin1: dict[int, str | None] = {c: None for c in range(256)}
    to_latin1.update({ord(ch): chr(b) for b, ch in bytes_to_unicode().items()})
    by_id: dict[int, bytes] = {}
    for text, token_id in model["vocab"].items():
        if token_id in specials:
            continue
        try:
            token = text.translate(to_latin1).encode("latin-1")
        except UnicodeEncodeError:
            token = b""
        if len(token) != len(text):
            raise _fail(path, f"has token {text!r} that is not a byte-level string")
        by_id[int(token_id)] = token
    n = len(by_id)
    if n == 0 or max(by_id) != n - 1:
        raise _fail(path, f"has {n} base tokens that do not hold the ids 0…{n - 1}")
    if specials and min(specials) < n:
        raise _fail(path, f"has special token id {min(specials)} among the base tokens (ids below {n})")
    if len(set(by_id.values())) != n:
        raise _fail(path, "maps two ids to the same bytes")
    if vocab_size is not None and n + len(specials) > vocab_size:
        raise _fail(
            path, f"has {n + len(specials)} tokens, more than the model's vocab_size {vocab_size} (config.json)"
        )
    return "".join(f"{base64.b64encode(by_id[i]).decode()} {i}\n" for i in range(n)).encode()
