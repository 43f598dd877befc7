"""Recognise a Llama text checkpoint from evidence: tensors and params.json first, names only for what
tensors cannot tell (base vs instruct, Guard, 3.1 vs 3.3), published tables only for names and checks."""

from __future__ import annotations

import re

import numpy as np

from ...dtypes import F8_E4M3, DType
from ...errors import InputError, ShapeMismatchError, UnsupportedError
from ...formats.meta.folder import MetaFolder, MetaParams
from ...formats.meta.torch_zip import TorchCheckpoint
from ...tokenizer import detect_tokenizer_kind
from ..base import Evidence, Hints
from ..naming import check_snapshot_config, instruct_from_names
from .fp8 import recognise_fp8
from .guard import GuardFacts, guard_facts
from .layout import SKIPPED_TENSORS, expected_shard_shapes
from .releases import RELEASES, SIZE_LABELS, Release, Version
from .spec import LlamaSpec

__all__ = ["recognise", "rows_sampled_equal"]

_NAME_HINTS: tuple[tuple[str, Version], ...] = (
    (r"llama[-_ ]?3[._-]3", "3.3"),
    (r"llama[-_ ]?3[._-]2", "3.2"),
    (r"llama[-_ ]?3[._-]1", "3.1"),
    (r"llama[-_ ]?3(?![._-]?\d)", "3"),
    (r"code[-_ ]?llama", "code"),
    (r"llama[-_ ]?2", "2"),
    (r"llama[-_ ]?1(?!\d)", "1"),
)


def _name_version(names: tuple[str, ...]) -> tuple[Version | None, str]:
    for name in names:
        for pattern, version in _NAME_HINTS:
            if re.search(pattern, name.lower()):
                return version, name
    return None, ""


def _size_label(release: Release, params: MetaParams, vocab: int) -> str:
    known = SIZE_LABELS.get((release.family, params.dim, params.n_layers))
    if known:
        return known
    p = params
    count = p.n_layers * (p.dim * p.head_dim * (2 * p.n_heads + 2 * p.n_kv_heads) + 3 * p.dim * p.intermediate_size)
    count += 2 * vocab * p.dim
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def _check_tokenizer_matches(folder: MetaFolder, kind: str) -> None:
    p = folder.params
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


def _sentencepiece_version(folder: MetaFolder, hinted: Version | None, hint_name: str, dtype: DType | None):
    p = folder.params
    if p.rope_theta is not None and p.rope_theta >= 1e6:
        return "code", f"SentencePiece tokenizer and rope_theta {p.rope_theta:g} in params.json"
    if hinted in ("code", "2", "1"):
        return hinted, f"SentencePiece tokenizer; the name {hint_name!r}"
    if p.norm_eps <= 1e-6 and dtype is not None and dtype.torch_name == "float16":
        return "1", "SentencePiece tokenizer, norm_eps 1e-06 and float16 weights"
    return "2", "SentencePiece tokenizer and norm_eps 1e-05"


def rows_sampled_equal(checkpoints: list[TorchCheckpoint], a: str, b: str, samples: int = 16, rows: int = 16) -> bool:
    """Whether two tensors agree on ``samples`` evenly spread blocks of rows in every shard: cheap evidence of
    tying (a fine-tuned head differs everywhere); every row is then compared beside the conversion. Few
    blocks of many rows rather than many small ones: each block is a request on a remote source."""
    for ckpt in checkpoints:
        if a not in ckpt.tensors or b not in ckpt.tensors:
            return False  # the layout check names the missing tensor
        if ckpt.tensors[a].shape != ckpt.tensors[b].shape:
            return False
        n = ckpt.tensors[a].shape[0]
        last = max(0, n - rows)  # first and last block included
        starts = sorted({i * last // (samples - 1) for i in range(samples)})
        blocks = [(start, min(start + rows, n)) for start in starts]
        for x, y in zip(ckpt.read_row_blocks(a, blocks), ckpt.read_row_blocks(b, blocks), strict=True):
            if not np.array_equal(x, y):
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


def _check_layout(folder: MetaFolder, checkpoints: list[TorchCheckpoint], embed_split: int) -> tuple[int, DType]:
    """Check every shard against params.json; return the vocabulary size and the weights' dtype."""
    p = folder.params
    mp = len(checkpoints)
    first = checkpoints[0]
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
            f"{folder.root}: {mp} shards do not divide the {p.n_heads} heads / {p.n_kv_heads} KV heads of params.json "
            "evenly; restore the params.json of these shards."
        )
    embed = first.tensors.get("tok_embeddings.weight")
    if embed is None:
        raise InputError(f"{first.path} has no tok_embeddings.weight; the file is damaged — download it again.")
    vocab = embed.shape[0] * (mp if embed_split == 0 else 1)
    if p.vocab_size is not None and p.vocab_size != vocab:
        raise ShapeMismatchError(
            f"{folder.params_path} says vocab_size {p.vocab_size} but {first.path.name} holds an embedding of "
            f"{vocab} rows; the params.json belongs to another model."
        )
    expected = expected_shard_shapes(p, vocab, mp, embed_split)
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
        beyond = [n for n in unexpected if n.split(".")[0] == "layers" and n.split(".")[1].isdigit()]
        if beyond:
            raise ShapeMismatchError(
                f"{ckpt.path} holds {beyond[0]}, beyond the {p.n_layers} layers params.json describes; "
                "restore the params.json of these shards."
            )
        if unexpected:
            raise UnsupportedError(
                f"{ckpt.path} holds {unexpected[0]}, which a Llama text model does not have "
                "(quantized checkpoints are not supported; convert the bf16 release)."
            )
        for name, shape in expected.items():
            ref = ckpt.tensors[name]
            if ref.shape != shape:
                raise ShapeMismatchError(
                    f"{ckpt.path}: {name} has shape {list(ref.shape)} but params.json implies {list(shape)}; "
                    "check that params.json belongs to these shards."
                )
            if ref.dtype != F8_E4M3:  # Meta's FP8 release: checked by fp8.recognise_fp8
                dtypes.add(ref.dtype)
    floats = {d for d in dtypes if d.torch_name in ("bfloat16", "float16", "float32")}
    if len(floats) != 1 or floats != dtypes:
        raise UnsupportedError(
            f"{folder.root} mixes weight dtypes ({', '.join(sorted(map(str, dtypes)))}); not supported."
        )
    return vocab, dtypes.pop()


def _hf_eos(hints: Hints) -> set[int] | None:
    """The eos ids a Hub snapshot's generation_config.json (else config.json) declares, if any."""
    for config in (hints.hf_generation_config, hints.hf_config):
        if config and "eos_token_id" in config:
            eos = config["eos_token_id"]
            return set(eos) if isinstance(eos, list) else {eos}
    return None


_RELEASE_NAME = re.compile("|".join(f"(?:{pattern})" for pattern, _ in _NAME_HINTS), re.I)


def _variant(release: Release, hints: Hints, guard: str | None) -> tuple[bool, Evidence, list[str]]:
    """Base or instruct, from the names; a Hub snapshot's own files confirm or contradict."""
    if guard is not None and hints.instruct is None:
        return True, Evidence("variant", guard, "a Llama Guard model is a classifier prompted as a chat"), []
    eos = _hf_eos(hints)
    return instruct_from_names(
        hints,
        release_name=_RELEASE_NAME,
        snapshot_instruct=None if eos is None else bool(eos - {release.eos_token_id}),
        snapshot_reason=f"the snapshot's generation_config.json (eos ids {sorted(eos or ())})",
    )


def _llama3_version(
    folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints, evidence: list[Evidence], notes: list[str]
) -> tuple[Version, float | None, bool]:
    """Llama 3.x release, rope scaling factor and tying, from use_scaled_rope and the output layer."""
    p = folder.params
    hinted, hint_name = _name_version(hints.variant_names)
    if not p.use_scaled_rope:
        if hinted not in (None, "3") and hints.version is None:
            raise InputError(
                f"{folder.params_path} has no use_scaled_rope, which Llama {hinted} always sets, yet the name is "
                f"{hint_name!r}; restore params.json or pass --llama-version."
            )
        evidence.append(Evidence("rope", "unscaled (Llama 3)", "params.json has no use_scaled_rope"))
        return "3", None, False
    tied = rows_sampled_equal(checkpoints, "tok_embeddings.weight", "output.weight")
    if tied:
        evidence.append(
            Evidence("embeddings", "tied, Llama 3.2 rope (factor 32)", "output.weight == tok_embeddings.weight")
        )
        return "3.2", 32.0, True
    evidence.append(Evidence("embeddings", "untied", "output.weight differs from tok_embeddings.weight"))
    if hinted == "3.2":
        notes.append("output.weight differs from the embedding: kept as an untied lm_head.weight.")
        evidence.append(Evidence("rope", "Llama 3.2 (factor 32)", f"scaled rope; the name {hint_name!r}"))
        return "3.2", 32.0, False
    if hinted == "3.3":
        evidence.append(Evidence("rope", "Llama 3.3 (factor 8)", f"scaled rope; the name {hint_name!r}"))
        return "3.3", 8.0, False
    because = "use_scaled_rope in params.json, untied output" + (
        f"; the name {hint_name!r}"
        if hinted == "3.1"
        else " (3.3 looks the same; name the folder Llama3.3-… to say so)"
    )
    evidence.append(Evidence("rope", "Llama 3.1 (factor 8)", because))
    return "3.1", 8.0, False


def recognise(folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> LlamaSpec:
    """Read a Llama text checkpoint; raises a LlamaConvertError with one clear sentence if unusable."""
    first = checkpoints[0]
    if "layers.0.attention.wq.weight" not in first.tensors:
        raise InputError(f"{first.path} has no layers.0.attention.wq.weight; this is not a Llama checkpoint shard.")
    if folder.tokenizer is None:
        raise InputError(
            f"{folder.root} has no tokenizer.model (looked beside params.json and one folder up); "
            "copy Meta's tokenizer.model there."
        )
    kind = detect_tokenizer_kind(folder.tokenizer)
    p = folder.params
    evidence: list[Evidence] = [Evidence("tokenizer", kind, folder.tokenizer.name)]
    probe_dtype = first.tensors["layers.0.attention.wq.weight"].dtype
    guard = guard_facts(hints.variant_names, dim=p.dim, n_layers=p.n_layers)
    early_notes: list[str] = []
    factor: float | None
    if hints.version is not None:
        version: Version = hints.version  # type: ignore[assignment]
        release = RELEASES[version]
        if release.tokenizer_kind != kind:
            raise InputError(
                f"{folder.tokenizer} is a {kind} tokenizer but {release.title} uses {release.tokenizer_kind}; "
                "put the release's own tokenizer.model beside params.json."
            )
        version_reason, factor = "--llama-version", release.rope_scaling_factor
        tie = release.ties_embeddings and rows_sampled_equal(checkpoints, "tok_embeddings.weight", "output.weight")
    else:
        _check_tokenizer_matches(folder, kind)
        if kind == "tiktoken":
            version, factor, tie = _llama3_version(folder, checkpoints, hints, evidence, early_notes)
        else:
            hinted, hint_name = _name_version(hints.variant_names)
            version, _ = _sentencepiece_version(folder, hinted, hint_name, probe_dtype)
            factor, tie = None, False
        release = RELEASES[version]
        version_reason = evidence[-1].because
        if kind == "sentencepiece":
            version_reason = _sentencepiece_version(folder, *_name_version(hints.variant_names), probe_dtype)[1]
    if guard is not None and hints.version is None:
        release, factor = _guard_shape(guard, factor, evidence)
        version_reason = evidence[-1].because
    evidence.append(Evidence("release", release.title, version_reason))
    vocab, dtype = _check_layout(folder, checkpoints, release.embedding_split_dim)
    fp8 = recognise_fp8(folder.root, checkpoints, p.n_layers)
    if fp8 is not None:
        evidence.append(
            Evidence(
                "weights",
                f"FP8 (float8_e4m3fn FFN of layers 1…{p.n_layers - 2}) → dequantized, q × scale rounded once",
                f"float8 tensors in the shards and {len(fp8.scale_files)} fp8_scales_N.pt file(s)",
            )
        )
    instruct, variant_evidence, notes = _variant(release, hints, guard.title if guard else None)
    notes = early_notes + notes
    evidence.append(variant_evidence)
    kv_fold = _kv_fold(checkpoints, p, release, hints, evidence, notes)
    evidence.append(Evidence("model parallel", f"MP{len(checkpoints)}", f"{len(checkpoints)} consolidated shard(s)"))
    size = _size_label(release, p, vocab)
    spec_name = (
        f"{guard.title} {size}"
        if guard
        else f"{release.title} {size} " + (release.instruct_word if instruct else "base")
    )
    n_kv = p.n_kv_heads // kv_fold
    attn = p.dim * p.head_dim * (p.n_heads * 2 + n_kv * 2)
    count = (
        p.n_layers * (attn + 3 * p.dim * p.intermediate_size + 2 * p.dim) + vocab * p.dim * (1 if tie else 2) + p.dim
    )
    summary = (
        f"{p.n_layers} layers, dim {p.dim}, {p.n_heads} heads / {n_kv} KV heads, vocab {vocab}, "
        f"FFN {p.intermediate_size}"
    )
    spec = LlamaSpec(
        family="llama",
        name=spec_name,
        folder=folder,
        mp=len(checkpoints),
        source_dtype=dtype,
        instruct=instruct,
        evidence=tuple(evidence),
        summary=summary,
        parameter_count=count,
        notes=tuple(notes),
        release=release,
        params=p,
        vocab_size=vocab,
        size=size,
        instruct_reason=variant_evidence.because,
        version_reason=version_reason,
        kv_fold=kv_fold,
        tie_embeddings=tie,
        rope_scaling_factor=factor,
        guard=guard,
        fp8=fp8,
    )
    if hints.version is None:
        _check_snapshot_config(spec, hints)
    return spec


def _guard_shape(guard: GuardFacts, factor: float | None, evidence: list[Evidence]) -> tuple[Release, float | None]:
    """A Guard model is the release it was fine-tuned from, with its own published rope factor."""
    scaling = guard.config_overrides.get("rope_scaling")
    guard_factor = scaling["factor"] if scaling else factor
    evidence.append(
        Evidence(
            "rope",
            f"factor {guard_factor:g}" if guard_factor else "unscaled",
            f"{guard.title} is Llama {guard.shaped_like}-shaped and published with this rope",
        )
    )
    return RELEASES[guard.shaped_like], guard_factor  # type: ignore[index]


def _check_snapshot_config(spec: LlamaSpec, hints: Hints) -> None:
    """A Hub snapshot's own config.json must describe the same model as the original/ checkpoint."""
    config = dict(hints.hf_config or {})
    if "rope_scaling" in config or "rope_parameters" in config:
        rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
        config["rope_scaling factor"] = (
            rope.get("factor") if rope.get("rope_type", rope.get("type")) == "llama3" else None
        )
    ours = {
        "hidden_size": spec.params.dim,
        "num_hidden_layers": spec.params.n_layers,
        "num_attention_heads": spec.params.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": spec.tie_embeddings,
        "rope_scaling factor": spec.rope_scaling_factor,
    }
    check_snapshot_config(spec.folder.root, config, ours)


def _kv_fold(
    checkpoints: list[TorchCheckpoint],
    p: MetaParams,
    release: Release,
    hints: Hints,
    evidence: list[Evidence],
    notes: list[str],
) -> int:
    """2 when Meta's resharder repeated every KV head once to give each of MP shards one (405B MP16)."""
    resharded = (
        release.family == "llama3"
        and p.n_kv_heads > 8
        and p.n_kv_heads % 2 == 0
        and p.n_kv_heads // len(checkpoints) == 1
    )
    if not resharded or not hints.fold_kv_heads:
        return 1
    if all(_kv_duplicated(checkpoints, p, layer) for layer in {0, p.n_layers - 1}):
        evidence.append(
            Evidence("KV heads", f"{p.n_kv_heads // 2} (folded)", f"the {p.n_kv_heads} KV heads are pairwise copies")
        )
        notes.append(
            f"{p.n_kv_heads} KV heads are pairwise copies (Meta's MP{len(checkpoints)} resharding): "
            f"folded back to {p.n_kv_heads // 2}; every layer is checked while converting."
        )
        return 2
    notes.append(
        f"{p.n_kv_heads} KV heads are not pairwise copies, so all {p.n_kv_heads} are kept; the config "
        "differs from the published one."
    )
    return 1
