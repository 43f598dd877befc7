"""The precomputed merges of Meta's two published vocabularies equal the derivation they shortcut."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_convert.tokenizer.merge_splits import encode_splits, precomputed_merges, vocabulary_key
from llama_convert.tokenizer.tiktoken_bpe import compute_merges, derive_merges, read_ranks

llama_models = pytest.importorskip("llama_models")
VOCABULARIES = {
    "llama3": Path(llama_models.__file__).parent / "llama3" / "tokenizer.model",
    "llama4": Path(llama_models.__file__).parent / "llama4" / "tokenizer.model",
}


@pytest.mark.parametrize("name", list(VOCABULARIES))
def test_precomputed_merges_equal_the_derivation(name):
    tokens = read_ranks(VOCABULARIES[name])
    known = precomputed_merges(tokens)
    assert known is not None, f"no precomputed table for Meta's {name} vocabulary"
    computed = compute_merges(tokens)
    assert known == computed
    assert encode_splits(tokens, computed)  # the table the package ships can be remade from the derivation
    assert derive_merges(tokens) == computed


def test_any_other_vocabulary_is_derived():
    tokens = read_ranks(VOCABULARIES["llama3"])
    changed = [*tokens[:-1], tokens[-1] + b"!"]
    assert vocabulary_key(changed) != vocabulary_key(tokens)
    assert precomputed_merges(changed) is None
    assert derive_merges(changed)[:1000] == compute_merges(tokens)[:1000]
