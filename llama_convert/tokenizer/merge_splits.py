"""Precomputed merges of Meta's published tiktoken vocabularies: where each token splits into its last merge.

Deriving the merge list of a 128k/200k-rank vocabulary runs tiktoken's merge loop on every token: about
1.5 CPU seconds, the largest fixed cost of converting a small model. Meta ships the same two vocabularies
(Llama 3.x and Llama 4) in every release, so their results are kept here, computed by the same derivation
and checked against it by the tests: one byte per token, the length of the left part of its last merge (0: no
merge), keyed by a hash of the token list. Any other vocabulary is derived as before.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["encode_splits", "precomputed_merges", "vocabulary_key"]

_PACKAGE = "llama_convert.tokenizer"
_FOLDER = "merge_splits"


def vocabulary_key(tokens: Sequence[bytes]) -> str:
    """A hash of the token list: its lengths (uint32, little-endian, rank order), then its bytes."""
    h = hashlib.sha256(np.fromiter(map(len, tokens), dtype="<u4", count=len(tokens)).tobytes())
    h.update(b"".join(tokens))
    return h.hexdigest()


def encode_splits(tokens: Sequence[bytes], merges: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The compressed split table of ``merges`` (derived from ``tokens``, one per built token, rank order)."""
    split = {left + right: len(left) for left, right in merges}
    if len(split) != len(merges) or any(not 0 < n < 256 for n in split.values()):
        raise ValueError("merges do not fit a one-byte split table")
    return zlib.compress(bytes(split.get(token, 0) for token in tokens), 9)


def precomputed_merges(tokens: Sequence[bytes]) -> list[tuple[bytes, bytes]] | None:
    """The merges of a known vocabulary, or None for any other."""
    resource = importlib.resources.files(_PACKAGE) / _FOLDER / f"{vocabulary_key(tokens)[:32]}.bin"
    if not resource.is_file():
        return None
    splits = zlib.decompress(resource.read_bytes())
    if len(splits) != len(tokens):
        return None
    return [(token[:n], token[n:]) for token, n in zip(tokens, splits, strict=True) if n]
