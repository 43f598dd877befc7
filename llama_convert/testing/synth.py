"""Synthesize Meta-format Llama checkpoints: real names, shapes, dtypes and model-parallel layouts,
random weights. Used by ``llama-convert demo``, the tests and the benchmarks; needs no torch.
"""

from __future__ import annotations

import base64
import itertools
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..dtypes import DType, cast, dtype_by_name
from ..families.llama.layout import LAYER_TENSORS, expected_shard_shapes
from ..formats.meta.folder import parse_params
from ..formats.meta.torch_zip_writer import TorchZipWriter
from ..formats.meta.writer import write_checklist

__all__ = [
    "LLAMA_SPM_TRAINER",
    "PRESETS",
    "SynthSpec",
    "bundled_llama3_tokenizer",
    "synthesize",
    "write_small_sentencepiece",
    "write_small_tiktoken",
]

_LLAMA3 = {"multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
_SCALED = {**_LLAMA3, "use_scaled_rope": True}


@dataclass(frozen=True)
class SynthSpec:
    """A checkpoint to synthesize. ``params`` is written verbatim as params.json."""

    params: dict[str, Any]
    mp: int = 1
    dtype: str = "bfloat16"
    embed_split_dim: int = 0  # 0 for Llama 3, 1 for Llama 1/2 and Code Llama
    vocab_size: int | None = None  # when params has none (-1 / absent)
    tokenizer: Literal["llama3", "small-tiktoken", "none"] | Path = "llama3"
    shared_storage: bool = True  # odd layers: all tensors of the layer are views into one storage
    duplicate_kv: bool = False  # MP16-style: KV heads of shards 2i and 2i+1 are copies
    tie_output: bool = False  # output.weight equals the embedding (Llama 3.2)
    rope_freqs: bool = False  # old checkpoints carry rope.freqs
    fill: Literal["normal", "fast"] = "normal"
    seed: int = 0
    checklist: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> SynthSpec:
        return replace(self, **changes)


# Release shapes (full size). Tests shrink width and depth; benchmarks use them as they are.
PRESETS: dict[str, SynthSpec] = {
    "llama3-8b": SynthSpec(
        {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, **_LLAMA3}
    ),
    "llama3-70b": SynthSpec(
        {
            "dim": 8192,
            "n_layers": 80,
            "n_heads": 64,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            **{**_LLAMA3, "multiple_of": 4096},
        },
        mp=8,
    ),
    "llama3.1-8b": SynthSpec(
        {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, **_SCALED}
    ),
    "llama3.1-70b": SynthSpec(
        {
            "dim": 8192,
            "n_layers": 80,
            "n_heads": 64,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            **{**_SCALED, "multiple_of": 4096},
        },
        mp=8,
    ),
    "llama3.1-405b-mp8": SynthSpec(
        {
            "dim": 16384,
            "n_layers": 126,
            "n_heads": 128,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            **{**_SCALED, "multiple_of": 4096, "ffn_dim_multiplier": 1.2},
        },
        mp=8,
    ),
    "llama3.1-405b-mp16": SynthSpec(
        {
            "dim": 16384,
            "n_layers": 126,
            "n_heads": 128,
            "n_kv_heads": 16,
            "vocab_size": 128256,
            **{**_SCALED, "multiple_of": 4096, "ffn_dim_multiplier": 1.2},
        },
        mp=16,
        duplicate_kv=True,
    ),
    "llama3.2-1b": SynthSpec(
        {
            "dim": 2048,
            "n_layers": 16,
            "n_heads": 32,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            **{**_SCALED, "multiple_of": 256, "ffn_dim_multiplier": 1.5},
        },
        tie_output=True,
    ),
    "llama3.2-3b": SynthSpec(
        {
            "dim": 3072,
            "n_layers": 28,
            "n_heads": 24,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            **{**_SCALED, "multiple_of": 256, "ffn_dim_multiplier": 1.0},
        },
        tie_output=True,
    ),
    "llama3.3-70b": SynthSpec(
        {
            "dim": 8192,
            "n_layers": 80,
            "n_heads": 64,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            **{**_SCALED, "multiple_of": 4096},
        },
        mp=8,
    ),
    "llama1-7b": SynthSpec(
        {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-06, "vocab_size": -1},
        dtype="float16",
        embed_split_dim=1,
        vocab_size=32000,
        tokenizer="none",
        rope_freqs=True,
    ),
    "llama2-7b": SynthSpec(
        {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1},
        embed_split_dim=1,
        vocab_size=32000,
        tokenizer="none",
    ),
    "llama2-13b": SynthSpec(
        {"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05, "vocab_size": -1},
        mp=2,
        embed_split_dim=1,
        vocab_size=32000,
        tokenizer="none",
    ),
    "llama2-70b": SynthSpec(
        {
            "dim": 8192,
            "multiple_of": 4096,
            "ffn_dim_multiplier": 1.3,
            "n_heads": 64,
            "n_kv_heads": 8,
            "n_layers": 80,
            "norm_eps": 1e-05,
            "vocab_size": -1,
        },
        mp=8,
        embed_split_dim=1,
        vocab_size=32000,
        tokenizer="none",
    ),
    "codellama-7b": SynthSpec(
        {
            "dim": 4096,
            "n_layers": 32,
            "n_heads": 32,
            "multiple_of": 256,
            "ffn_dim_multiplier": 1.0,
            "norm_eps": 1e-5,
            "rope_theta": 1000000,
        },
        embed_split_dim=1,
        vocab_size=32016,
        tokenizer="none",
    ),
    "codellama-34b": SynthSpec(
        {
            "dim": 8192,
            "n_layers": 48,
            "n_heads": 64,
            "n_kv_heads": 8,
            "multiple_of": 256,
            "ffn_dim_multiplier": 1.0,
            "norm_eps": 1e-5,
            "rope_theta": 1000000,
        },
        mp=4,
        embed_split_dim=1,
        vocab_size=32000,
        tokenizer="none",
    ),
}


def bundled_llama3_tokenizer() -> Path | None:
    """Meta's Llama 3 tokenizer.model as shipped in the ``llama-models`` package, if installed."""
    try:
        import importlib.util

        found = importlib.util.find_spec("llama_models")
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / "llama3" / "tokenizer.model"
    return path if path.is_file() else None


# SentencePiece trainer settings of Meta's Llama 1/2 tokenizers, for training small stand-ins.
LLAMA_SPM_TRAINER: dict[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "add_dummy_prefix": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "pad_id": -1,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "character_coverage": 0.9995,
    "num_threads": 1,
    "minloglevel": 2,
}


def write_small_sentencepiece(folder: Path, vocab_size: int = 512) -> Path:
    """Train a small SentencePiece BPE tokenizer with Llama's settings in ``folder``; return its path."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["llama", "model", "token", "the", "of", "and", "convert", "weights", "def", "return", "print",
             "Hello", "world", "data", "layer", "attention", "   ", "\t", "12", "345"]  # fmt: skip
    letters = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    words += ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(3000)]
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(4000)))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tokenizer"),
        **{**LLAMA_SPM_TRAINER, "vocab_size": vocab_size},
    )
    return folder / "tokenizer.model"


_SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Llama models read text as tokens; "
    "a converter turns Meta's checkpoints into Hugging Face folders. def main():\n    return 42\n"
    "Hello, world! 12345 67890. They'll say it's fine, and we've seen that I'd agree. "
)


def write_small_tiktoken(path: Path, n_merges: int = 512) -> int:
    """Write a small tiktoken-format BPE file (256 bytes + ``n_merges`` merges); returns its size in tokens."""
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    words = [[bytes([c]) for c in w.encode()] for w in _SAMPLE_TEXT.replace("\n", " \n").split(" ") if w]
    words = [[b" ", *w] for w in words]
    while len(ranks) < 256 + n_merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word in words:
            pairs.update(itertools.pairwise(word))
        candidates = [(n, p) for p, n in pairs.items() if p[0] + p[1] not in ranks]
        if not candidates:
            break
        _, (a, b) = max(candidates)
        ranks[a + b] = len(ranks)
        for word in words:
            i = 0
            while i < len(word) - 1:
                if word[i] == a and word[i + 1] == b:
                    word[i : i + 2] = [a + b]
                i += 1
    # Keep the vocabulary a multiple of 16 so that every model-parallel layout divides it (the latest
    # merges are dropped: no earlier token depends on them).
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])[: len(ranks) - len(ranks) % 16]
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in ordered]
    path.write_text("\n".join(lines) + "\n")
    return len(ordered)


def _rng(seed: int, *key: object) -> np.random.Generator:
    digest = zlib.crc32(repr((seed, *key)).encode())
    return np.random.default_rng([seed, digest])


def _chunks(shape: tuple[int, ...], dtype: DType, spec: SynthSpec, key: tuple) -> Iterator[np.ndarray]:
    """Deterministic random data for one shard tensor, generated in bounded row chunks."""
    rng = _rng(spec.seed, *key)
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    rows = shape[0] if len(shape) > 1 else 1
    is_norm = len(shape) == 1
    step = max(1, (16 << 20) // max(cols, 1))
    for start in range(0, rows, step):
        n = min(step, rows - start) * (cols if not is_norm else shape[0])
        if spec.fill == "fast" and dtype.torch_name == "bfloat16":
            # Random bit patterns in a tame range: |x| in [2^-7, 1), random sign; no NaN/Inf.
            bits = rng.integers(0x3C00, 0x3F80, size=n, dtype=np.uint16) | (rng.integers(0, 2, n, np.uint16) << 15)
            yield bits
            continue
        if is_norm:
            values = 1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)
        else:
            values = rng.standard_normal(n, dtype=np.float32) * np.float32(1.0 / np.sqrt(cols))
        yield cast(values, dtype_by_name("float32"), dtype)


def _tokenizer(dst: Path, spec: SynthSpec) -> int | None:
    """Put a tokenizer.model in ``dst``; return its vocabulary size (with 256 specials) if tiktoken."""
    if isinstance(spec.tokenizer, Path):
        (dst / "tokenizer.model").write_bytes(spec.tokenizer.read_bytes())
        return None
    if spec.tokenizer == "llama3":
        bundled = bundled_llama3_tokenizer()
        if bundled is not None:
            (dst / "tokenizer.model").write_bytes(bundled.read_bytes())
            return 128256
    if spec.tokenizer in ("llama3", "small-tiktoken"):
        return write_small_tiktoken(dst / "tokenizer.model") + 256
    return None


def synthesize(dst: str | Path, spec: SynthSpec) -> Path:
    """Write a Meta-format folder (shards, params.json, tokenizer.model, checklist.chk) into ``dst``."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    params = dict(spec.params)
    tok_vocab = _tokenizer(dst, spec)
    if tok_vocab is not None and params.get("vocab_size", -1) > 0:
        params["vocab_size"] = tok_vocab  # keep the model consistent with the tokenizer written
    vocab = spec.vocab_size or (params["vocab_size"] if params.get("vocab_size", -1) > 0 else tok_vocab)
    if vocab is None:
        raise ValueError("synthesize: give vocab_size for a checkpoint without a tiktoken tokenizer")
    (dst / "params.json").write_text(json.dumps({**params, **spec.extra}))
    meta = parse_params(params, dst / "params.json")
    dtype = dtype_by_name(spec.dtype)
    shapes = expected_shard_shapes(meta, vocab, spec.mp, spec.embed_split_dim)
    names = ["tok_embeddings.weight"]
    for i in range(meta.n_layers):
        names += [f"layers.{i}.{suffix}" for suffix in LAYER_TENSORS]
    names += ["norm.weight", "output.weight"]
    kv_names = ("attention.wk.weight", "attention.wv.weight")
    for rank in range(spec.mp):
        path = dst / f"consolidated.{rank:02d}.pth"
        with TorchZipWriter(path, prefix=f"consolidated.{rank:02d}") as writer:

            def key(name: str, rank: int = rank) -> tuple:
                if name == "output.weight" and spec.tie_output:
                    name = "tok_embeddings.weight"
                if name.endswith(("norm.weight",)):
                    return (name,)  # replicated across shards
                if spec.duplicate_kv and name.endswith(kv_names):
                    return (name, rank - rank % 2)
                return (name, rank)

            i = 0
            while i < len(names):
                name = names[i]
                layer = name.split(".")[1] if name.startswith("layers.") else None
                if spec.shared_storage and layer is not None and int(layer) % 2 == 1:
                    group = [n for n in names[i:] if n.startswith(f"layers.{layer}.")]
                    numel = sum(int(np.prod(shapes[n])) for n in group)
                    chunks = (c for n in group for c in _chunks(shapes[n], dtype, spec, key(n)))
                    storage = writer.add_storage(dtype, numel, chunks)
                    offset = 0
                    for n in group:
                        writer.add_view(n, storage, shapes[n], offset=offset)
                        offset += int(np.prod(shapes[n]))
                    i += len(group)
                    continue
                numel = int(np.prod(shapes[name]))
                storage = writer.add_storage(dtype, numel, _chunks(shapes[name], dtype, spec, key(name)))
                writer.add_view(name, storage, shapes[name])
                i += 1
            if spec.rope_freqs:
                # Meta's precomputed rotary frequencies: 1 / theta^(2i / head_dim), i < head_dim / 2.
                theta = np.float32(meta.rope_theta or 10000.0)
                freqs = np.float32(1.0) / theta ** (np.arange(0, meta.head_dim, 2, dtype=np.float32) / meta.head_dim)
                writer.add_tensor("rope.freqs", cast(freqs, dtype_by_name("float32"), dtype), dtype)
    if spec.checklist:
        write_checklist(dst)
    return dst
