"""SentencePiece BPE ``tokenizer.model`` (Llama 1, Llama 2, Code Llama) → Hugging Face tokenizer files.

The ``tokenizer.json`` written here gives SentencePiece's own ``encode`` ids, leading spaces and runs
of whitespace included, where a Metaspace pre-tokenizer does not:

- SentencePiece's BPE encoder does no pre-tokenization. It normalizes the whole text (dummy prefix,
  spaces → ``▁``), splits it into characters (user-defined pieces matched whole), then merges the
  adjacent pair whose concatenation is the best-scoring piece, leftmost first, until none is left.
  The trainer's ``split_digits`` and ``allow_whitespace_only_pieces`` only shape the vocabulary:
  the encoder merges whatever pieces exist. So: a normalizer, no pre-tokenizer, and a BPE model
  that lists every split of every normal piece as a merge, ranked by that piece's score.
- Control pieces (``<s>``, ``</s>``) and ``<unk>`` are special added tokens, user-defined pieces
  added tokens matched on the normalized text, as SentencePiece matches them.

Known differences. Encoding: Hugging Face turns text that spells a control piece (``"<s>"``) into
that token, SentencePiece into characters; with user-defined pieces, a text that is exactly one of
them (``"▁<PRE>"``) gets no dummy prefix; SentencePiece breaks ties between equal piece scores by
position, a merge list by piece id (trained models have no ties). Decoding: a run of byte pieces that
is not valid UTF-8 becomes one U+FFFD per byte, where SentencePiece keeps the valid characters in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from ..errors import InputError, UnsupportedError
from ..formats.storage import as_source_path
from . import json_bytes

if TYPE_CHECKING:
    from sentencepiece.sentencepiece_model_pb2 import ModelProto

__all__ = ["spm_tokenizer_files"]

# ModelProto.SentencePiece.Type and TrainerSpec.ModelType values (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED = 1, 2, 3, 4, 5
_MODEL_TYPES = {1: "unigram", 2: "BPE", 3: "word", 4: "char"}
_BPE = 2
_SPACE = "▁"  # U+2581: SentencePiece's escaped space


def spm_tokenizer_files(tokenizer_model: Path, *, chat_template: str | None, context_length: int) -> dict[str, bytes]:
    """Return ``tokenizer.json``, ``tokenizer.model``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` (name → content) for a SentencePiece BPE ``tokenizer.model``."""
    data = as_source_path(tokenizer_model).read_bytes()
    proto = _parse_model(data, tokenizer_model)
    _check_model(proto, tokenizer_model)
    pieces, spec = proto.pieces, proto.trainer_spec
    special = {
        "bos_token": pieces[spec.bos_id].piece,
        "eos_token": pieces[spec.eos_id].piece,
        "unk_token": pieces[spec.unk_id].piece,
    }
    config: dict[str, Any] = {
        # PreTrainedTokenizerFast runs tokenizer.json as written. LlamaTokenizerFast (transformers 5)
        # keeps only its vocab and merges and rebuilds the rest around a Metaspace pre-tokenizer,
        # which drops the dummy prefix before a leading space: " Hi" would lose a "▁", whatever
        # `legacy` and `add_prefix_space` say.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return {
        "tokenizer.json": _build_tokenizer(proto).to_str(pretty=True).encode("utf-8"),
        "tokenizer.model": data,
        "tokenizer_config.json": json_bytes(config),
        "special_tokens_map.json": json_bytes(special),
    }


def _parse_model(data: bytes, path: Path) -> ModelProto:
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        proto.Clear()
    # Pieces come first in the file: a cut-off model can parse, but without its specs.
    if not (proto.pieces and proto.HasField("trainer_spec") and proto.HasField("normalizer_spec")):
        raise InputError(f"{path} is not a SentencePiece model, or is truncated; download tokenizer.model again.")
    return proto


def _check_model(proto: ModelProto, path: Path) -> None:
    """Refuse a model that is malformed, or that the Hugging Face pipeline cannot reproduce exactly."""
    pieces, spec, norm = proto.pieces, proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != _BPE:
        kind = _MODEL_TYPES.get(spec.model_type, f"type-{spec.model_type}")
        raise UnsupportedError(
            f"{path} is a SentencePiece {kind} model; only BPE models (Llama 1, Llama 2, Code Llama) are supported."
        )
    names = {p.piece for p in pieces}
    if len(names) != len(pieces):
        raise InputError(f"{path} defines a piece twice; download tokenizer.model again.")
    for role, index, kind in (
        ("unk", spec.unk_id, _UNKNOWN),
        ("bos", spec.bos_id, _CONTROL),
        ("eos", spec.eos_id, _CONTROL),
    ):
        if not 0 <= index < len(pieces) or pieces[index].type != kind:
            raise InputError(f"{path} has no {role} piece at {role}_id={index}; download tokenizer.model again.")
    bos = pieces[spec.bos_id].piece
    if not bos or any(c in ":$" or c.isspace() for c in bos):  # it goes into a TemplateProcessing template
        raise InputError(f"{path} has a bos piece {bos!r} that is not a token name; download tokenizer.model again.")
    if spec.byte_fallback and any(f"<0x{b:02X}>" not in names for b in range(256)):
        raise InputError(
            f"{path} enables byte fallback but lacks some of the 256 byte pieces; download tokenizer.model again."
        )
    unsupported = [
        feature
        for feature, used in (
            ("unused pieces", any(p.type == _UNUSED for p in pieces)),
            ("a normalization rule", bool(norm.precompiled_charsmap)),
            ("unescaped whitespace", not norm.escape_whitespaces),
            ("treat_whitespace_as_suffix", spec.treat_whitespace_as_suffix),
            ("a denormalizer", bool(proto.denormalizer_spec.precompiled_charsmap)),
        )
        if used
    ]
    if unsupported:
        raise UnsupportedError(
            f"{path} uses {', '.join(unsupported)}, which no Llama tokenizer does and Hugging Face "
            "tokenizers cannot reproduce exactly."
        )


def _build_tokenizer(proto: ModelProto) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes and decodes like SentencePiece with ``proto``."""
    pieces, spec, norm = proto.pieces, proto.trainer_spec, proto.normalizer_spec
    tokenizer = Tokenizer(
        BPE(
            vocab={p.piece: i for i, p in enumerate(pieces)},
            merges=_merges(pieces),
            unk_token=pieces[spec.unk_id].piece,
            byte_fallback=spec.byte_fallback,
            # Without byte fallback, SentencePiece gives one <unk> for a run of unknown characters.
            fuse_unk=True,
        )
    )
    user_defined = [p.piece for p in pieces if p.type == _USER_DEFINED]
    tokenizer.normalizer = _normalizer(
        dummy_prefix=norm.add_dummy_prefix,
        remove_extra_whitespaces=norm.remove_extra_whitespaces,
        user_defined=user_defined,
    )
    # Matched on the raw text, so the text after each one gets its own dummy prefix: Meta's chat code
    # encodes every turn separately between <s> and </s>, and the chat template spells them out.
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in pieces if p.type in (_CONTROL, _UNKNOWN)]
    )
    tokenizer.add_tokens([AddedToken(piece, special=False, normalized=True) for piece in user_defined])
    bos = pieces[spec.bos_id].piece
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0",
        pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, spec.bos_id)],
    )
    steps = [decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        # Remove the dummy prefix before turning "▁" into spaces, so that a leading byte-fallback
        # space (<0x20>) stays, as SentencePiece keeps it.
        steps.append(decoders.Strip(content=_SPACE, left=1, right=0))
    steps.append(decoders.Replace(_SPACE, " "))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _merges(pieces: Sequence[ModelProto.SentencePiece]) -> list[tuple[str, str]]:
    """Every split of every normal piece into two normal pieces, best score of the whole first.

    SentencePiece ranks a pair by the score of the piece it forms alone; pairs forming pieces of equal
    score, or the same piece, are ordered by piece id, then by the parts' ids.
    """
    ids = {p.piece: i for i, p in enumerate(pieces) if p.type == _NORMAL}
    ranked = []
    for piece, i in ids.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in ids and right in ids:
                ranked.append((-pieces[i].score, i, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _normalizer(
    *, dummy_prefix: bool, remove_extra_whitespaces: bool, user_defined: list[str]
) -> normalizers.Normalizer:
    """SentencePiece's identity normalization with its flags, step for step."""
    steps: list[normalizers.Normalizer] = []
    if remove_extra_whitespaces:
        # SentencePiece drops leading spaces, squeezes runs of spaces, and drops trailing "▁"
        # once spaces are escaped (so an input "▁" at the end goes too).
        steps += [normalizers.Replace(Regex(" +"), " "), normalizers.Replace(Regex(r"\A "), "")]
    if dummy_prefix:
        if user_defined:
            # Hugging Face also runs the normalizer over each added token's own text to find it in
            # normalized text; a plain prepend would look for "▁▁<PRE>" instead of "▁<PRE>". So
            # prepend to anything but a text that is exactly one user-defined piece.
            alternatives = "|".join(map(re.escape, user_defined))
            steps.append(normalizers.Replace(Regex(rf"\A(?!(?:{alternatives})\z)"), " "))
        else:
            steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", _SPACE))
    if remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(rf"{_SPACE}+\z"), ""))
    return normalizers.Sequence(steps)
