"""Recognise a Llama 4 checkpoint from evidence: ``moe_args`` in params.json and the Llama 4 tensor names
claim it; the tensors' shapes must then agree with params.json in every shard; Scout or Maverick is read
from the structure (experts in every layer or interleaved), base or instruct from the names."""

from __future__ import annotations

import math
import re

from ...dtypes import F8_E4M3, DType
from ...errors import InputError, ShapeMismatchError, UnsupportedError
from ...formats.meta.folder import MetaFolder
from ...formats.meta.torch_zip import TorchCheckpoint
from ..base import Evidence, Hints
from ..naming import check_snapshot_config, instruct_from_names
from .fp8 import recognise_fp8
from .hf_config import variant
from .layout import DROPPED, shard_shapes, tensor_table
from .params import Llama4Params, is_dense_llama4_params, is_llama4_params, parse_llama4_params
from .spec import Llama4Spec
from .tokenizer import NUM_BASE_TOKENS

__all__ = ["recognise"]

# Tensor names only Llama 4 shards hold (Meta's fused TransformerEngine layout and its MoE).
_LLAMA4_TENSORS = ("layers.0.attention.wqkv.weight", "layers.0.attention.wqkv.layer_norm_weight")
_LAYER = re.compile(r"^layers\.(\d+)\.")
_LLAMA4_NAME = re.compile(r"llama[-_ ]?4", re.I)
# Published sizes by (dim, layers, experts): the rest are labelled by parameter count.
_RELEASE_SIZES = {(5120, 48, 16): "17B-16E", (5120, 48, 128): "17B-128E"}


def recognise(folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> Llama4Spec | None:
    """A Llama4Spec if the checkpoint is Llama 4 (raising one clear sentence if it is but is unusable), else None."""
    first = checkpoints[0]
    has_tensors = any(name in first.tensors for name in _LLAMA4_TENSORS)
    dense = has_tensors and is_dense_llama4_params(folder.raw_params)  # Llama Guard 4: no moe_args
    if not is_llama4_params(folder.raw_params) and not dense:
        if has_tensors:
            raise InputError(
                f"{first.path} holds Llama 4 tensors (fused wqkv) but {folder.params_path} has no moe_args; "
                "restore the params.json of the Llama 4 download."
            )
        return None
    if not has_tensors:
        raise InputError(
            f"{folder.params_path} describes Llama 4 (moe_args) but {first.path.name} has no "
            "layers.0.attention.wqkv.weight; the shards belong to another model."
        )
    p = parse_llama4_params(folder.raw_params, folder.params_path)
    evidence = [
        Evidence("family", "Llama 4", "moe_args in params.json, fused wqkv and routed-expert tensors")
        if p.moe is not None
        else Evidence("family", "Llama 4 (dense)", "fused wqkv, Llama 4 params.json (ffn_exp) without moe_args")
    ]
    _check_tokenizer(folder, evidence)
    vocab, dtype = _check_layout(folder, checkpoints, p)
    fp8 = recognise_fp8(folder.root, checkpoints, p)
    if fp8 is not None:
        evidence.append(
            Evidence(
                "weights",
                f"FP8 routed experts of {len(fp8.layers)} MoE layer(s) → dequantized, q × scale rounded once",
                f"float8 tensors in the shards and {len(fp8.scale_files)} fp8_scales_N.pt file(s)",
            )
        )
    kind = variant(p)
    moe_layers = sum(p.is_moe_layer(i) for i in range(p.n_layers))
    evidence.append(
        Evidence(
            "variant",
            kind,
            f"{p.moe.num_experts} experts in {moe_layers} of {p.n_layers} layers "
            f"(interleave_moe_layer_step {p.moe.interleave_moe_layer_step})"
            if p.moe is not None
            else f"no moe_args: {p.n_layers} dense layers (Llama Guard 4 is the dense Llama 4 Meta ships)",
        )
    )
    if p.use_scaled_rope:
        evidence.append(Evidence("rope", "llama3 scaling, factor 16, high 1", "use_scaled_rope in params.json"))
    evidence.append(
        Evidence(
            "vision",
            "encoder + projector" if p.vision else "none (text only)",
            "vision_args in params.json" if p.vision else "no vision_args in params.json",
        )
    )
    if p.moe is None:  # a safety classifier, prompted through its chat template
        instruct, variant_evidence, notes = True, Evidence("instruct", "yes", "Llama Guard 4 is chat-formatted"), []
    else:
        instruct, variant_evidence, notes = _instruct(hints)
    evidence.append(variant_evidence)
    evidence.append(Evidence("model parallel", f"MP{len(checkpoints)}", f"{len(checkpoints)} consolidated shard(s)"))
    table = tensor_table(p, len(checkpoints), vocab)
    count = sum(math.prod(t.shape) for t in table)
    experts = p.moe.num_experts if p.moe else 0
    size = _RELEASE_SIZES.get((p.dim, p.n_layers, experts)) or (
        f"{count / 1e9:.0f}B" if count >= 1e10 else f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"
    )
    layers = f"{moe_layers} MoE × {experts} experts, top-{p.moe.top_k}" if p.moe else "dense"
    summary = (
        f"{p.n_layers} layers ({layers}), dim {p.dim}, {p.n_heads} heads / {p.n_kv_heads} KV heads, vocab {vocab}"
        + (f", vision {p.vision.n_layers} layers × {p.vision.dim}" if p.vision else "")
    )
    _check_snapshot_config(folder, p, vocab, hints)
    return Llama4Spec(
        family="llama4",
        name=f"Llama Guard 4 {size}"
        if p.moe is None
        else f"Llama 4 {kind} {size} {'Instruct' if instruct else 'base'}",
        folder=folder,
        mp=len(checkpoints),
        source_dtype=dtype,
        instruct=instruct,
        evidence=tuple(evidence),
        summary=summary,
        parameter_count=count,
        notes=tuple(notes),
        params=p,
        vocab_size=vocab,
        variant=kind,
        size=size,
        instruct_reason=variant_evidence.because,
        fp8=fp8,
    )


def _check_snapshot_config(folder: MetaFolder, p: Llama4Params, vocab: int, hints: Hints) -> None:
    """A Hub snapshot's own config.json must describe the same model as its original/ checkpoint (its rope
    values are not compared: the published Scout config carries Llama 3.1's, not Meta's)."""
    config = hints.hf_config or {}
    text = config.get("text_config", config)
    ours = {
        "hidden_size": p.dim,
        "num_hidden_layers": p.n_layers,
        "num_attention_heads": p.n_heads,
        "num_key_value_heads": p.n_kv_heads,
        "vocab_size": vocab,
        "num_local_experts": p.moe.num_experts if p.moe else 0,
        "interleave_moe_layer_step": p.moe.interleave_moe_layer_step if p.moe else 0,
    }
    check_snapshot_config(folder.root, text if isinstance(text, dict) else None, ours)


def _check_tokenizer(folder: MetaFolder, evidence: list[Evidence]) -> None:
    if folder.tokenizer is None:
        raise InputError(
            f"{folder.root} has no tokenizer.model (looked beside params.json and one folder up); "
            "copy the tokenizer.model of the Llama 4 download there."
        )
    data = folder.tokenizer.read_bytes()
    ranks = sum(1 for line in data.splitlines() if line.strip())
    if ranks != NUM_BASE_TOKENS or not data[:256].split(b"\n", 1)[0].rstrip().split(b" ")[-1].isdigit():
        raise InputError(
            f"{folder.tokenizer} is not Meta's Llama 4 tokenizer (expected {NUM_BASE_TOKENS} tiktoken ranks, "
            f"found {ranks} lines); copy the tokenizer.model of the Llama 4 download."
        )
    evidence.append(Evidence("tokenizer", "Llama 4 tiktoken", f"{folder.tokenizer.name}: {ranks} ranks"))


def _check_layout(folder: MetaFolder, checkpoints: list[TorchCheckpoint], p: Llama4Params) -> tuple[int, DType]:
    """Check every shard against params.json; return the vocabulary size and the weights' dtype."""
    mp = len(checkpoints)
    first = checkpoints[0]
    if p.n_kv_heads % mp or p.n_heads % mp:
        raise UnsupportedError(
            f"{folder.root}: {mp} shards do not divide the {p.n_heads} heads / {p.n_kv_heads} KV heads of params.json "
            "evenly; restore the params.json of these shards."
        )
    embed = first.tensors.get("tok_embeddings.weight")
    if embed is None or len(embed.shape) != 2:
        raise InputError(f"{first.path} has no 2-D tok_embeddings.weight; the file is damaged — download it again.")
    vocab = embed.shape[0] * mp
    if p.vocab_size is not None and p.vocab_size != vocab:
        raise ShapeMismatchError(
            f"{folder.params_path} says vocab_size {p.vocab_size} but the {mp} shard(s) hold an embedding of "
            f"{vocab} rows; the params.json belongs to another model or a shard is missing."
        )
    expected = shard_shapes(tensor_table(p, mp, vocab))
    dtypes: set[DType] = set()
    for ckpt in checkpoints:
        present = {name for name in ckpt.tensors if not DROPPED.match(name)}
        missing = [n for n in expected if n not in present]
        if missing:
            raise ShapeMismatchError(
                f"{ckpt.path} lacks {missing[0]}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                + f"; params.json describes {p.n_layers} layers — the file is damaged or belongs to another model."
            )
        unexpected = sorted(present - set(expected))
        extra_layers = [n for n in unexpected if (m := _LAYER.match(n)) and int(m.group(1)) >= p.n_layers]
        if extra_layers:
            raise ShapeMismatchError(
                f"{ckpt.path} holds {extra_layers[0]} but {folder.params_path.name} describes {p.n_layers} layers; "
                "the params.json belongs to another model."
            )
        if unexpected:
            raise UnsupportedError(
                f"{ckpt.path} holds {unexpected[0]}, which the bf16 Llama 4 release does not have "
                "(quantized FP8/INT4 checkpoints are not supported; convert the bf16 download)."
            )
        for name, shape in expected.items():
            ref = ckpt.tensors[name]
            if tuple(ref.shape) != shape:
                raise ShapeMismatchError(
                    f"{ckpt.path}: {name} has shape {list(ref.shape)} but params.json and {mp} shard(s) imply "
                    f"{list(shape)}; check that params.json belongs to these shards and that none is missing."
                )
            if ref.dtype != F8_E4M3:  # Meta's FP8 release: checked by fp8.recognise_fp8
                dtypes.add(ref.dtype)
    floats = {d for d in dtypes if d.torch_name in ("bfloat16", "float16", "float32")}
    if len(floats) != 1 or floats != dtypes:
        raise UnsupportedError(
            f"{folder.root} holds Llama 4 weights of dtype(s) {', '.join(sorted(map(str, dtypes)))}; only "
            "bfloat16/float16/float32 checkpoints convert (quantized FP8/INT4 releases do not)."
        )
    return vocab, dtypes.pop()


def _instruct(hints: Hints) -> tuple[bool, Evidence, list[str]]:
    """Base or instruct from the override, then the names, then a Hub snapshot's tokenizer_config."""
    eos = (hints.hf_tokenizer_config or {}).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return instruct_from_names(
        hints,
        release_name=_LLAMA4_NAME,
        snapshot_instruct={"<|eot|>": True, "<|end_of_text|>": False}.get(eos),  # type: ignore[arg-type]
        snapshot_reason=f"the snapshot's tokenizer_config.json (eos {eos})",
        topic="instruct",
    )
