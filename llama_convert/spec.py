"""Detect what a Meta checkpoint folder holds: release, size, instruct or base, layout.

Everything is read from the files (params.json, shard tensor shapes, the tokenizer file,
the folder name); flags only override. Inconsistent folders are refused here, before any
output is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dtypes import DType
from .errors import InputError, ShapeMismatchError, UnsupportedError
from .io.meta_folder import MetaFolder, MetaParams, find_meta_folder
from .io.torch_zip import TorchCheckpoint
from .releases import RELEASES, SIZE_LABELS, Release, Version
from .tokenizer import detect_tokenizer_kind

__all__ = ["LAYER_TENSORS", "ModelSpec", "detect", "expected_shard_shapes"]

# Per-layer Meta tensor → (HF suffix, model-parallel split dim or None when replicated).
LAYER_TENSORS: dict[str, tuple[str, int | None]] = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
SKIPPED_TENSORS = frozenset({"rope.freqs"})  # precomputed rotary table in old checkpoints


@dataclass(frozen=True)
class ModelSpec:
    """What was detected, and why: the input to planning and to config writing."""

    folder: MetaFolder
    release: Release
    params: MetaParams  # as found; see the properties below for the effective values
    vocab_size: int
    size: str
    instruct: bool
    instruct_reason: str
    version_reason: str
    mp: int
    source_dtype: DType
    kv_fold: int  # >1: Meta's resharder repeated each KV head this often; folded back
    tie_embeddings: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def n_kv_heads(self) -> int:
        """KV heads of the converted model (after folding duplicates)."""
        return self.params.n_kv_heads // self.kv_fold

    @property
    def rope_theta(self) -> float:
        return self.params.rope_theta if self.params.rope_theta is not None else self.release.default_rope_theta

    @property
    def shards(self) -> tuple[Path, ...]:
        return self.folder.shards

    @property
    def name(self) -> str:
        kind = self.release.instruct_word if self.instruct else "base"
        return f"{self.release.title} {self.size} {kind}"

    @property
    def parameter_count(self) -> int:
        p = self.params
        head = p.head_dim
        attn = p.dim * head * (p.n_heads * 2 + self.n_kv_heads * 2)
        mlp = 3 * p.dim * p.intermediate_size
        per_layer = attn + mlp + 2 * p.dim
        embeddings = self.vocab_size * p.dim * (1 if self.tie_embeddings else 2)
        return p.n_layers * per_layer + embeddings + p.dim


def _size_label(release: Release, params: MetaParams, vocab: int) -> str:
    known = SIZE_LABELS.get((release.family, params.dim, params.n_layers))
    if known:
        return known
    p = params
    count = p.n_layers * (p.dim * p.head_dim * (2 * p.n_heads + 2 * p.n_kv_heads) + 3 * p.dim * p.intermediate_size)
    count += 2 * vocab * p.dim
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


_NAME_HINTS: tuple[tuple[str, Version], ...] = (
    (r"llama[-_ ]?3[._-]3", "3.3"),
    (r"llama[-_ ]?3[._-]2", "3.2"),
    (r"llama[-_ ]?3[._-]1", "3.1"),
    (r"llama[-_ ]?3(?![._-]?\d)", "3"),
    (r"code[-_ ]?llama", "code"),
    (r"llama[-_ ]?2", "2"),
)


def _detect_version(folder: MetaFolder, kind: str, dtype: DType | None) -> tuple[Version, str]:
    p = folder.params
    name = folder.root.resolve().name.lower()
    hinted = next((v for pattern, v in _NAME_HINTS if re.search(pattern, name)), None)
    llama3_params = p.use_scaled_rope or p.rope_theta == 500000.0 or p.vocab_size == 128256
    if kind == "sentencepiece" and llama3_params:
        raise InputError(
            f"{folder.tokenizer} is a SentencePiece tokenizer (Llama 1/2) but {folder.params_path.name} describes "
            "Llama 3; put the release's own tokenizer.model beside params.json."
        )
    if kind == "tiktoken" and (p.vocab_size in (32000, 32016) or (p.rope_theta or 0) >= 1e6):
        raise InputError(
            f"{folder.tokenizer} is a Llama 3 tokenizer but {folder.params_path.name} describes Llama 2 or "
            "Code Llama; put the release's own tokenizer.model beside params.json."
        )
    if kind == "tiktoken":
        if not p.use_scaled_rope:
            if hinted not in (None, "3"):
                raise InputError(
                    f"{folder.params_path} has no use_scaled_rope, which Llama {hinted} always sets, yet the folder "
                    f"is named {folder.root.name!r}; restore params.json or pass --llama-version."
                )
            return "3", "tiktoken tokenizer and no use_scaled_rope in params.json"
        if hinted in ("3.1", "3.2", "3.3"):
            return hinted, f"tiktoken tokenizer, scaled rope, folder name {folder.root.name!r}"
        if p.dim in (2048, 3072):
            return "3.2", f"scaled rope and dim {p.dim} (the 1B/3B models)"
        return "3.1", "tiktoken tokenizer and scaled rope (3.3 looks the same; name the folder Llama3.3-… to say so)"
    if p.rope_theta is not None and p.rope_theta >= 1e6:
        return "code", f"SentencePiece tokenizer and rope_theta {p.rope_theta:g}"
    if hinted == "code":
        return "code", f"folder name {folder.root.name!r}"
    if hinted == "2":
        return "2", f"folder name {folder.root.name!r}"
    if p.norm_eps <= 1e-6 and dtype is not None and dtype.torch_name == "float16":
        return "1", "SentencePiece tokenizer, norm_eps 1e-06 and float16 weights"
    return "2", "SentencePiece tokenizer and norm_eps 1e-05"


def _detect_instruct(folder: MetaFolder, release: Release) -> tuple[bool, str]:
    name = folder.root.resolve().name
    for word in ("instruct", "chat"):
        if word in name.lower():
            return True, f"folder name {name!r} contains {word!r}"
    return False, f"folder name {name!r} has no -Instruct/-chat suffix"


def expected_shard_shapes(
    params: MetaParams, vocab: int, mp: int, embed_split: int, has_output: bool = True
) -> dict[str, tuple[int, ...]]:
    """The shape every Meta tensor has in each of ``mp`` model-parallel shards."""
    p = params
    hd = p.head_dim
    ffn = p.intermediate_size
    global_shapes = {"tok_embeddings.weight": (vocab, p.dim), "norm.weight": (p.dim,)}
    if has_output:
        global_shapes["output.weight"] = (vocab, p.dim)
    layer = {
        "attention.wq.weight": (p.n_heads * hd, p.dim),
        "attention.wk.weight": (p.n_kv_heads * hd, p.dim),
        "attention.wv.weight": (p.n_kv_heads * hd, p.dim),
        "attention.wo.weight": (p.dim, p.n_heads * hd),
        "feed_forward.w1.weight": (ffn, p.dim),
        "feed_forward.w2.weight": (p.dim, ffn),
        "feed_forward.w3.weight": (ffn, p.dim),
        "attention_norm.weight": (p.dim,),
        "ffn_norm.weight": (p.dim,),
    }
    splits = {"tok_embeddings.weight": embed_split, "norm.weight": None, "output.weight": 0}
    shapes: dict[str, tuple[int, ...]] = {}

    def split(shape: tuple[int, ...], dim: int | None) -> tuple[int, ...]:
        if dim is None:
            return shape
        out = list(shape)
        out[dim] //= mp
        return tuple(out)

    for name, shape in global_shapes.items():
        shapes[name] = split(shape, splits[name])
    for i in range(p.n_layers):
        for suffix, shape in layer.items():
            shapes[f"layers.{i}.{suffix}"] = split(shape, LAYER_TENSORS[suffix][1])
    return shapes


def _check_layout(folder: MetaFolder, checkpoints: list[TorchCheckpoint], release: Release) -> tuple[int, DType]:
    """Check every shard against params.json; return the vocabulary size and the weights' dtype."""
    p = folder.params
    mp = len(checkpoints)
    first = checkpoints[0]
    if "layers.0.attention.wq.weight" not in first.tensors:
        raise InputError(f"{first.path} has no layers.0.attention.wq.weight; this is not a Llama checkpoint shard.")
    wq = first.tensors["layers.0.attention.wq.weight"]
    if len(wq.shape) != 2 or wq.shape[1] != p.dim:
        raise ShapeMismatchError(
            f"{folder.params_path} says dim {p.dim} but {first.path.name} holds layers.0.attention.wq.weight of "
            f"shape {list(wq.shape)}; the params.json belongs to another model."
        )
    rows = wq.shape[0]
    if rows and (p.n_heads * p.head_dim) % rows == 0 and (p.n_heads * p.head_dim) // rows != mp:
        real_mp = (p.n_heads * p.head_dim) // rows
        if real_mp < mp:
            extra = ", ".join(c.path.name for c in checkpoints[real_mp:])
            raise InputError(
                f"{folder.root} holds {mp} shards but the tensor shapes say the model has {real_mp}; "
                f"remove the stray file(s) {extra}."
            )
        raise InputError(
            f"{folder.root} holds {mp} shards but the tensor shapes say the model has {real_mp}; "
            "download the missing shards."
        )
    if p.n_heads % mp or p.n_kv_heads % mp:
        raise UnsupportedError(
            f"{folder.root}: {mp} shards do not divide {p.n_heads} heads / {p.n_kv_heads} KV heads evenly."
        )
    embed = first.tensors.get("tok_embeddings.weight")
    if embed is None:
        raise InputError(f"{first.path} has no tok_embeddings.weight; the file is damaged — download it again.")
    split = release.embedding_split_dim
    vocab = embed.shape[0] * (mp if split == 0 else 1)
    if p.vocab_size is not None and p.vocab_size != vocab:
        raise ShapeMismatchError(
            f"{folder.params_path} says vocab_size {p.vocab_size} but {first.path.name} holds an embedding of "
            f"{vocab} rows; the params.json belongs to another model."
        )
    expected = expected_shard_shapes(p, vocab, mp, split)
    dtypes: set[DType] = set()
    for ckpt in checkpoints:
        present = set(ckpt.tensors) - SKIPPED_TENSORS
        missing = [n for n in expected if n not in present]
        if missing:
            raise ShapeMismatchError(
                f"{ckpt.path} lacks {missing[0]}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                + f"; params.json describes {p.n_layers} layers — the file is damaged or belongs to another model."
            )
        unexpected = sorted(present - set(expected))
        if unexpected:
            raise UnsupportedError(
                f"{ckpt.path} holds {unexpected[0]}, which a Llama text model does not have "
                "(vision or quantized checkpoints are not supported)."
            )
        for name, shape in expected.items():
            ref = ckpt.tensors[name]
            if ref.shape != shape:
                raise ShapeMismatchError(
                    f"{ckpt.path}: {name} has shape {list(ref.shape)} but params.json implies {list(shape)}; "
                    "check that params.json belongs to these shards."
                )
            dtypes.add(ref.dtype)
    floats = {d for d in dtypes if d.torch_name in ("bfloat16", "float16", "float32")}
    if len(floats) != 1 or floats != dtypes:
        raise UnsupportedError(
            f"{folder.root} mixes weight dtypes ({', '.join(sorted(map(str, dtypes)))}); not supported."
        )
    return vocab, dtypes.pop()


def _rows_equal(checkpoints: list[TorchCheckpoint], a: str, b: str, block_rows: int = 4096) -> bool:
    """Whether two same-shaped tensors hold identical bits, compared shard by shard in row blocks."""
    for ckpt in checkpoints:
        n = ckpt.tensors[a].shape[0]
        for start in range(0, n, block_rows):
            stop = min(n, start + block_rows)
            if not np.array_equal(ckpt.read_rows(a, start, stop), ckpt.read_rows(b, start, stop)):
                return False
    return True


def _kv_duplicated(checkpoints: list[TorchCheckpoint], params: MetaParams, layer: int) -> bool:
    """Whether merged KV heads 2i and 2i+1 are bit-identical in one layer (Meta's MP16 resharding)."""
    hd = params.head_dim
    per_shard = params.n_kv_heads // len(checkpoints)
    for name in (f"layers.{layer}.attention.wk.weight", f"layers.{layer}.attention.wv.weight"):
        heads = [ckpt.read_rows(name, h * hd, (h + 1) * hd) for ckpt in checkpoints for h in range(per_shard)]
        if any(not np.array_equal(heads[i], heads[i + 1]) for i in range(0, len(heads), 2)):
            return False
    return True


def detect(
    src: str | Path,
    *,
    llama_version: Version | None = None,
    instruct: bool | None = None,
    fold_kv_heads: bool = True,
) -> ModelSpec:
    """Read a Meta checkpoint folder and return its ModelSpec; raises a LlamaConvertError if unusable."""
    folder = find_meta_folder(src)
    if folder.tokenizer is None:
        raise InputError(
            f"{folder.root} has no tokenizer.model (looked beside params.json and one folder up); "
            "copy Meta's tokenizer.model there."
        )
    kind = detect_tokenizer_kind(folder.tokenizer)
    checkpoints = [TorchCheckpoint(path) for path in folder.shards]
    try:
        first = checkpoints[0].tensors.get("layers.0.attention.wq.weight")
        probe_dtype = first.dtype if first is not None else None
        if llama_version is not None:
            version, version_reason = llama_version, "--llama-version"
        else:
            version, version_reason = _detect_version(folder, kind, probe_dtype)
        release = RELEASES[version]
        if release.tokenizer_kind != kind:
            raise InputError(
                f"{folder.tokenizer} is a {kind} tokenizer but {release.title} uses {release.tokenizer_kind}; "
                "put the release's own tokenizer.model beside params.json."
            )
        vocab, dtype = _check_layout(folder, checkpoints, release)
        if instruct is None:
            is_instruct, instruct_reason = _detect_instruct(folder, release)
        else:
            is_instruct, instruct_reason = instruct, "--instruct" if instruct else "--base"
        notes: list[str] = []
        p = folder.params
        kv_fold = 1
        resharded = (
            release.family == "llama3"
            and p.n_kv_heads > 8
            and p.n_kv_heads % 2 == 0
            and p.n_kv_heads // len(checkpoints) == 1
        )
        if resharded and fold_kv_heads:
            if all(_kv_duplicated(checkpoints, p, layer) for layer in {0, p.n_layers - 1}):
                kv_fold = 2
                notes.append(
                    f"{p.n_kv_heads} KV heads are pairwise copies (Meta's MP{len(checkpoints)} resharding): "
                    f"folded back to {p.n_kv_heads // 2}; every layer is checked while converting."
                )
            else:
                notes.append(
                    f"{p.n_kv_heads} KV heads are not pairwise copies, so all {p.n_kv_heads} are kept; the config "
                    "differs from the published one."
                )
        tie = False
        if release.ties_embeddings:
            tie = _rows_equal(checkpoints, "tok_embeddings.weight", "output.weight")
            if not tie:
                notes.append("output.weight differs from the embedding: kept as an untied lm_head.weight.")
        return ModelSpec(
            folder=folder,
            release=release,
            params=p,
            vocab_size=vocab,
            size=_size_label(release, p, vocab),
            instruct=is_instruct,
            instruct_reason=instruct_reason,
            version_reason=version_reason,
            mp=len(checkpoints),
            source_dtype=dtype,
            kv_fold=kv_fold,
            tie_embeddings=tie,
            notes=tuple(notes),
        )
    finally:
        for ckpt in checkpoints:
            ckpt.close()
