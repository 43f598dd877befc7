"""A model written by transformers' save_pretrained ("fine-tuned": random weights) → Meta's format:
Meta's reference model on our shards computes the logits transformers computes on the input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_logits_close, hf_logits, meta_reference_logits

from llama_convert import convert
from llama_convert.testing.synth import bundled_llama3_tokenizer

_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def save_random_llama(
    dst: Path,
    *,
    factor: float | None,
    tie: bool,
    vocab: int = 256,
    max_shard_size: str = "5GB",
    dtype: str = "bfloat16",
) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=176,  # no release's pair: the FFN parameters are searched
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "factor": factor, "rope_theta": 500000.0, **_ROPE}
        if factor
        else {"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=tie,
        bos_token_id=128000,
        eos_token_id=128001,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():  # "fine-tuned": nothing left at its initial value
            p.add_(torch.randn_like(p) * 0.05)
    model.to(getattr(torch, dtype)).save_pretrained(dst, max_shard_size=max_shard_size)


@pytest.mark.parametrize(
    ("factor", "tie", "mp", "shard"),
    [(8.0, False, 1, "5GB"), (8.0, False, 2, "100KB"), (32.0, True, 1, "5GB"), (None, False, 4, "5GB")],
)
def test_save_pretrained_model_gives_meta_reference_logits(tmp_path, model_parallel, factor, tie, mp, shard):
    hf = tmp_path / "hf"
    save_random_llama(hf, factor=factor, tie=tie, max_shard_size=shard)
    assert (hf / "model.safetensors.index.json").exists() == (shard != "5GB")
    meta = tmp_path / "meta"
    result = convert(hf, meta, to="meta", mp=mp, tokenizer=False)
    params = json.loads((meta / "params.json").read_text())
    assert params["use_scaled_rope"] is True if factor else "use_scaled_rope" not in params
    assert params["n_kv_heads"] == max(2, mp)  # MP4 > 2 KV heads: each repeated, as Meta's MP16 release does
    assert sorted(p.name for p in meta.glob("*.pth")) == [f"consolidated.{i:02d}.pth" for i in range(mp)]
    if tie:
        assert any("tied embedding" in n for n in result.notes)
    tokens = np.random.default_rng(1).integers(0, 256, size=(2, 12))
    ours = meta_reference_logits(meta, tokens, embed_split=0, scaled_rope_factor=factor)
    assert_logits_close(ours, hf_logits(hf, tokens))


def test_float32_model_is_rounded_to_bfloat16_as_torch_rounds(tmp_path, model_parallel):
    """A float32 save → Meta's bfloat16: the logits of the model rounded by torch itself."""
    import torch
    from transformers import LlamaForCausalLM

    hf = tmp_path / "hf"
    save_random_llama(hf, factor=8.0, tie=False, dtype="float32")
    result = convert(hf, tmp_path / "meta", to="meta", tokenizer=False)
    assert "weights rounded from float32 to bfloat16 (Meta's dtype for the family); pass --dtype to keep another" in (
        result.notes
    )
    model = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).to(torch.bfloat16).to(torch.float32).eval()
    tokens = np.random.default_rng(2).integers(0, 256, size=(1, 10))
    with torch.inference_mode():
        expected = model(torch.from_numpy(tokens)).logits.numpy()
    assert_logits_close(meta_reference_logits(tmp_path / "meta", tokens, embed_split=0), expected)


def test_transformers_4x_config_and_inv_freq_buffers_are_accepted(tmp_path):
    """A 4.x-style config (rope_theta + rope_scaling, torch_dtype) and saved rotary_emb.inv_freq buffers."""
    from safetensors.numpy import save_file

    hf = tmp_path / "hf"
    save_random_llama(hf, factor=8.0, tie=False)
    config = json.loads((hf / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope, torch_dtype=config.pop("dtype", "bfloat16"))
    (hf / "config.json").write_text(json.dumps(config))
    convert(hf, tmp_path / "v5", to="meta", tokenizer=False)
    save_file({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}, hf / "extra.safetensors")
    index = {"metadata": {}, "weight_map": {"model.layers.0.self_attn.rotary_emb.inv_freq": "extra.safetensors"}}
    from safetensors import safe_open

    with safe_open(hf / "model.safetensors", "pt") as f:
        index["weight_map"].update({k: "model.safetensors" for k in f.keys()})  # noqa: SIM118
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    result = convert(hf, tmp_path / "v4", to="meta", tokenizer=False)
    assert any("ignored 1 tensor" in n for n in result.notes)
    assert (tmp_path / "v4" / "params.json").read_bytes() == (tmp_path / "v5" / "params.json").read_bytes()
    for name in ("consolidated.00.pth",):
        assert (tmp_path / "v4" / name).read_bytes() == (tmp_path / "v5" / name).read_bytes()


@pytest.mark.skipif(bundled_llama3_tokenizer() is None, reason="llama_models not installed")
def test_tokenizer_json_saved_by_transformers_rebuilds_meta_tokenizer_model(tmp_path):
    """No tokenizer.model in the HF folder: rebuilt from tokenizer.json, byte-identical to Meta's file."""
    from transformers import PreTrainedTokenizerFast

    from llama_convert.families.llama.tokenizer import llama3_tokenizer_files

    meta_file = bundled_llama3_tokenizer()
    files = llama3_tokenizer_files(meta_file, version="3.1", instruct=True, context_length=131072)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_bytes(files["tokenizer.json"])
    hf = tmp_path / "hf"
    save_random_llama(hf, factor=8.0, tie=False, vocab=128256)
    PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json")).save_pretrained(hf)
    assert not (hf / "tokenizer.model").exists()
    result = convert(hf, tmp_path / "meta", to="meta")
    assert "tokenizer.model rebuilt from tokenizer.json (tiktoken ranks = token ids)" in result.notes
    assert (tmp_path / "meta" / "tokenizer.model").read_bytes() == meta_file.read_bytes()
