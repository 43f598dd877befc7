"""End to end for every Llama 3.x release shape: zero-flag conversion, transformers loads it, and its
fp32 logits equal those of Meta's reference model on the merged original weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_logits_close, hf_logits, make_checkpoint, meta_reference_logits, tiny

import llama_convert

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

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


def test_mp16_kv_heads_that_are_not_copies_are_kept(tmp_path, model_parallel):
    synth = tiny("llama3.1-405b-mp16", head_dim=4, tokenizer="small-tiktoken", duplicate_kv=False)
    src = make_checkpoint(tmp_path, "Llama-3.1-405B-MP16", synth)
    result = llama_convert.convert(src, tmp_path / "hf")
    assert result.spec.n_kv_heads == 16
    assert any("not pairwise copies" in note for note in result.notes)
    tokens = np.random.default_rng(2).integers(0, result.spec.vocab_size, size=(1, 9), dtype=np.int64)
    reference = meta_reference_logits(src, tokens, embed_split=0, scaled_rope_factor=8.0)
    assert_logits_close(hf_logits(tmp_path / "hf", tokens), reference)


def test_mp16_copies_that_differ_in_a_middle_layer_stop_the_conversion(tmp_path):
    from llama_convert.errors import ConversionError
    from llama_convert.testing.synth import synthesize

    synth = tiny("llama3.1-405b-mp16", head_dim=4, n_layers=3, tokenizer="small-tiktoken")
    src = synthesize(tmp_path / "Llama-3.1-405B-MP16", synth)
    # Shard 1 gets a wv head of its own in layer 1 only: layers 0 and 2 still look resharded.
    other = synthesize(tmp_path / "other", synth.with_(seed=7))
    import torch

    shard = torch.load(src / "consolidated.01.pth", weights_only=True)
    shard["layers.1.attention.wv.weight"] = torch.load(other / "consolidated.01.pth", weights_only=True)[
        "layers.1.attention.wv.weight"
    ]
    torch.save(shard, src / "consolidated.01.pth")
    with pytest.raises(ConversionError, match="--keep-kv-heads"):
        llama_convert.convert(src, tmp_path / "hf", verify=False)
    assert not (tmp_path / "hf").exists()
    result = llama_convert.convert(src, tmp_path / "hf", verify=False, fold_kv_heads=False)
    assert result.spec.n_kv_heads == 16


def test_llama32_output_that_differs_from_the_embedding_stays_untied(tmp_path, model_parallel):
    synth = tiny("llama3.2-1b", tokenizer="small-tiktoken", tie_output=False)
    src = make_checkpoint(tmp_path, "Llama3.2-1B", synth)
    result = llama_convert.convert(src, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert any("kept as an untied lm_head.weight" in note for note in result.notes)
    tokens = np.random.default_rng(3).integers(0, result.spec.vocab_size, size=(1, 9), dtype=np.int64)
    reference = meta_reference_logits(src, tokens, embed_split=0, scaled_rope_factor=32.0)
    assert_logits_close(hf_logits(tmp_path / "hf", tokens), reference)
