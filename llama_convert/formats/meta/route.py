"""Routes into Meta's format: a Hugging Face folder → Meta shards, and Meta → Meta at another MP degree.

Both run the family's forward recipes backwards (``reverse.invert``) into ``consolidated.NN.pth`` files
written side by side in one pass over the source, hashed while written; ``params.json``,
``tokenizer.model`` and ``checklist.chk`` follow. Everything is staged beside the destination and
renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ...dtypes import DTYPES, DType, dtype_by_name
from ...errors import InputError, UnsupportedError
from ...output import atomic_output_dir, check_destination, check_free_space
from ...plan import Part, TensorRecipe
from ..hf.reader import HFFolder, find_hf_folder
from .torch_zip import TorchCheckpoint
from .writer import MetaShardWriter, checklist_text

if TYPE_CHECKING:
    from ...pipeline import ConversionResult, ConvertOptions, Progress
    from ...reverse.invert import MetaTensor, RowSource

__all__ = ["convert_to_meta", "write_meta_folder"]

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers saved; Meta recomputes them


def write_meta_folder(
    dst: Path,
    tensors: Sequence[MetaTensor],
    source: RowSource,
    *,
    mp: int,
    small_files: dict[str, bytes],
    force: bool = False,
    sync: bool = True,
    advance: Callable[[int], None] = lambda n: None,
    before_commit: Callable[[], None] = lambda: None,
) -> tuple[str, ...]:
    """Write the shards, ``small_files`` and checklist.chk into a staging folder, then rename it to ``dst``;
    ``before_commit`` runs (and may raise) before the rename."""
    from ...reverse.invert import write_meta_tensors

    total = sum(t.nbytes(mp) for t in tensors)
    check_free_space(dst.absolute(), total + sum(map(len, small_files.values())) + (1 << 20))
    with atomic_output_dir(dst, force=force) as tmp, ThreadPoolExecutor(1, thread_name_prefix="md5") as hasher:
        writer = MetaShardWriter(tmp, mp, hasher)
        try:
            write_meta_tensors(tensors, source, writer, advance=advance)
            digests = writer.finish(sync=sync)
        except BaseException:
            writer.abort()
            raise
        for name, data in small_files.items():
            (tmp / name).write_bytes(data)
            digests[name] = hashlib.md5(data).hexdigest()
        (tmp / "checklist.chk").write_text(checklist_text(digests))
        before_commit()
    return (*sorted(digests), "checklist.chk")


def _plain(recipes: list[TensorRecipe]) -> list[TensorRecipe]:
    """Recipes without the rotary permutation: resharding keeps Meta's own row order."""
    return [dataclasses.replace(r, rotary_heads=None) for r in recipes]


def _check_mp(tensors: Sequence[MetaTensor], mp: int, src: Path) -> None:
    problems = [p for t in tensors if (p := t.check(mp))]
    if problems:
        raise UnsupportedError(f"{src}: cannot write {mp} model-parallel shards ({problems[0]}); choose another --mp.")


def _hf_source(hf: HFFolder, recipes: list[TensorRecipe], tied: bool) -> tuple[dict[str, str], list[str]]:
    """Check the folder holds every tensor the recipes make (shapes included); returns aliases and notes."""
    from ...families.llama.layout import GLOBAL_SPLITS

    aliases: dict[str, str] = {}
    notes: list[str] = []
    head, embed = GLOBAL_SPLITS["output.weight"][0], GLOBAL_SPLITS["tok_embeddings.weight"][0]
    shapes = {name: ref.shape for name, ref in hf.tensors.items()}
    if head not in shapes and tied:
        aliases[head] = embed
        notes.append("output.weight written from the tied embedding, as Meta ships it")
    for r in recipes:
        name = aliases.get(r.name, r.name)
        if name not in shapes:
            raise InputError(f"{hf.root} lacks {name}, which config.json implies; save the complete model again.")
        if tuple(shapes[name]) != tuple(r.shape):
            raise InputError(
                f"{hf.root}: {name} has shape {list(shapes[name])} but config.json implies {list(r.shape)}; "
                "the config and the weights disagree."
            )
    extra = sorted(set(shapes) - {r.name for r in recipes} - set(aliases.values()))
    ignored = [n for n in extra if n.endswith(_IGNORED_SUFFIXES)]
    refused = [n for n in extra if n not in ignored]
    if refused:
        more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
        raise UnsupportedError(
            f"{hf.root} holds {refused[0]}{more}, which Meta's Llama has no place for; merge adapters or remove it."
        )
    if ignored:
        notes.append(f"ignored {len(ignored)} tensor(s) Meta's code recomputes ({ignored[0]}, …)")
    return aliases, notes


def _result(spec, dst: Path, files: tuple[str, ...], total: int, started: float, verified: bool, notes: list[str]):
    from ...pipeline import ConversionResult

    return ConversionResult(
        spec=spec,
        destination=dst,
        files=files,
        bytes_written=total,
        seconds=time.perf_counter() - started,
        verified=verified,
        notes=tuple(notes),
    )


def hf_to_meta(src: Path, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """A Hugging Face Llama folder → Meta's format with ``opts.mp`` shards (default 1)."""
    from ...families.llama.from_hf import target_from_hf_config
    from ...families.llama.layout import recipes as llama_recipes
    from ...families.llama.to_meta import META_DTYPE, extra_meta_tensors, meta_order, meta_small_files, target_spec
    from ...reverse.invert import invert_recipes
    from ...reverse.sources import HFRows

    started = time.perf_counter()
    mp = _degree(opts.mp)
    check_destination(dst.absolute(), force=opts.force)
    with find_hf_folder(src) as hf:
        target = target_from_hf_config(hf.config, where=str(hf.root / "config.json"))
        dtype = _dtype(opts.dtype) or dtype_by_name(META_DTYPE[target.family])
        spec = target_spec(target, mp=mp, dtype=dtype, root=dst)
        recipes = llama_recipes(spec, dtype)
        aliases, notes = _hf_source(hf, recipes, target.tie_embeddings)
        narrowed = sorted({ref.dtype.torch_name for ref in hf.tensors.values() if ref.dtype.itemsize > dtype.itemsize})
        narrowed += ["float16"] if dtype.torch_name == "bfloat16" and _has(hf, "float16") else []
        if narrowed:
            notes.append(
                f"weights rounded from {' and '.join(narrowed)} to {dtype} (Meta's dtype for the family); "
                "pass --dtype to keep another"
            )
        constants = extra_meta_tensors(target)
        for name, value in constants.items():  # replicated in every shard, cast like the weights
            recipes.append(TensorRecipe(name, (Part(name, None),), value.shape, DTYPES["float32"], DTYPES["float32"]))
        tensors = sorted(invert_recipes(recipes, dtype=dtype), key=lambda t: meta_order(t.name))
        _check_mp(tensors, mp, src)
        small, more = meta_small_files(hf.root, target, spec, tokenizer=opts.tokenizer)
        notes = [
            *target.notes,
            *notes,
            *more,
            "a Hugging Face folder has no checksums to verify; checklist.chk covers the output",
        ]
        total = sum(t.nbytes(mp) for t in tensors)
        progress.start(total, f"Writing {spec.name} (Meta, MP{mp})")
        try:
            files = write_meta_folder(
                dst,
                tensors,
                HFRows(hf, aliases, constants),
                mp=mp,
                small_files=small,
                force=opts.force,
                advance=progress.advance,
            )
        finally:
            progress.finish()
    return _result(spec, dst, files, total, started, False, notes)


def reshard(src: Path, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """A Meta checkpoint → the same model at ``opts.mp`` shards (bit-exact tensors), checksums verified."""
    import json

    from ...detect import detect
    from ...families.llama.spec import LlamaSpec
    from ...families.llama.to_meta import resharded_spec
    from ...pipeline import _BackgroundVerify
    from ...reverse.invert import invert_recipes
    from ...reverse.sources import RecipeRows

    started = time.perf_counter()
    mp = _degree(opts.mp)
    check_destination(dst.absolute(), force=opts.force)
    spec = detect(src, llama_version=opts.llama_version, instruct=opts.instruct, fold_kv_heads=opts.fold_kv_heads)
    if not isinstance(spec, LlamaSpec):
        raise UnsupportedError(f"{src}: resharding {spec.name} checkpoints is not supported yet.")
    from ...families.llama.layout import recipes as llama_recipes

    source_spec = dataclasses.replace(spec, tie_embeddings=False)  # Meta ships output.weight even when tied
    target, params = resharded_spec(spec, mp)
    source_recipes = _plain(llama_recipes(source_spec, spec.source_dtype))
    target_recipes = _plain(llama_recipes(target, spec.source_dtype))
    shards = [TorchCheckpoint(p) for p in spec.shards]
    # Tensors no recipe reads (rope.freqs of old checkpoints) are carried over, the same in every shard.
    used = {p.source for r in source_recipes for p in r.parts}
    for name, ref in shards[0].tensors.items():
        if name not in used:
            extra = TensorRecipe(name, (Part(name, None),), ref.shape, ref.dtype, ref.dtype)
            source_recipes.append(extra)
            target_recipes.append(extra)
    tensors = invert_recipes(target_recipes, dtype=spec.source_dtype)
    order = {name: i for i, name in enumerate(shards[0].tensors)}
    tensors = sorted(tensors, key=lambda t: order[t.name])  # the source's own order
    tensors = [dataclasses.replace(t, dtype=shards[0].tensors[t.name].dtype) for t in tensors]
    _check_mp(tensors, mp, src)
    assert spec.folder.tokenizer is not None  # recognised checkpoints have one
    small = {"params.json": json.dumps(params).encode(), "tokenizer.model": spec.folder.tokenizer.read_bytes()}
    notes = list(spec.notes)
    if target.kv_fold > 1:
        notes.append(
            f"each of the {spec.n_kv_heads} KV heads repeated {target.kv_fold}× over {mp} shards, "
            f"as Meta's MP{mp} release does"
        )
    verifier = _BackgroundVerify(spec.folder.root, workers=opts.verify_workers) if opts.verify else None
    verified = False

    def advance(n: int) -> None:
        progress.advance(n)
        if verifier is not None:
            verifier.check()

    def before_commit() -> None:
        nonlocal verified
        verified = verifier.result() if verifier is not None else False

    total = sum(t.nbytes(mp) for t in tensors)
    progress.start(total, f"Resharding {spec.name} MP{spec.mp} → MP{mp}")
    try:
        files = write_meta_folder(
            dst,
            tensors,
            RecipeRows(source_recipes, shards),
            mp=mp,
            small_files=small,
            force=opts.force,
            advance=advance,
            before_commit=before_commit,
        )
    except BaseException:
        if verifier is not None:
            verifier.cancel()
        raise
    finally:
        progress.finish()
        for shard in shards:
            shard.close()
    if verifier is not None and not verified:
        notes.append("no checklist.chk found: the source checksums were not verified.")
    return _result(dataclasses.replace(target, notes=tuple(notes)), dst, files, total, started, verified, notes)


def _degree(mp: int | None) -> int:
    if mp is None:
        return 1
    if mp < 1:
        raise InputError(f"--mp {mp} is not a positive number of model-parallel shards.")
    return mp


def _has(hf: HFFolder, dtype: str) -> bool:
    return any(ref.dtype.torch_name == dtype for ref in hf.tensors.values())


def _dtype(dtype: str | DType | None) -> DType | None:
    return dtype_by_name(dtype) if isinstance(dtype, str) else dtype


def convert_to_meta(src: Path, dst: Path, opts: ConvertOptions, *, progress: Progress) -> ConversionResult:
    """The ``to="meta"`` route: from a Hugging Face folder, or from a Meta checkpoint (resharding)."""
    from ...pipeline import source_format

    if source_format(src) == "hf":
        return hf_to_meta(src, dst, opts, progress)
    if opts.mp is None:
        raise InputError(f"{src} is already in Meta's format; pass --mp N to write it with N shards.")
    if opts.dtype is not None:
        raise UnsupportedError("resharding keeps the checkpoint's dtype; drop --dtype.")
    return reshard(src, dst, opts, progress)
