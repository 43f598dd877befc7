"""Llama 3.x ``tokenizer.model`` (tiktoken BPE ranks) → Hugging Face tokenizer files.

Meta's file lists each token's bytes (base64) and its rank. tiktoken encodes a pre-token by first
looking the whole pre-token up, then repeatedly merging the adjacent pair whose concatenation has
the lowest rank. The Hugging Face form reproduces that with a byte-level BPE model whose merge
list holds, for every token tiktoken can build by merging, the pair its algorithm joins last,
ordered by the rank of the result; ``ignore_merges`` gives the whole-pre-token lookup.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import InputError
from . import json_bytes
from .merge_splits import precomputed_merges

__all__ = [
    "LLAMA3_PATTERN",
    "build_tokenizer",
    "bytes_to_unicode",
    "compute_merges",
    "derive_merges",
    "named_specials",
    "read_ranks",
    "tiktoken_tokenizer_files",
    "token_entry",
    "tokenizer_config",
]

# Meta's pre-tokenizer regex (``pat_str`` of the Llama 3 tokenizer).
LLAMA3_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def read_ranks(path: Path) -> list[bytes]:
    """Read Meta's ``base64(token) rank`` lines; return token bytes indexed by rank."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror}); check the file exists and is readable.") from None
    fast = _read_ranks_in_order(data)
    if fast is not None:
        return fast
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        token, rank = _parse_line(path, number, line)
        if rank in by_rank:
            raise InputError(f"{path} line {number} repeats rank {rank}; download tokenizer.model again.")
        if token in seen:
            raise InputError(
                f"{path} line {number} repeats the token of line {seen[token]}; download tokenizer.model again."
            )
        by_rank[rank] = token
        seen[token] = number
    _check_complete(path, by_rank)
    return [by_rank[rank] for rank in range(len(by_rank))]


def _read_ranks_in_order(data: bytes) -> list[bytes] | None:
    """The common case in bulk: one ``base64 rank`` line per rank 0, 1, 2, … and every token distinct.

    Returns None for anything else, which the line-by-line reader then explains.
    """
    try:
        fields = [line.split(b" ") for line in data.splitlines()]
        if fields and fields[-1] == [b""]:
            fields.pop()
        tokens = [binascii.a2b_base64(token, strict_mode=True) for token, _ in fields]
        in_order = all(rank == str(i).encode() for i, (_, rank) in enumerate(fields))
    except (ValueError, binascii.Error):
        return None
    if not in_order or len(set(tokens)) != len(tokens):
        return None
    present = set(tokens)
    if any(bytes([b]) not in present for b in range(256)):
        return None
    return tokens


def _parse_line(path: Path, number: int, line: bytes) -> tuple[bytes, int]:
    parts = line.split()
    try:
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError
        return base64.b64decode(parts[0], validate=True), int(parts[1])
    except (ValueError, binascii.Error):
        shown = line[:60].decode("utf-8", "replace")
        raise InputError(
            f"{path} line {number} is not 'base64-token rank' (found {shown!r}); download tokenizer.model again."
        ) from None


def _check_complete(path: Path, by_rank: dict[int, bytes]) -> None:
    # Meta's file has exactly NUM_BASE_TOKENS ranks; fine-tuned or test tokenizers may have other
    # counts, and the special tokens then follow the last rank, as in Meta's tokenizer class.
    if not by_rank or max(by_rank) != len(by_rank) - 1:
        raise InputError(
            f"{path} holds {len(by_rank)} tokens with ranks up to {max(by_rank, default=-1)}, "
            "not the contiguous ranks 0… of a tiktoken BPE file; download tokenizer.model again."
        )
    present = set(by_rank.values())
    missing = sum(1 for b in range(256) if bytes([b]) not in present)
    if missing:
        raise InputError(
            f"{path} lacks {missing} of the 256 single-byte tokens byte-level BPE needs; "
            "download tokenizer.model again."
        )


def derive_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge that builds each multi-byte token, in rank order of the result.

    tiktoken's merge loop run on a token's own bytes either ends in that token, and its last
    step is the merge a Hugging Face BPE needs (inside a longer pre-token the bytes of the token
    evolve exactly as they do alone until it forms), or it gets stuck: such a token is only ever
    produced as a whole pre-token, which ``ignore_merges`` covers, and gets no merge. In Meta's
    file 127,066 tokens end with two lower-ranked parts, 90 are first reachable through a part
    ranked above themselves, and 588 are whole-pre-token only. Meta's published vocabularies come
    precomputed (``merge_splits``).
    """
    known = precomputed_merges(tokens)
    if known is not None:
        return known
    return compute_merges(tokens)


def compute_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """``derive_merges`` without the precomputed tables: tiktoken's loop on every multi-byte token."""
    ranks = {token: rank for rank, token in enumerate(tokens)}
    merges: list[tuple[bytes, bytes]] = []
    for token in tokens:
        if len(token) > 1:
            last = _last_merge(token, ranks)
            if last is not None:
                merges.append(last)
    return merges


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """Run tiktoken's merge loop on ``token``; return its final pair if the loop builds ``token``."""
    parts = [token[i : i + 1] for i in range(len(token))]
    no_rank = len(ranks)
    while len(parts) > 2:
        best_rank, best = no_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], no_rank)
            if rank < best_rank:
                best_rank, best = rank, i
        if best < 0:
            return None
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer(
    tokens: list[bytes], special_names: list[str], *, pattern: str, bos: str, add_bos: bool = True
) -> Tokenizer:
    """Assemble the ``tokenizers`` fast tokenizer equivalent to Meta's tiktoken encoding.

    ``pattern`` is the tiktoken pre-tokenizer regex, ``bos`` the token the post-processor prepends (with
    ``add_bos``; without it the post-processor adds nothing); special tokens take the ids after the last rank,
    in the order given.
    """
    # One character per byte: latin-1 then one C-level translate, and a merge's parts are slices of its token.
    table = {b: ord(ch) for b, ch in bytes_to_unicode().items() if b != ord(ch)}
    texts = [token.decode("latin-1").translate(table) for token in tokens]
    vocab = {text: rank for rank, text in enumerate(texts)}
    text_of = dict(zip(tokens, texts, strict=True))
    merges = []
    for left, right in derive_merges(tokens):
        whole = text_of.get(left + right) or (left + right).decode("latin-1").translate(table)
        merges.append((whole[: len(left)], whole[len(left) :]))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    if add_bos:
        bos_id = len(tokens) + special_names.index(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    else:
        # What transformers' own mllama converter writes: byte-level offsets, no added token.
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([_added_token(name) for name in special_names])
    return tokenizer


def tiktoken_tokenizer_files(
    tokenizer_model: Path,
    special_names: list[str],
    *,
    bos: str,
    eos: str,
    context_length: int,
    chat_template: str | None,
    pattern: str = LLAMA3_PATTERN,
    pad: str | None = None,
    tokens: list[bytes] | None = None,
    extra_config: dict[str, object] | None = None,
    add_bos: bool = True,
) -> dict[str, bytes]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for a tiktoken file whose
    special tokens (``special_names``, in id order) follow its last rank (``tokens``: the ranks already read).
    ``add_bos``: whether encoding with the tokenizer's defaults prepends ``bos``."""
    tokens = read_ranks(tokenizer_model) if tokens is None else tokens
    tokenizer = build_tokenizer(tokens, special_names, pattern=pattern, bos=bos, add_bos=add_bos)
    config = tokenizer_config(
        special_names,
        len(tokens),
        bos=bos,
        eos=eos,
        context_length=context_length,
        template=chat_template,
        pad=pad,
        extra=extra_config,
    )
    special_map = {"bos_token": token_entry(bos), "eos_token": token_entry(eos)}
    if pad is not None:
        special_map["pad_token"] = token_entry(pad)
    return {
        "tokenizer.json": tokenizer.to_str(pretty=True).encode("utf-8"),
        "tokenizer_config.json": json_bytes(config),
        "special_tokens_map.json": json_bytes(special_map),
    }


def _added_token(name: str) -> AddedToken:
    return AddedToken(name, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)


def named_specials(named: dict[int, str], count: int) -> list[str]:
    """``count`` special-token names: ``named`` at their offsets, ``<|reserved_special_token_N|>`` elsewhere with
    N counting up from 0 in id order (the Llama 3 convention)."""
    reserved = iter(range(count))
    return [
        named[offset] if offset in named else f"<|reserved_special_token_{next(reserved)}|>" for offset in range(count)
    ]


def token_entry(name: str) -> dict[str, object]:
    """A special token as the tokenizer files list it."""
    return {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def tokenizer_config(
    names: Iterable[str],
    first_id: int,
    *,
    bos: str,
    eos: str,
    context_length: int,
    template: str | None,
    pad: str | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """``tokenizer_config.json`` of a tiktoken-based tokenizer whose special ``names`` start at ``first_id``."""
    config: dict[str, object] = {
        "added_tokens_decoder": {
            str(first_id + offset): {**token_entry(name), "special": True} for offset, name in enumerate(names)
        },
        "bos_token": bos,
    }
    if template is not None:
        config["chat_template"] = template
    config.update(
        {
            # The published Llama 3 repositories carry ``true``, which makes transformers 4.x strip
            # spaces before punctuation when decoding (current versions ignore it with a warning).
            # ``false`` decodes exactly as Meta's tokenizer in every version.
            "clean_up_tokenization_spaces": False,
            "eos_token": eos,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": context_length,
            **({"pad_token": pad} if pad is not None else {}),
            "tokenizer_class": "PreTrainedTokenizerFast",
            **(extra or {}),
        }
    )
    return config
