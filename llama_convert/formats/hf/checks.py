"""The shapes of a Hugging Face folder's JSON files, checked before anything reads a value from them.

``config.json``, ``generation_config.json``, ``tokenizer.json`` and ``tokenizer_config.json`` come from
strangers: a value of the wrong type, a NaN, a negative or absurd size would otherwise surface far away as a
``TypeError`` or an allocation taken on trust. Only the keys the converters read are checked, by their JSON
type and range; unknown keys pass. Each refusal is one sentence naming the file, the key and the value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...errors import InputError

__all__ = ["check_config", "check_generation_config", "check_tokenizer_config", "check_tokenizer_json"]

_INT_LIMIT = 1 << 31
# Sizes far above any released model (405B: hidden 16384, 126 layers; vocabularies up to 202048).
_SIZES = {
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1 << 11,
    "num_attention_heads": 1 << 12,
    "num_key_value_heads": 1 << 12,
    "head_dim": 1 << 14,
    "vocab_size": 1 << 23,
    "max_position_embeddings": _INT_LIMIT - 1,
}
_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_cache")
_STRINGS = ("model_type", "hidden_act", "torch_dtype", "dtype", "rope_type")
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _fail(path: Path, key: str, value: Any, expected: str) -> InputError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return InputError(f"{path}: {key!r} is {shown}, expected {expected}; save the model again.")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(path: Path, key: str, value: Any, *, limit: int, low: int = 1) -> None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= limit:
        raise _fail(path, key, value, f"a whole number from {low} to {limit}")


def _check_ids(path: Path, key: str, value: Any) -> None:
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _INT_LIMIT for v in values):
        raise _fail(path, key, value, "a token id or a list of token ids")


def _check_keys(doc: dict[str, Any], path: Path, prefix: str = "") -> None:
    for key, limit in _SIZES.items():
        if doc.get(key) is not None:
            _check_int(path, prefix + key, doc[key], limit=limit)
    for key in _POSITIVE_FLOATS:
        value = doc.get(key)
        if value is not None and not (_number(value) and math.isfinite(value) and value > 0):
            raise _fail(path, prefix + key, value, "a positive finite number")
    for key in _BOOLS:
        if doc.get(key) is not None and not isinstance(doc[key], bool):
            raise _fail(path, prefix + key, doc[key], "true or false")
    for key in _STRINGS:
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise _fail(path, prefix + key, doc[key], "a string")
    for key in _TOKEN_IDS:
        if key in doc:
            _check_ids(path, prefix + key, doc[key])
    architectures = doc.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    ):
        raise _fail(path, prefix + "architectures", architectures, "a list of class names")
    rope = doc.get("rope_scaling")
    if rope is not None:
        if not isinstance(rope, dict):
            raise _fail(path, prefix + "rope_scaling", rope, "an object or null")
        for key, value in rope.items():
            if key in ("rope_type", "type") and not isinstance(value, str):
                raise _fail(path, f"{prefix}rope_scaling.{key}", value, "a string")
            positive = _number(value) and math.isfinite(value) and value > 0
            if key in _ROPE_NUMBERS and value is not None and not positive:
                raise _fail(path, f"{prefix}rope_scaling.{key}", value, "a positive finite number")


def _object(doc: Any, path: Path) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InputError(f"{path} does not hold a JSON object; save the model again.")
    return doc


def check_config(doc: Any, path: Path) -> dict[str, Any]:
    """``config.json``, and the ``text_config`` / ``vision_config`` objects multimodal models nest in it."""
    doc = _object(doc, path)
    _check_keys(doc, path)
    for nested in ("text_config", "vision_config"):
        if nested in doc and doc[nested] is not None:
            if not isinstance(doc[nested], dict):
                raise _fail(path, nested, doc[nested], "an object")
            _check_keys(doc[nested], path, f"{nested}.")
    return doc


def check_generation_config(doc: Any, path: Path) -> dict[str, Any]:
    doc = _object(doc, path)
    for key in _TOKEN_IDS:
        if key in doc:
            _check_ids(path, key, doc[key])
    for key in ("temperature", "top_p", "top_k", "max_length", "max_new_tokens", "repetition_penalty"):
        value = doc.get(key)
        if value is not None and not (_number(value) and math.isfinite(value) and value >= 0):
            raise _fail(path, key, value, "a non-negative finite number")
    if doc.get("do_sample") is not None and not isinstance(doc["do_sample"], bool):
        raise _fail(path, "do_sample", doc["do_sample"], "true or false")
    return doc


def _check_token(path: Path, key: str, token: Any) -> None:
    """An added token: ``{"id": n, "content": "...", "special": bool, ...}`` (``id`` absent in
    tokenizer_config.json's ``added_tokens_decoder``, whose keys are the ids)."""
    if not isinstance(token, dict) or not isinstance(token.get("content"), str):
        raise _fail(path, key, token, 'an object with a "content" string')
    if "id" in token:
        _check_int(path, f"{key}.id", token["id"], limit=_INT_LIMIT - 1, low=0)
    for flag in ("special", "lstrip", "rstrip", "normalized", "single_word"):
        if token.get(flag) is not None and not isinstance(token[flag], bool):
            raise _fail(path, f"{key}.{flag}", token[flag], "true or false")


def check_tokenizer_json(doc: Any, path: Path) -> dict[str, Any]:
    """``tokenizer.json`` as the tokenizers library saves it: the model's vocabulary and merges, the added
    tokens, and objects (or null) for the pipeline's stages."""
    doc = _object(doc, path)
    model = doc.get("model")
    if not isinstance(model, dict):
        raise _fail(path, "model", model, "an object")
    if model.get("type") is not None and not isinstance(model["type"], str):
        raise _fail(path, "model.type", model["type"], "a string")
    vocab = model.get("vocab")
    if model.get("type", "BPE") == "BPE" and not isinstance(vocab, dict):
        raise _fail(path, "model.vocab", vocab, "an object of token ids (a BPE model)")
    if isinstance(vocab, dict):
        bad = next((t for t, i in vocab.items() if not isinstance(i, int) or isinstance(i, bool) or i < 0), None)
        if bad is not None:
            raise _fail(path, f"model.vocab[{bad!r}]", vocab[bad], "a token id")
        if vocab and max(vocab.values()) >= _SIZES["vocab_size"]:
            raise _fail(path, "model.vocab", max(vocab.values()), f"token ids below {_SIZES['vocab_size']}")
    elif vocab is not None and not isinstance(vocab, list):
        raise _fail(path, "model.vocab", vocab, "an object of token ids")
    merges = model.get("merges")
    if merges is not None:
        if not isinstance(merges, list):
            raise _fail(path, "model.merges", merges, "a list of merges")
        for merge in merges:
            pair = isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge)
            if not (isinstance(merge, str) or pair):
                raise _fail(path, "model.merges", merge, "merges as 'a b' strings or [a, b] pairs")
    added = doc.get("added_tokens")
    if added is not None:
        if not isinstance(added, list):
            raise _fail(path, "added_tokens", added, "a list")
        for i, token in enumerate(added):
            _check_token(path, f"added_tokens[{i}]", token)
            if "id" not in token:
                raise _fail(path, f"added_tokens[{i}]", token, 'an object with an "id"')
    for stage in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"):
        if doc.get(stage) is not None and not isinstance(doc[stage], dict):
            raise _fail(path, stage, doc[stage], "an object or null")
    return doc


def check_tokenizer_config(doc: Any, path: Path) -> dict[str, Any]:
    """``tokenizer_config.json``: special tokens, ``add_*_token`` flags, added tokens, the chat template."""
    doc = _object(doc, path)
    decoder = doc.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise _fail(path, "added_tokens_decoder", decoder, "an object")
        for key, token in decoder.items():
            if not (key.isascii() and key.isdigit() and int(key) < _INT_LIMIT):
                raise _fail(path, "added_tokens_decoder", key, "token ids as keys")
            _check_token(path, f"added_tokens_decoder[{key!r}]", token)
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = doc.get(key)
        token = isinstance(value, dict) and isinstance(value.get("content"), str)
        if value is not None and not isinstance(value, str) and not token:
            raise _fail(path, key, value, "a token string")
    for key in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "legacy"):
        if doc.get(key) is not None and not isinstance(doc[key], bool):
            raise _fail(path, key, doc[key], "true or false")
    template = doc.get("chat_template")
    if template is not None and not isinstance(template, str):
        named = isinstance(template, list) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
            for t in template
        )
        if not named:
            raise _fail(path, "chat_template", template, "a template string")
    length = doc.get("model_max_length")
    if length is not None and not (_number(length) and length >= 0):
        raise _fail(path, "model_max_length", length, "a non-negative number")
    return doc
