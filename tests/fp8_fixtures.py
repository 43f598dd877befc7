"""FP8 checkpoints in Meta's layout, made from a bf16 one with fbgemm's row-wise rule (torch only), and
their exact bf16 twins.

fbgemm's ``quantize_fp8_per_row`` (the quantizer Meta's ``llama_models`` loader calls): per output row
``amax = max|w|`` (at least 1e-12), ``inv = 448 / amax``, ``q = e4m3(clamp(w · inv, ±448))`` (torch's
round-to-nearest-even), stored scale ``1 / inv``. The twin holds what the FP8 checkpoint *is*:
``(q.float() * scale[:, None]).to(bfloat16)`` in place of each float8 weight, every other tensor
unchanged, so converting the twin with any bf16 converter gives the reference for the FP8 source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from llama_convert.formats.meta.writer import write_checklist

__all__ = ["fbgemm_quantize", "make_fp8_llama3", "make_fp8_llama4"]

FP8_MAX = 448.0


def fbgemm_quantize(w: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (any float) → (float8_e4m3fn, float32 scale) with one scale per slice reduced over ``dim``."""
    x = w.float()
    amax = x.abs().amax(dim=dim, keepdim=True).clamp(min=1e-12)
    inv = torch.full_like(amax, FP8_MAX) / amax  # an IEEE division (torch's ``scalar / tensor`` is reciprocal × scalar)
    q = (x * inv).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, (1.0 / inv).squeeze(dim)


def _copy_small(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not p.name.startswith("consolidated.") and p.name != "checklist.chk":
            shutil.copy(p, dst / p.name)


def make_fp8_llama3(bf16: Path, fp8: Path, twin: Path) -> list[str]:
    """FP8 ``fp8/`` and its bf16 twin ``twin/`` from the bf16 Llama 3 checkpoint ``bf16/`` (as Meta's
    ``fp8_mixed``: FFN w1/w3/w2 of layers 1…n-2). Returns the quantized tensor names."""
    import json

    n_layers = json.loads((bf16 / "params.json").read_text())["n_layers"]
    _copy_small(bf16, fp8)
    _copy_small(bf16, twin)
    shards = sorted(bf16.glob("consolidated.*.pth"))
    names: list[str] = []
    for rank, path in enumerate(shards):
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v.clone() for k, v in state.items()}  # own storages (the synthesizer shares some)
        quantized, twin_state, scales = dict(state), dict(state), {}
        for layer in range(1, n_layers - 1):
            for key in ("w1", "w3", "w2"):
                name = f"layers.{layer}.feed_forward.{key}.weight"
                q, scale = fbgemm_quantize(state[name])
                quantized[name] = q
                scales[f"{layer}_feed_forward.{key}_{rank}"] = scale
                twin_state[name] = (q.float() * scale[:, None]).to(torch.bfloat16)
                if rank == 0:
                    names.append(name)
        torch.save(quantized, fp8 / path.name)
        torch.save(scales, fp8 / f"fp8_scales_{rank}.pt")
        torch.save(twin_state, twin / path.name)
    write_checklist(fp8)
    write_checklist(twin)
    return names


def make_fp8_llama4(bf16: Path, fp8: Path, twin: Path, moe_layers: list[int]) -> None:
    """Maverick-style FP8: the routed experts of ``moe_layers`` quantized as Meta's Llama 4 loader does —
    on ``param.transpose(1, 2)`` of the reference model's (e, D, F) / (e, F, D) weights, so the scale is per
    (expert, output column): [e, F/mp] for w1/w3, [e, D] for w2 (keys ``layers.L.feed_forward.experts.wN``).
    The float8 tensors keep the shipped 2-D names and shapes (``moe_w_in_eD_F`` [e·D, F/mp], …)."""
    import json

    params = json.loads((bf16 / "params.json").read_text())
    e, d = params["moe_args"]["num_experts"], params["dim"]
    _copy_small(bf16, fp8)
    _copy_small(bf16, twin)
    stored = {"w1": "moe_w_in_eD_F", "w3": "moe_w_swiglu_eD_F", "w2": "moe_w_out_eF_D"}
    for rank, path in enumerate(sorted(bf16.glob("consolidated.*.pth"))):
        state = torch.load(path, map_location="cpu", weights_only=True)
        quantized, twin_state, scales = dict(state), dict(state), {}
        for layer in moe_layers:
            for key, suffix in stored.items():
                name = f"layers.{layer}.feed_forward.experts.{suffix}"
                w = state[name]
                three = w.view(e, d, -1) if key != "w2" else w.view(e, -1, d)  # the model's (e, D, F) / (e, F, D)
                q, scale = fbgemm_quantize(three.transpose(1, 2), dim=-1)  # per (expert, output row of w^T)
                q = q.transpose(1, 2).contiguous()
                quantized[name] = q.reshape(w.shape)
                scales[f"layers.{layer}.feed_forward.experts.{key}"] = scale.contiguous()
                twin_state[name] = (q.float() * scale[:, None, :]).to(torch.bfloat16).reshape(w.shape)
        torch.save(quantized, fp8 / path.name)
        torch.save(scales, fp8 / f"fp8_scales_{rank}.pt")
        torch.save(twin_state, twin / path.name)
    write_checklist(fp8)
    write_checklist(twin)
