"""Tiny Llama 4 checkpoints in the layout Meta ships, made with Meta's reference model.

``llama_models.llama4.model.Transformer`` is built at shrunk widths (CPU, fp32, fairscale model
parallelism of size 1), randomly initialised with bfloat16-exact values, and its state is turned
into what a download holds:

* each rank's slice is cut along the axis its fairscale module owns (``ColumnParallelLinear`` /
  ``VocabParallelEmbedding``: rows, ``RowParallelLinear``: columns, routed experts: their F axis),
  read from the module types, not from a table of ours;
* the load hooks of Meta's model are inverted on every rank: fused ``wqkv`` = [q; k; v],
  ``mlp.fc1_weight`` = [w1; w3], 2-D routed-expert tensors ``moe_w_*``, TransformerEngine-style
  norm names, the shared expert's ``*_FD`` names;
* shards are written with ``torch.save`` as ``consolidated.NN.pth`` (bfloat16), beside
  ``params.json``, Meta's Llama 4 ``tokenizer.model`` and ``checklist.chk``.

``reference_logits`` loads a folder back the way Meta's code does (its resharder
``llama_models.checkpoint.reshard_mp`` merges the shards, its load hooks unfuse them) and returns
fp32 logits. The fixture's own test checks those equal the random model's logits, so the shipped
layout is exactly what Meta's loader expects.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import importlib.resources
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llama_convert.formats.meta.writer import write_checklist

TOKENIZER_MODEL = Path(str(importlib.resources.files("llama_models") / "llama4" / "tokenizer.model"))
VOCAB = 202_048  # Meta's Llama 4 tokenizer: 200,000 ranks + 2,048 special tokens

# Shrunk, non-published widths; every other key is the release's value, except the two lengths
# shrunk so that short test sequences exercise them (chunked attention, attention temperature).
_VISION = {
    "image_size": {"height": 56, "width": 56},
    "patch_size": {"height": 14, "width": 14},
    "dim": 32,
    "n_layers": 2,
    "n_heads": 2,
    "mlp_ratio": 4.0,
    "output_dim": 48,
    "pixel_shuffle_ratio": 0.5,
}
_COMMON = {
    "dim": 64,
    "n_layers": 4,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": VOCAB,
    "multiple_of": 32,
    "ffn_dim_multiplier": 1.2,
    "ffn_exp": 4.0,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "nope_layer_interval": 4,
    "attention_chunk_size": 4,
    "attn_temperature_tuning": True,
    "floor_scale": 4,
    "attn_scale": 0.1,
}
PARAMS: dict[str, dict[str, Any]] = {
    "scout": {
        **_COMMON,
        "use_scaled_rope": True,
        "use_qk_norm": True,
        "moe_args": {
            "num_experts": 4,
            "capacity_factor": 1.0,
            "auto_scale_F": True,
            "top_k": 1,
            "interleave_moe_layer_step": 1,
        },
        "vision_args": _VISION,
    },
    "maverick": {
        **_COMMON,
        "use_scaled_rope": False,
        "use_qk_norm": False,
        "moe_args": {
            "num_experts": 6,
            "capacity_factor": 1.0,
            "auto_scale_F": True,
            "top_k": 1,
            "interleave_moe_layer_step": 2,
        },
        "vision_args": _VISION,
    },
}
# Expert statistics Meta's shards carry besides the weights (dropped by every loader).
STATISTICS = ("feed_forward.global_gate_stats_3E", "feed_forward.running_gate_stats_3E")


# --- Meta's reference model on CPU ------------------------------------------------------------------


def init_model_parallel(tmp_root: Path) -> None:
    """fairscale model parallelism of size 1 over a gloo group, as Meta's reference code needs."""
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_root / 'gloo-rendezvous'}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)


@contextlib.contextmanager
def _cuda_calls_stay_on_cpu() -> Iterator[None]:
    """Meta's Attention allocates its KV cache with ``.cuda()``; keep it on the CPU.

    A TorchFunctionMode (torch's documented override hook) turns ``Tensor.cuda`` into identity for
    the duration of model construction only; nothing in torch or Meta's code is modified.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.cuda:
                return args[0]
            return func(*args, **(kwargs or {}))

    with _Mode():
        yield


def build_reference(params: dict[str, Any], *, max_seq_len: int = 64, max_batch_size: int = 2):
    """Meta's ``Transformer`` for ``params`` in fp32 on the CPU (parameters uninitialised)."""
    import torch
    from llama_models.llama4.args import ModelArgs
    from llama_models.llama4.model import Transformer

    args = ModelArgs(**params, max_seq_len=max_seq_len, max_batch_size=max_batch_size)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with _cuda_calls_stay_on_cpu():
            model = Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    return model.float().eval()


def randomize(model, seed: int) -> None:
    """Random weights, rounded to bfloat16 so that shipping them in bf16 loses nothing."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight"))):
                value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif p.ndim == 1:
                value = 0.1 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p.shape[-1] if "experts" not in name or name.endswith("w2") else p.shape[-2]
                value = torch.randn(p.shape, generator=gen) / max(fan_in, 1) ** 0.5
            p.copy_(value.to(torch.bfloat16).float())


# --- model state → shipped layout ---------------------------------------------------------------------


def reference_models(first_seed: int) -> dict[str, Any]:
    """A randomized Scout-like and Maverick-like reference model (seeds ``first_seed`` and the next)."""
    out = {}
    for seed, kind in enumerate(("scout", "maverick")):
        model = build_reference(PARAMS[kind])
        randomize(model, seed=first_seed + seed)
        out[kind] = model
    return out


def _split_axes(model) -> dict[str, int]:
    """Model-parallel axis of every parameter, read from the fairscale module that owns it."""
    from fairscale.nn.model_parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from llama_models.llama4.moe import Experts

    axes: dict[str, int] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            axes.update({prefix + n: 0 for n, _ in module.named_parameters(recurse=False)})
        elif isinstance(module, RowParallelLinear):
            axes[prefix + "weight"] = 1  # the bias is replicated
        elif isinstance(module, Experts):
            axes.update({prefix + "w1": 2, prefix + "w3": 2, prefix + "w2": 1})
    return axes


def _rank_slice(tensor, axis: int | None, mp: int, rank: int):
    if axis is None:
        return tensor
    size = tensor.shape[axis] // mp
    return tensor.narrow(axis, rank * size, size)


def _ship_rank(state: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Invert Meta's load hooks on one rank's state (names and fusions of a download)."""
    import torch

    out: dict[str, Any] = {}
    taken: set[str] = set()

    def take(name: str):
        taken.add(name)
        return state[name]

    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        out[p + "attention.wqkv.weight"] = torch.cat(
            [take(p + "attention.wq.weight"), take(p + "attention.wk.weight"), take(p + "attention.wv.weight")]
        )
        out[p + "attention.wqkv.layer_norm_weight"] = take(p + "attention_norm.weight")
        out[p + "attention.wo.weight"] = take(p + "attention.wo.weight")
        f = p + "feed_forward."
        if f + "router_DE" in state:
            out[f + "norm.weight"] = take(p + "ffn_norm.weight")
            out[f + "router_DE"] = take(f + "router_DE")
            w1, w2, w3 = take(f + "experts.w1"), take(f + "experts.w2"), take(f + "experts.w3")
            out[f + "experts.moe_w_in_eD_F"] = w1.reshape(-1, w1.shape[-1])
            out[f + "experts.moe_w_out_eF_D"] = w2.reshape(-1, w2.shape[-1])
            out[f + "experts.moe_w_swiglu_eD_F"] = w3.reshape(-1, w3.shape[-1])
            out[f + "w_in_shared_FD.weight"] = take(f + "shared_expert.w1.weight")
            out[f + "w_out_shared_DF.weight"] = take(f + "shared_expert.w2.weight")
            out[f + "w_swiglu_FD.weight"] = take(f + "shared_expert.w3.weight")
            n_experts = params["moe_args"]["num_experts"]
            for stat in STATISTICS:
                out[p + stat] = torch.zeros(3, n_experts)
        else:
            out[f + "mlp.layer_norm_weight"] = take(p + "ffn_norm.weight")
            out[f + "mlp.fc1_weight"] = torch.cat([take(f + "w1.weight"), take(f + "w3.weight")])
            out[f + "mlp.fc2_weight"] = take(f + "w2.weight")
    for name, value in state.items():  # embeddings, output, norm, vision: shipped under their own names
        if name not in taken:
            out[name] = value
    return out


def shipped_shards(model, params: dict[str, Any], mp: int) -> list[dict[str, Any]]:
    """The ``mp`` state dicts of a download: each rank's slices, in the shipped layout, bfloat16."""
    import torch

    state = {k: v.detach() for k, v in model.state_dict().items()}
    axes = _split_axes(model)
    shards = []
    for rank in range(mp):
        ranked = {name: _rank_slice(value, axes.get(name), mp, rank) for name, value in state.items()}
        shipped = _ship_rank(ranked, params)
        shards.append({k: v.to(torch.bfloat16).contiguous().clone() for k, v in shipped.items()})
    return shards


def write_checkpoint(
    folder: Path,
    params: dict[str, Any],
    shards: list[dict[str, Any]],
    *,
    extra_state: bool = False,
    tokenizer: bool = True,
) -> Path:
    """Save shards, params.json, tokenizer.model and checklist.chk as Meta ships them."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for rank, shard in enumerate(shards):
        if extra_state:
            # TransformerEngine leaves serialized module state in the shards as io.BytesIO objects.
            shard = dict(shard)
            for i in range(params["n_layers"]):
                for key in ("attention.wqkv._extra_state", "attention.wo._extra_state"):
                    shard[f"layers.{i}.{key}"] = io.BytesIO(b"\x80\x02}q\x00.")
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    (folder / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    if tokenizer:
        (folder / "tokenizer.model").write_bytes(TOKENIZER_MODEL.read_bytes())
    write_checklist(folder)
    return folder


# The fixed-seed checkpoints llama.cpp's GGUF files were captured from (benchmarks/compat_llama4_gguf.py →
# tests/data/gguf_llama4_llamacpp.json): case → (kind, MP, seed, Meta folder name).
GGUF_CASES = {
    "scout": ("scout", 1, 40, "Llama-4-Scout-17B-16E-Instruct"),
    "maverick": ("maverick", 2, 41, "Llama-4-Maverick-17B-128E-Instruct"),
}


def make_gguf_case(case: str, root: Path) -> Path:
    """The Meta checkpoint of GGUF case ``case`` in ``root``."""
    kind, mp, seed, folder = GGUF_CASES[case]
    return make_checkpoint(root / folder, kind, mp=mp, seed=seed, params=gguf_params(kind))


def gguf_params(kind: str) -> dict[str, Any]:
    """``PARAMS[kind]`` with 3 vision layers: llama.cpp's converter names the vision adapter's fc1/fc2 through
    its block-number template, so it cannot convert a vision tower of fewer than 3 layers."""
    params = PARAMS[kind]
    return {**params, "vision_args": {**params["vision_args"], "n_layers": 3}}


def make_checkpoint(
    folder: Path, kind: str, *, mp: int, seed: int = 0, params: dict[str, Any] | None = None, **options: Any
) -> Path:
    """A tiny ``kind`` ("scout" or "maverick") checkpoint with ``mp`` shards in ``folder`` (``params``:
    other model arguments than ``PARAMS[kind]``)."""
    params = params or PARAMS[kind]
    model = build_reference(params)
    randomize(model, seed)
    return write_checkpoint(folder, params, shipped_shards(model, params, mp), **options)


# --- loading a folder the way Meta's code does ------------------------------------------------------


def load_like_meta(folder: Path) -> dict[str, Any]:
    """Merge a folder's shards with Meta's resharder (as its generation code does for MP 1)."""
    import torch
    from llama_models.checkpoint import convert_moe_weights, reshard_mp

    params = json.loads((folder / "params.json").read_text())
    paths = sorted(folder.glob("consolidated.*.pth"))
    torch.serialization.add_safe_globals([io.BytesIO, codecs.encode])  # as Meta's generation.py
    states = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]
    states = [{k: v for k, v in s.items() if not isinstance(v, io.BytesIO)} for s in states]
    if len(states) == 1:
        return states[0]
    states = [convert_moe_weights(s, params["moe_args"]["num_experts"]) for s in states]
    return reshard_mp(states, size=1, rank=0, repeat_qk_qv=1)


def reference_from_folder(folder: Path, *, max_seq_len: int = 64):
    """Meta's model loaded from a folder through its own resharder and load hooks (fp32)."""
    params = json.loads((folder / "params.json").read_text())
    model = build_reference(params, max_seq_len=max_seq_len)
    state = {k: v.float() for k, v in load_like_meta(folder).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing, missing
    assert all(k.endswith(STATISTICS) for k in unexpected), unexpected
    return model


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
    """fp32 logits of Meta's model on a text-only batch."""
    import torch
    from llama_models.llama4.datatypes import TransformerInput

    with torch.inference_mode():
        out = model(TransformerInput(tokens=torch.from_numpy(tokens), tokens_position=0))
    return out.logits.float().numpy()


def sample_tokens(n: int, *, seed: int = 1, batch: int = 2) -> np.ndarray:
    """Random ids over the whole vocabulary (embedding rows of every shard get used)."""
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, n), dtype=np.int64)


def cpu_threads() -> None:
    """Keep torch to the cores the test run shares."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@functools.lru_cache(maxsize=2)
def tokenizer_files(instruct: bool = True) -> dict[str, bytes]:
    """Our Llama 4 tokenizer files for Meta's tokenizer.model, built once per test run (~10 s)."""
    from llama_convert.families.llama4.tokenizer import llama4_tokenizer_files

    return llama4_tokenizer_files(TOKENIZER_MODEL, instruct=instruct, context_length=10485760 if instruct else 262144)
