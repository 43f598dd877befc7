"""Shared fixtures: synthesized Meta checkpoints and Meta's own reference model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from llama_convert.testing.synth import PRESETS, SynthSpec, synthesize, write_small_sentencepiece


def tiny(preset: str, *, head_dim: int = 8, n_layers: int = 2, **changes) -> SynthSpec:
    """A release's preset shrunk in width and depth, keeping its head and KV-head counts and MP layout."""
    spec = PRESETS[preset]
    params = dict(spec.params)
    params.update(dim=params["n_heads"] * head_dim, n_layers=n_layers, multiple_of=32)
    params.update(changes.pop("params", {}))
    return spec.with_(params=params, **changes)


def make_checkpoint(root: Path, folder: str, spec: SynthSpec) -> Path:
    return synthesize(root / folder, spec)


# --- Meta's reference model -------------------------------------------------------------------------


def _init_model_parallel(tmp_root: Path) -> None:
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_root / 'gloo-rendezvous'}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)


@pytest.fixture(scope="session")
def model_parallel(tmp_path_factory) -> None:
    """fairscale model parallelism of size 1 over a gloo group, as Meta's reference code needs."""
    _init_model_parallel(tmp_path_factory.mktemp("gloo"))


META_SPLIT = {  # model-parallel concat dim of Meta tensors by suffix (reference doc, section 2)
    "wq.weight": 0,
    "wk.weight": 0,
    "wv.weight": 0,
    "wo.weight": 1,
    "w1.weight": 0,
    "w3.weight": 0,
    "w2.weight": 1,
    "output.weight": 0,
}


def merged_meta_state_dict(src: Path, embed_split: int) -> dict:
    """Merge Meta's shards with torch itself (independent of our reader), as float32."""
    import torch

    shards = [
        torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in sorted(src.glob("consolidated.*.pth"))
    ]
    merged = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        suffix = ".".join(name.split(".")[-2:])
        dim = embed_split if name == "tok_embeddings.weight" else META_SPLIT.get(suffix)
        parts = [s[name] for s in shards]
        merged[name] = (parts[0] if dim is None else torch.cat(parts, dim=dim)).float()
    return merged


def meta_reference_logits(
    src: Path,
    tokens: np.ndarray,
    *,
    embed_split: int,
    rope_theta: float | None = None,
    scaled_rope_factor: float | None = None,
) -> np.ndarray:
    """Logits of ``llama_models.llama3.model.Transformer`` (Meta's reference code) on the merged weights."""
    import json
    import types

    import torch
    from llama_models.llama3 import model as meta_model
    from llama_models.llama3.args import ModelArgs

    params = json.loads((src / "params.json").read_text())
    params = params.get("model", params) if "dim" not in params else params
    state = merged_meta_state_dict(src, embed_split)
    vocab = state["tok_embeddings.weight"].shape[0]
    args = ModelArgs(**{**params, "vocab_size": vocab}, max_seq_len=tokens.shape[1], max_batch_size=tokens.shape[0])
    if rope_theta is not None:
        args.rope_theta = rope_theta
    original = meta_model.apply_scaling
    if scaled_rope_factor is not None and scaled_rope_factor != 8:
        # Meta's reference hard-codes scale_factor = 8 (Llama 3.1); Meta confirmed 32 for Llama 3.2 1B/3B.
        # Swap only that constant in Meta's own function, keeping the rest of its code.
        code = original.__code__
        consts = tuple(scaled_rope_factor if (type(c) is int and c == 8) else c for c in code.co_consts)
        meta_model.apply_scaling = types.FunctionType(code.replace(co_consts=consts), original.__globals__)
    try:
        torch.set_default_dtype(torch.float32)
        model = meta_model.Transformer(args)
    finally:
        meta_model.apply_scaling = original
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(("cache_k", "cache_v")) for k in missing), missing
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(tokens), 0).float().numpy()


def hf_logits(dst: Path, tokens: np.ndarray) -> np.ndarray:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(dst, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(tokens)).logits.float().numpy()


def assert_logits_close(ours: np.ndarray, reference: np.ndarray, rel: float = 1e-4) -> None:
    assert ours.shape == reference.shape
    scale = float(np.abs(reference).max())
    err = float(np.abs(ours - reference).max())
    assert err <= rel * scale, f"max |Δlogit| {err:.3g} > {rel} × max |logit| {scale:.3g}"


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> Path:
    """A small SentencePiece BPE tokenizer.model trained with Llama's trainer settings (512 pieces)."""
    return write_small_sentencepiece(tmp_path_factory.mktemp("spm"))
