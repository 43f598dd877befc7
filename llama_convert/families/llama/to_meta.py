"""The Llama text family's side of the way back: the target Meta layout of an HF folder, its small files,
and the Meta layout of a resharded Meta checkpoint. The tensors themselves come from the family's own
forward recipes (``layout.recipes``), run backwards by ``reverse.invert``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...dtypes import DType
from ...errors import InputError, MissingFileError, UnsupportedError
from ...formats.meta.folder import MetaFolder, parse_params
from ...tokenizer import detect_tokenizer_kind
from ...tokenizer.tiktoken_ranks import tiktoken_model_from_tokenizer_json
from .from_hf import MetaTarget
from .releases import RELEASES, SIZE_LABELS, Version
from .spec import LlamaSpec

if TYPE_CHECKING:
    from ...plan import MetaLayout, TensorRecipe

__all__ = [
    "META_DTYPE",
    "extra_meta_tensors",
    "layout_from_hf",
    "meta_order",
    "meta_small_files",
    "resharded_spec",
    "target_spec",
]

META_DTYPE = {"llama1": "float16", "llama2": "bfloat16", "codellama": "bfloat16", "llama3": "bfloat16"}
_FACTOR_VERSION: dict[float | None, Version] = {None: "3", 8.0: "3.1", 32.0: "3.2"}
_FAMILY_VERSION: dict[str, Version] = {"llama1": "1", "llama2": "2", "codellama": "code"}


def meta_order(name: str) -> int:
    """Sort key giving the order Meta's shards store tensors in: embedding, layers, norm, output, rope.freqs."""
    return {"tok_embeddings.weight": 0, "norm.weight": 2, "output.weight": 3, "rope.freqs": 4}.get(name, 1)


def extra_meta_tensors(target: MetaTarget) -> dict[str, np.ndarray]:
    """Tensors Meta ships that no HF tensor holds: Llama 1/2's precomputed rotary frequencies ``rope.freqs``
    (1 / theta^(2i / head_dim), in the weights' dtype, in every shard); code that loads Llama 2 shards
    often deletes that key before ``load_state_dict`` and fails without it."""
    if target.family not in ("llama1", "llama2"):
        return {}
    theta = np.float32(target.params.get("rope_theta", 10000.0))
    hd = target.head_dim
    return {"rope.freqs": np.float32(1.0) / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)}


def kv_repeat(n_kv_heads: int, mp: int, where: object = "the model") -> int:
    """How often Meta repeats each KV head so that every one of ``mp`` shards holds one (1: no repeat)."""
    if mp <= n_kv_heads:
        return 1
    if mp % n_kv_heads:
        raise UnsupportedError(
            f"{where}: {mp} shards cannot share {n_kv_heads} KV heads (Meta repeats KV heads only when the degree "
            "divides by their number); choose another --mp."
        )
    return mp // n_kv_heads


def target_spec(target: MetaTarget, *, mp: int, dtype: DType, root: Path) -> LlamaSpec:
    """The spec of the Meta checkpoint an HF model becomes: its forward recipes name every tensor."""
    version = _FACTOR_VERSION[target.rope_factor] if target.family == "llama3" else _FAMILY_VERSION[target.family]
    release = RELEASES[version]
    repeat = kv_repeat(target.n_kv_heads, mp, root.name)
    params = parse_params(target.params, root / "params.json")
    params = dataclasses.replace(params, n_kv_heads=params.n_kv_heads * repeat)
    size = SIZE_LABELS.get((release.family, target.dim, target.n_layers), "")
    folder = MetaFolder(
        root,
        root / "params.json",
        target.params,
        params,
        tuple(root / f"consolidated.{r:02d}.pth" for r in range(mp)),
        None,
    )
    return LlamaSpec(
        family="llama",
        name=" ".join(x for x in (release.title, size) if x),
        folder=folder,
        mp=mp,
        source_dtype=dtype,
        instruct=False,
        evidence=(),
        summary=f"{target.n_layers} layers, dim {target.dim}, {target.n_heads} heads / {target.n_kv_heads} KV heads, "
        f"vocab {target.vocab_size}",
        parameter_count=0,
        notes=target.notes,
        release=release,
        params=params,
        vocab_size=target.vocab_size,
        size=size,
        instruct_reason="",
        version_reason="config.json",
        kv_fold=repeat,
        tie_embeddings=False,  # Meta always ships output.weight; a tied HF model's is the embedding
        rope_scaling_factor=target.rope_factor,
        guard=None,
    )


def resharded_spec(spec: LlamaSpec, mp: int) -> tuple[LlamaSpec, dict[str, Any]]:
    """The spec of ``spec``'s model at ``mp`` shards (KV heads repeated when needed) and its params.json."""
    kv = spec.n_kv_heads
    repeat = kv_repeat(kv, mp, spec.folder.root)
    params = dataclasses.replace(spec.params, n_kv_heads=kv * repeat)
    raw = dict(spec.folder.raw_params)
    if params.n_kv_heads != spec.params.n_kv_heads:
        nested = "dim" not in raw and isinstance(raw.get("model"), dict)
        if nested:
            raw["model"] = {**raw["model"], "n_kv_heads": params.n_kv_heads}
        else:
            raw["n_kv_heads"] = params.n_kv_heads
    shards = tuple(spec.folder.root / f"consolidated.{r:02d}.pth" for r in range(mp))
    folder = dataclasses.replace(spec.folder, shards=shards, raw_params=raw, params=params)
    out = dataclasses.replace(spec, folder=folder, params=params, mp=mp, kv_fold=repeat, tie_embeddings=False, fp8=None)
    return out, raw


def _tokenizer_model(root: Path, target: MetaTarget) -> tuple[bytes, str]:
    """The release's tokenizer.model: copied when present, else rebuilt (Llama 3) from tokenizer.json."""
    wanted = "tiktoken" if target.family == "llama3" else "sentencepiece"
    for path in (root / "tokenizer.model", root / "original" / "tokenizer.model"):
        if path.is_file():
            kind = detect_tokenizer_kind(path)
            if kind != wanted:
                raise InputError(
                    f"{path} is a {kind} tokenizer but config.json describes a {target.family} model; "
                    "put the model's own tokenizer.model there."
                )
            return path.read_bytes(), f"tokenizer.model copied from {path.relative_to(root)}"
    if target.family == "llama3" and (root / "tokenizer.json").is_file():
        data = tiktoken_model_from_tokenizer_json(root / "tokenizer.json", vocab_size=target.vocab_size)
        return data, "tokenizer.model rebuilt from tokenizer.json (tiktoken ranks = token ids)"
    raise MissingFileError(
        f"{root} has no tokenizer.model{' or tokenizer.json' if target.family == 'llama3' else ''}; "
        "copy the release's tokenizer.model into it (or pass --no-tokenizer)."
    )


def _vocab_from_tokenizer(params: dict[str, Any], model: bytes, vocab: int) -> dict[str, Any]:
    """Llama 1/2 write ``vocab_size: -1`` and Code Llama none: Meta's code then sizes the embedding from the
    tokenizer. Keep that form when the tokenizer has exactly the model's vocabulary, else state the size."""
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=model).vocab_size()
    out = {k: v for k, v in params.items() if k != "vocab_size"}
    if pieces != vocab:
        return {**out, "vocab_size": vocab}
    return {**out, "vocab_size": -1} if "vocab_size" in params else out


def meta_small_files(
    root: Path, target: MetaTarget, spec: LlamaSpec, *, tokenizer: bool
) -> tuple[dict[str, bytes], list[str]]:
    """params.json (the family's keys; MP-repeated KV heads counted) and tokenizer.model, with notes."""
    notes: list[str] = []
    params = dict(target.params)
    files: dict[str, bytes] = {}
    if tokenizer:
        files["tokenizer.model"], note = _tokenizer_model(root, target)
        notes.append(note)
        if target.family != "llama3":
            params = _vocab_from_tokenizer(params, files["tokenizer.model"], target.vocab_size)
    if spec.params.n_kv_heads != target.n_kv_heads:
        params["n_kv_heads"] = spec.params.n_kv_heads
        notes.append(
            f"each of the {target.n_kv_heads} KV heads repeated {spec.kv_fold}× over {spec.mp} shards, "
            f"as Meta's MP{spec.mp} release does"
        )
    files["params.json"] = json.dumps(params).encode()
    return files, notes


_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers saved; Meta's code recomputes them


def layout_from_hf(
    config: dict[str, Any],
    root: Path,
    hf_names: set[str],
    *,
    mp: int,
    dtype: DType | None,
    dst: Path,
    tokenizer: bool,
) -> MetaLayout:
    """The Meta checkpoint an HF Llama folder becomes (refusing what params.json cannot express)."""
    from ...dtypes import DTYPES, dtype_by_name
    from ...plan import MetaLayout, Part, TensorRecipe
    from .from_hf import target_from_hf_config
    from .layout import GLOBAL_SPLITS, recipes

    target = target_from_hf_config(config, where=str(root / "config.json"))
    dtype = dtype or dtype_by_name(META_DTYPE[target.family])
    spec = target_spec(target, mp=mp, dtype=dtype, root=dst)
    out = recipes(spec, dtype)
    constants = extra_meta_tensors(target)
    f32 = DTYPES["float32"]
    out += [TensorRecipe(name, (Part(name, None),), value.shape, f32, f32) for name, value in constants.items()]
    aliases: dict[str, str] = {}
    notes = list(target.notes)
    head, embed = GLOBAL_SPLITS["output.weight"][0], GLOBAL_SPLITS["tok_embeddings.weight"][0]
    if head not in hf_names and target.tie_embeddings:
        aliases[head] = embed
        notes.append("output.weight written from the tied embedding, as Meta ships it")
    small, more = meta_small_files(root, target, spec, tokenizer=tokenizer)
    return MetaLayout(
        spec=spec,
        dtype=dtype,
        recipes=out,
        small_files=small,
        aliases=aliases,
        constants=constants,
        ignored_suffixes=_IGNORED_SUFFIXES,
        order=meta_order,
        notes=(*notes, *more),
    )


def reshard_layout(spec: LlamaSpec, mp: int) -> tuple[list[TensorRecipe], MetaLayout]:
    """Recipes that read ``spec``'s checkpoint, and the layout of the same model at ``mp`` shards. Neither
    permutes rotary rows (Meta's order is kept) and both name ``output.weight`` (Meta ships it when tied)."""
    from ...plan import MetaLayout
    from .layout import recipes

    def plain(out: list[TensorRecipe]) -> list[TensorRecipe]:
        return [dataclasses.replace(r, rotary_heads=None) for r in out]

    target, params = resharded_spec(spec, mp)
    source = plain(recipes(dataclasses.replace(spec, tie_embeddings=False), spec.source_dtype))
    notes = list(spec.notes)
    if target.kv_fold > 1:
        notes.append(
            f"each of the {spec.n_kv_heads} KV heads repeated {target.kv_fold}× over {mp} shards, "
            f"as Meta's MP{mp} release does"
        )
    assert spec.folder.tokenizer is not None  # a recognised Llama checkpoint has one
    small = {"params.json": json.dumps(params).encode(), "tokenizer.model": spec.folder.tokenizer.read_bytes()}
    layout = MetaLayout(
        spec=dataclasses.replace(target, notes=tuple(notes)),
        dtype=spec.source_dtype,
        recipes=plain(recipes(target, spec.source_dtype)),
        small_files=small,
        notes=tuple(notes),
    )
    return source, layout
