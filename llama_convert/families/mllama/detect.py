"""Recognise a Llama 3.2 Vision checkpoint from evidence: params.json's vision keys and the tensor names
agree, the tokenizer is Meta's tiktoken file; names only tell Guard 3 Vision and base from instruct."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ...dtypes import DType
from ...errors import InputError, ShapeMismatchError, UnsupportedError
from ...formats.meta.folder import MetaFolder
from ...formats.meta.torch_zip import TorchCheckpoint
from ...plan import assembled_shape
from ...tokenizer import detect_tokenizer_kind
from ..base import Evidence, Hints, ModelSpec
from ..naming import check_snapshot_config, instruct_from_names
from .layout import recipes
from .params import VISION_HEADS, VisionParams, is_vision_params, parse_vision_params
from .tokenizer import Variant

__all__ = ["MllamaSpec", "recognise"]

_VISION_TENSOR = "vision_model.vision_encoder.class_embedding"
_TEXT_TENSOR = "text_model.tok_embeddings.weight"
_GUARD = re.compile(r"guard[-_ ]?3", re.I)
_RELEASE_NAME = re.compile(r"llama[-_ ]?3[._-]?2|vision", re.I)
_SIZES = {(4096, 32): "11B", (8192, 80): "90B"}
_MAX_MP = 8  # above 8 shards Meta's code replicates KV heads (never shipped)
_RELEASE_BECAUSE = (
    "params.json has vision_chunk_size and cross-attention layers; "
    "the shards hold vision_model.* and text_model.cross_attention_layers.*"
)


@dataclass(frozen=True)
class MllamaSpec(ModelSpec):
    """A Llama 3.2 Vision checkpoint: its shapes and which published variant it is."""

    params: VisionParams
    variant: Variant  # "base", "instruct" or "guard"
    size: str


def _snapshot_instruct(hints: Hints) -> bool | None:
    """What a Hub snapshot's own files say: several eos ids (end of turn too) mean instruct."""
    text_config = hints.hf_config.get("text_config") if hints.hf_config else None
    for config in (hints.hf_generation_config, text_config):
        if isinstance(config, dict) and "eos_token_id" in config:
            return isinstance(config["eos_token_id"], list) and len(config["eos_token_id"]) > 1
    return None


def _variant(hints: Hints) -> tuple[Variant, Evidence, list[str]]:
    guard = next((n for n in hints.variant_names if _GUARD.search(n)), None)
    if guard is not None and hints.instruct is None:
        return "guard", Evidence("variant", "Llama Guard 3 Vision", f"the name {guard!r}"), []
    instruct, evidence, notes = instruct_from_names(
        hints, release_name=_RELEASE_NAME, snapshot_instruct=_snapshot_instruct(hints)
    )
    return ("instruct" if instruct else "base"), evidence, notes


def _check_snapshot(folder: MetaFolder, hints: Hints, p: VisionParams) -> None:
    """A Hub snapshot's config.json beside original/ must describe the same model."""
    config = hints.hf_config
    if not config:
        return
    if config.get("model_type") not in (None, "mllama"):
        raise InputError(
            f"the snapshot's config.json is a {config.get('model_type')!r} model but {folder.root} holds a Llama 3.2 "
            "Vision checkpoint; the Hugging Face files and original/ belong to different models."
        )
    text = {
        "hidden_size": p.dim,
        "num_hidden_layers": p.n_layers + p.n_cross,
        "num_attention_heads": p.n_heads,
        "num_key_value_heads": p.n_kv_heads,
        "vocab_size": p.vocab_size,
    }
    check_snapshot_config(folder.root, config.get("text_config"), text)
    check_snapshot_config(folder.root, config.get("vision_config"), {"hidden_size": p.vision_width})


def _check_shards(folder: MetaFolder, checkpoints: list[TorchCheckpoint], p: VisionParams, dtype: DType) -> None:
    """Every shard holds exactly the tensors the recipes read, and they assemble to the expected shapes."""
    mp = len(checkpoints)
    for what, count in (("heads", p.n_heads), ("KV heads", p.n_kv_heads), ("vision heads", VISION_HEADS)):
        if count % mp:
            raise InputError(f"{folder.root}: {mp} shards do not divide the {count} {what}; download every shard.")
    if mp > _MAX_MP:
        raise UnsupportedError(f"{folder.root} holds {mp} shards; Llama 3.2 Vision ships as MP1 (11B) or MP8 (90B).")
    table = recipes(p, dtype, dtype)
    needed = {part.source for r in table for part in r.parts}
    for ckpt in checkpoints:
        present = set(ckpt.tensors)
        missing = sorted(needed - present)
        if missing:
            raise ShapeMismatchError(
                f"{ckpt.path} lacks {missing[0]}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                + "; the file is damaged or params.json belongs to another model."
            )
        extra = sorted(present - needed)
        if extra:
            raise UnsupportedError(
                f"{ckpt.path} holds {extra[0]}, which Llama 3.2 Vision does not have "
                "(quantized checkpoints are not supported; convert the bf16 release)."
            )
        dtypes = {ckpt.tensors[name].dtype for name in present}
        if dtypes != {dtype}:
            raise UnsupportedError(f"{folder.root} mixes weight dtypes ({', '.join(sorted(map(str, dtypes)))}).")
    for recipe in table:
        shape = assembled_shape(recipe, checkpoints)
        if math.prod(shape) != math.prod(recipe.shape):
            raise ShapeMismatchError(
                f"{folder.root}: {recipe.source} assembles to {list(shape)} over {mp} shard(s), but params.json "
                f"implies {list(recipe.shape)}; check that params.json belongs to these shards."
            )


def recognise(folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> MllamaSpec | None:
    """A spec if this is a Llama 3.2 Vision checkpoint, None if it is not one; raises if it is but is unusable."""
    first = checkpoints[0]
    by_params = is_vision_params(folder.raw_params)
    by_tensors = _VISION_TENSOR in first.tensors or _TEXT_TENSOR in first.tensors
    if not by_params and not by_tensors:
        return None
    if by_params != by_tensors:
        found = "vision keys" if by_params else "no vision keys"
        names = "Llama 3.2 Vision tensor names" if by_tensors else "text-only tensor names"
        raise InputError(
            f"{folder.params_path} has {found} but {first.path.name} has {names}; "
            "params.json and the shards belong to different models."
        )
    if folder.tokenizer is None or detect_tokenizer_kind(folder.tokenizer) != "tiktoken":
        raise InputError(
            f"{folder.root} has no Llama 3 tokenizer.model (looked beside params.json and one folder up); "
            "copy Meta's tokenizer.model there."
        )
    mp = len(checkpoints)
    shapes = {name: ref.shape for name, ref in first.tensors.items()}
    p = parse_vision_params(folder.raw_params, shapes, folder.params_path, mp=mp)
    dtype = first.tensors[_TEXT_TENSOR].dtype
    _check_shards(folder, checkpoints, p, dtype)
    _check_snapshot(folder, hints, p)
    variant, variant_evidence, notes = _variant(hints)
    count = _parameter_count(p)
    size = _SIZES.get((p.dim, p.n_layers)) or (f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M")
    evidence = (
        Evidence("release", "Llama 3.2 Vision", _RELEASE_BECAUSE),
        Evidence("tokenizer", "tiktoken (Llama 3) + <|image|> at 128256", folder.tokenizer.name),
        variant_evidence,
        Evidence("model parallel", f"MP{mp}", f"{mp} consolidated shard(s)"),
    )
    title = {"base": f"Llama 3.2 {size} Vision", "instruct": f"Llama 3.2 {size} Vision Instruct"}.get(
        variant, f"Llama Guard 3 {size} Vision"
    )
    summary = (
        f"{p.n_layers} + {p.n_cross} cross-attention layers, dim {p.dim}, {p.n_heads} heads / {p.n_kv_heads} KV heads, "
        f"vocab {p.vocab_size} + {p.image_rows} image rows; vision encoder {p.vision_layers} + "
        f"{p.vision_global_layers} layers of width {p.vision_width}, tiles of {p.tile_size}px (max {p.max_tiles})"
    )
    return MllamaSpec(
        family="mllama",
        name=title,
        folder=folder,
        mp=mp,
        source_dtype=dtype,
        instruct=variant != "base",
        evidence=evidence,
        summary=summary,
        parameter_count=count,
        notes=tuple(notes),
        params=p,
        variant=variant,
        size=size,
    )


def _parameter_count(p: VisionParams) -> int:
    hd, w = p.head_dim, p.vision_width
    attn = p.dim * hd * (2 * p.n_heads + 2 * p.n_kv_heads)
    ffn = 3 * p.dim * p.intermediate_size
    text = p.n_layers * (attn + ffn + 2 * p.dim) + p.n_cross * (attn + ffn + 2 * p.dim + 2 * hd + 2)
    text += (2 * p.vocab_size + p.image_rows + 1) * p.dim
    block = 4 * w * w + 8 * w * w + 5 * w + 4 * w
    vision = (p.vision_layers + p.vision_global_layers) * block + 2 * p.vision_global_layers
    vision += w * 3 * 14 * 14 + w + (p.max_tiles**2 + 1) * p.patches * w + 2 * p.max_tiles**2 * w + 4 * w + 3
    return text + vision + (p.vision_output_dim + 1) * p.dim
