"""Llama 1, Llama 2 (+chat) and Code Llama: zero-flag conversion; logits equal Meta's reference model
(``llama_models``' Transformer computes these architectures when rope_theta is the family's and
scaling is off); configs as published."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_logits_close, hf_logits, make_checkpoint, meta_reference_logits, tiny
from safetensors import safe_open

import llama_convert

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

# (folder as Meta named it, preset, version, instruct, rope_theta of the family, head_dim)
RELEASES = [
    ("7B", "llama1-7b", "1", False, 10000.0, 8),
    ("llama-2-7b", "llama2-7b", "2", False, 10000.0, 8),
    ("llama-2-13b-chat", "llama2-13b", "2", True, 10000.0, 8),
    ("llama-2-70b", "llama2-70b", "2", False, 10000.0, 4),
    ("CodeLlama-7b-Instruct", "codellama-7b", "code", True, 1e6, 8),
    ("CodeLlama-34b", "codellama-34b", "code", False, 1e6, 4),
]
CONTEXT = {"1": 2048, "2": 4096, "code": 16384}


@pytest.mark.parametrize(
    ("folder", "preset", "version", "instruct", "theta", "head_dim"), RELEASES, ids=[r[0] for r in RELEASES]
)
def test_release_converts_and_matches_meta_reference(
    tmp_path, model_parallel, sentencepiece_model, folder, preset, version, instruct, theta, head_dim
):
    synth = tiny(preset, head_dim=head_dim, tokenizer=sentencepiece_model, vocab_size=512)
    src = make_checkpoint(tmp_path, folder, synth)
    dst = tmp_path / "hf"

    result = llama_convert.convert(src, dst)

    spec = result.spec
    assert (spec.release.version, spec.instruct, spec.mp, spec.vocab_size) == (version, instruct, synth.mp, 512)
    config = json.loads((dst / "config.json").read_text())
    assert config["max_position_embeddings"] == CONTEXT[version]
    assert config["rope_theta"] == theta
    assert config["rope_scaling"] is None
    assert config["torch_dtype"] == ("float16" if version == "1" else "bfloat16")
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    generation = json.loads((dst / "generation_config.json").read_text())
    if version == "2":
        assert generation["max_length"] == 4096 and generation["pad_token_id"] == 0
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"} <= set(result.files)
    with safe_open(dst / "model.safetensors", "np") as weights:
        names = set(weights.keys())
    assert len(names) == 3 + 9 * synth.params["n_layers"]  # rope.freqs (Llama 1) is not carried over
    assert not any("rope" in n for n in names)

    tokens = np.random.default_rng(1).integers(0, 512, size=(2, 12), dtype=np.int64)
    reference = meta_reference_logits(src, tokens, embed_split=1, rope_theta=theta)
    assert_logits_close(hf_logits(dst, tokens), reference)
