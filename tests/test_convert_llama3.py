"""End to end for every Llama 3.x release shape: zero-flag conversion, transformers loads it, and its
fp32 logits equal those of Meta's reference model on the merged original weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_logits_close, hf_logits, make_checkpoint, meta_reference_logits, tiny

import llama_convert

# (folder name as Meta's download names it, preset, expected version, instruct, extra synth options)
RELEASES = [
    ("Meta-Llama-3-8B", "llama3-8b", "3", False, {}),
    ("Meta-Llama-3-70B-Instruct", "llama3-70b", "3", True, {"head_dim": 4}),
    ("Llama3.1-8B-Instruct", "llama3.1-8b", "3.1", True, {}),
    ("Meta-Llama-3.1-70B", "llama3.1-70b", "3.1", False, {"head_dim": 4}),
    ("Llama-3.1-405B-MP8", "llama3.1-405b-mp8", "3.1", False, {"head_dim": 4}),
    ("Llama-3.1-405B-Instruct-MP16", "llama3.1-405b-mp16", "3.1", True, {"head_dim": 4}),
    ("Llama3.2-1B", "llama3.2-1b", "3.2", False, {"tokenizer": "llama3"}),
    ("Llama3.2-3B-Instruct", "llama3.2-3b", "3.2", True, {}),
    ("Llama3.3-70B-Instruct", "llama3.3-70b", "3.3", True, {"head_dim": 4}),
]


@pytest.mark.parametrize(("folder", "preset", "version", "instruct", "extra"), RELEASES, ids=[r[0] for r in RELEASES])
def test_release_converts_and_matches_meta_reference(
    tmp_path, model_parallel, folder, preset, version, instruct, extra
):
    extra = dict(extra)
    head_dim = extra.pop("head_dim", 8)
    synth = tiny(preset, head_dim=head_dim, **{"tokenizer": "small-tiktoken", **extra})
    src = make_checkpoint(tmp_path, folder, synth)
    dst = tmp_path / "hf"

    result = llama_convert.convert(src, dst)

    spec = result.spec
    assert (spec.release.version, spec.instruct, spec.mp) == (version, instruct, synth.mp)
    assert result.verified
    config = json.loads((dst / "config.json").read_text())
    params = synth.params
    assert config["num_attention_heads"] == params["n_heads"]
    # MP16: Meta's resharder duplicated the 8 KV heads; the published config has 8.
    assert config["num_key_value_heads"] == (8 if preset.endswith("mp16") else params["n_kv_heads"])
    assert config["tie_word_embeddings"] is (version == "3.2")
    files = set(result.files)
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.vocab_size, size=(2, 12), dtype=np.int64)
    factor = 32.0 if version == "3.2" else 8.0
    reference = meta_reference_logits(src, tokens, embed_split=0, scaled_rope_factor=factor)
    assert_logits_close(hf_logits(dst, tokens), reference)
