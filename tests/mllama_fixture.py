"""Tiny Llama 3.2 Vision checkpoints made with Meta's own reference model, saved as Meta ships them.

``build`` instantiates ``llama_models.llama3.multimodal.model.CrossAttentionTransformer`` (Meta's
reference code) at a shrunk size with random weights, rounds every weight to bfloat16, and writes
``consolidated.NN.pth`` shards split along the axes fairscale's layer types define (read from the
module tree, not from a table of ours), a flat ``params.json`` with the vision keys, Meta's Llama 3
``tokenizer.model`` and ``checklist.chk``. The same in-memory model (fp32, holding exactly the saved
bf16 values) is Meta's reference for the logits tests.

Shrunk by params.json: text width, heads, KV heads, layers, cross-attention layers, tile size
(``vision_chunk_size``, a multiple of the patch size 14). Shrunk by substituting one literal: Meta's
``CrossAttentionTransformerVision`` hard-codes the vision width 1280 (and passes no width to
``VisionEncoder``, whose default is 1280); the fixture swaps that constant for a small width in
Meta's own function, keeping the rest of its code. Release-size as Meta hard-codes them: 32 local +
8 global vision layers, 16 vision heads, patch 14, 4 tiles, intermediate layers 3, 7, 15, 23, 30,
8 learnable image-token rows, the vocabulary 128256 (the real tokenizer).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llama_convert.formats.meta.writer import write_checklist

VOCAB = 128256
TILE_IMAGE_TOKEN = 128256  # the id Meta's chat formatter gives <|image|> (HF's image_token_index)


@dataclass(frozen=True)
class VisionShape:
    """A shrunk Llama 3.2 Vision checkpoint. Real 11B: dim 4096, 32 heads / 8 KV, 32 layers, 8 cross,
    vision width 1280, tile 560, MP1. Real 90B: dim 8192, 64 heads / 8 KV, 80 layers, 20 cross, MP8."""

    name: str
    mp: int
    dim: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    n_cross: int
    vision_width: int = 32
    chunk: int = 28  # vision_chunk_size: 2 × 2 patches of 14 per tile
    multiple_of: int = 64
    ffn_dim_multiplier: float = 1.3
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """params.json, flat, with the keys (and order) of Meta's Llama 3.2 Vision downloads."""
        return {
            "dim": self.dim,
            "ffn_dim_multiplier": self.ffn_dim_multiplier,
            "multiple_of": self.multiple_of,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "n_layers": self.n_layers,
            "norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "use_scaled_rope": True,
            "vision_chunk_size": self.chunk,
            "vision_max_num_chunks": 4,
            "vision_num_cross_attention_layers": self.n_cross,
            "vocab_size": VOCAB,
            **self.extra,
        }


# 11B: every 4th of the self-attention layers gets a cross-attention layer (32 / 8), MP1.
SHAPE_11B = VisionShape("11B-shaped", mp=1, dim=128, n_heads=16, n_kv_heads=8, n_layers=8, n_cross=2)
# 90B: also every 4th (80 / 20), 8 query heads per KV head, sharded (MP2 here; Meta ships MP8).
SHAPE_90B = VisionShape("90B-shaped", mp=2, dim=128, n_heads=32, n_kv_heads=8, n_layers=8, n_cross=2, seed=1)
# 90B as Meta ships it, MP8: one KV head and one learnable image-token row per shard.
SHAPE_90B_MP8 = VisionShape("90B-shaped-MP8", mp=8, dim=128, n_heads=32, n_kv_heads=8, n_layers=8, n_cross=2, seed=2)


def default_tokenizer() -> Path:
    """Meta's Llama 3 tokenizer.model as shipped in the ``llama-models`` package (also Llama 3.2 Vision's)."""
    found = importlib.util.find_spec("llama_models")
    assert found is not None and found.submodule_search_locations, "llama-models is not installed"
    return Path(next(iter(found.submodule_search_locations))) / "llama3" / "tokenizer.model"


def _meta_multimodal() -> types.ModuleType:
    """Import Meta's multimodal model. Its module imports the image transform, which needs torchvision;
    torchvision cannot be installed beside the CPU torch here, and the transform is not used (the tests
    give both models the same pixel tensor), so a placeholder module stands in for it when it is absent."""
    name = "llama_models.llama3.multimodal.image_transform"
    if importlib.util.find_spec("torchvision") is None and name not in sys.modules:
        stub = types.ModuleType(name)

        class VariableSizeImageTransform:  # a placeholder, never called
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("Meta's image transform needs torchvision; give the model transformed tiles")

        stub.VariableSizeImageTransform = VariableSizeImageTransform  # type: ignore[attr-defined]
        sys.modules[name] = stub
    from llama_models.llama3.multimodal import model

    return model


def init_model_parallel(rendezvous: Path) -> None:
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)


def _vision_class(meta: types.ModuleType, width: int) -> type:
    """Meta's ``CrossAttentionTransformerVision`` with its vision-width literal 1280 replaced by ``width``."""
    original = meta.CrossAttentionTransformerVision
    if width == 1280:
        return original
    init = original.__init__
    consts = tuple(width if (type(c) is int and c == 1280) else c for c in init.__code__.co_consts)
    scope = {**init.__globals__, "VisionEncoder": functools.partial(meta.VisionEncoder, width=width)}
    new_init = types.FunctionType(init.__code__.replace(co_consts=consts), scope, "__init__", None, init.__closure__)
    return type(original.__name__, (original,), {"__init__": new_init})


def build_model(shape: VisionShape):
    """Meta's ``CrossAttentionTransformer`` at ``shape``, random bf16-representable weights, fp32, eval mode."""
    import torch
    from llama_models.llama3.args import ModelArgs

    meta = _meta_multimodal()
    args = ModelArgs(**shape.params(), max_seq_len=64, max_batch_size=1)
    torch.manual_seed(shape.seed)
    torch.set_default_dtype(torch.float32)
    original = meta.CrossAttentionTransformerVision
    meta.CrossAttentionTransformerVision = _vision_class(meta, shape.vision_width)
    try:
        model = meta.CrossAttentionTransformer(args)
    finally:
        meta.CrossAttentionTransformerVision = original
    generator = torch.Generator().manual_seed(shape.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gate", "gate_attn", "gate_ffn", "gate_ffwd")):
                # Meta initialises gates to 0 (tanh(0) = 0 switches the branch off): give them weight.
                values = 0.4 + 0.5 * torch.rand(p.shape, generator=generator)
                values *= torch.where(torch.rand(p.shape, generator=generator) < 0.3, -1.0, 1.0)
            elif p.ndim == 1 and ("norm" in name or "ln_" in name):
                values = 1.0 + 0.1 * torch.randn(p.shape, generator=generator)
            elif p.ndim == 1:  # biases, class embedding
                values = 0.2 * torch.randn(p.shape, generator=generator)
            else:
                values = torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1])
            p.copy_(values.to(torch.bfloat16).float())
    model.setup_cache(1, device=torch.device("cpu"), dtype=torch.float32)
    model.eval()
    return model


def _split_axes(model) -> dict[str, int | None]:
    """Model-parallel split axis of every state-dict entry, from fairscale's layer types."""
    from fairscale.nn.model_parallel.layers import (
        ColumnParallelLinear,
        ParallelEmbedding,
        RowParallelLinear,
        VocabParallelEmbedding,
    )

    axes: dict[str, int | None] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for pname, _ in module.named_parameters(recurse=False):
            key = prefix + pname
            if isinstance(module, ColumnParallelLinear | VocabParallelEmbedding):
                axes[key] = 0  # output features (weight rows and bias) / vocabulary rows
            elif isinstance(module, RowParallelLinear):
                axes[key] = 1 if pname == "weight" else None  # input features; the bias is added after the reduce
            elif isinstance(module, ParallelEmbedding):
                axes[key] = 1
            else:
                axes[key] = None
    return axes


def save_checkpoint(
    model, shape: VisionShape, dst: Path, *, tokenizer: Path | None, hub_single_name: bool = False
) -> Path:
    """Write ``model`` as Meta ships it: bf16 shards split per fairscale's axes, params.json, tokenizer, checklist.

    ``hub_single_name``: name an MP1 shard ``consolidated.pth`` as the Hub's ``original/`` folder does.
    """
    import torch

    dst.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    axes = _split_axes(model)
    unknown = set(state) - set(axes)
    assert not unknown, f"state-dict entries without a parameter: {sorted(unknown)[:5]}"
    for rank in range(shape.mp):
        shard: dict[str, Any] = {}
        for key, value in state.items():
            axis = axes[key]
            if axis is not None and shape.mp > 1:
                value = value.chunk(shape.mp, dim=axis)[rank]
            shard[key] = value.to(torch.bfloat16).clone()
        name = "consolidated.pth" if (hub_single_name and shape.mp == 1) else f"consolidated.{rank:02d}.pth"
        torch.save(shard, dst / name)
    (dst / "params.json").write_text(json.dumps(shape.params(), indent=4))
    if tokenizer is not None:
        (dst / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    write_checklist(dst)
    return dst


def meta_text_logits(model, tokens: np.ndarray) -> np.ndarray:
    """Logits of Meta's model on a text-only prompt (its ``text_only_inference`` path), as in its generator."""
    import torch

    tokens_t = torch.from_numpy(tokens).long()
    with torch.inference_mode():
        xattn_caches, masks, full_row = model.compute_vision_tokens_masks(
            batch_images=[[]], batch_masks=[[]], total_len=tokens.shape[1], device=tokens_t.device
        )
        positions = torch.arange(0, tokens.shape[1], dtype=torch.long)
        out = model.forward(positions, tokens_t, masks, full_row, xattn_caches, text_only_inference=True)
    return out.float().numpy()


def meta_image_logits(
    model, tokens: np.ndarray, pixel_values: np.ndarray, aspect_ratio: tuple[int, int], num_chunks: int
) -> np.ndarray:
    """Logits of Meta's model on a prompt with one image given as already-transformed tiles.

    Follows ``CrossAttentionTransformer.compute_vision_tokens_masks`` step by step with Meta's functions,
    except that the tiles come in as ``pixel_values`` ([max_tiles, 3, H, W], the tile order of Meta's
    transform) instead of from Meta's PIL transform, so both models see the same pixels.
    """
    import torch

    meta = _meta_multimodal()
    tokens_t = torch.from_numpy(tokens).long()
    total_len = tokens.shape[1]
    images = torch.from_numpy(pixel_values).float()[None, None]  # [bsz, n_images, tiles, 3, H, W]
    ar = torch.tensor([[list(aspect_ratio)]], dtype=torch.int64)
    from llama_models.llama3.chat_format import create_vision_mask

    vision_mask = create_vision_mask(tokens[0].tolist(), TILE_IMAGE_TOKEN)
    with torch.inference_mode():
        vision_tokens = model.vision_model(images, ar)
        bsz, image_token_dim = vision_tokens.shape[0], vision_tokens.shape[-1]
        xattn_caches = torch.stack(
            [
                layer.compute_xattn_kv_cache(vision_tokens.view(bsz, -1, image_token_dim))
                for layer in model.text_model.cross_attention_layers
            ]
        )
        padded = meta._pad_masks([vision_mask], [[num_chunks]], total_len, model.max_num_chunks)
        cross_masks, full_row = model.text_model._get_xattn_mask(
            num_tokens=total_len,
            text_device=vision_tokens.device.type,
            text_dtype=next(model.text_model.parameters()).dtype,
            vision_tokens=vision_tokens,
            cross_attention_masks=padded,
        )
        positions = torch.arange(0, total_len, dtype=torch.long)
        out = model.forward(positions, tokens_t, cross_masks, full_row, xattn_caches, text_only_inference=False)
    return out.float().numpy()
