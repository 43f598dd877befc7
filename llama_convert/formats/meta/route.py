"""Routes into Meta's format: a Hugging Face folder → Meta shards, and Meta → Meta at another MP degree.

Both run the family's forward recipes backwards (``reverse.invert``) into ``consolidated.NN.pth`` files
written side by side in one pass over the source, hashed while written; ``params.json``,
``tokenizer.model`` and ``checklist.chk`` follow. Everything is staged beside the destination and
renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...dtypes import DType, dtype_by_name
from ...errors import InputError, UnsupportedError
from ...output import atomic_output_dir, check_destination, check_free_space
from ...plan import Part, TensorRecipe
from ..hf.reader import HFFolder, find_hf_folder
from .torch_zip import TorchCheckpoint
from .writer import MetaShardWriter, checklist_text

if TYPE_CHECKING:
    from ...pipeline import ConversionResult, ConvertOptions, Progress
    from ...reverse.invert import MetaTensor, RowSource
    from ...reverse.layout import MetaLayout

__all__ = ["MetaPlan", "convert_to_meta", "plan_to_meta", "write_meta_folder"]


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
    # One MD5 lane per core (at most one per shard): shards hash in parallel, each file's bytes in order.
    lanes = [ThreadPoolExecutor(1, thread_name_prefix="md5") for _ in range(min(mp, os.cpu_count() or 1))]
    with atomic_output_dir(dst, force=force) as tmp:
        writer = MetaShardWriter(tmp, mp, lanes)
        try:
            write_meta_tensors(tensors, source, writer, advance=advance)
            digests = writer.finish(sync=sync)
        except BaseException:
            writer.abort()
            raise
        finally:
            for lane in lanes:
                lane.shutdown(wait=True, cancel_futures=True)
        for name, data in small_files.items():
            (tmp / name).write_bytes(data)
            digests[name] = hashlib.md5(data).hexdigest()
        (tmp / "checklist.chk").write_text(checklist_text(digests))
        before_commit()
    return (*sorted(digests), "checklist.chk")


def _check_mp(tensors: Sequence[MetaTensor], mp: int, src: Path) -> None:
    problems = [p for t in tensors if (p := t.check(mp))]
    if problems:
        raise UnsupportedError(f"{src}: cannot write {mp} model-parallel shards ({problems[0]}); choose another --mp.")


def _check_hf_tensors(hf: HFFolder, layout: MetaLayout) -> list[str]:
    """Every tensor the recipes make must be in the folder with the recipe's shape; anything else is refused
    unless the family says it may be dropped. Returns notes."""
    shapes = {name: ref.shape for name, ref in hf.tensors.items()}
    for r in layout.recipes:
        if r.name in layout.constants:
            continue
        name = layout.aliases.get(r.name, r.name)
        if name not in shapes:
            raise InputError(f"{hf.root} lacks {name}, which config.json implies; save the complete model again.")
        if tuple(shapes[name]) != tuple(r.shape):
            raise InputError(
                f"{hf.root}: {name} has shape {list(shapes[name])} but config.json implies {list(r.shape)}; "
                "the config and the weights disagree."
            )
    extra = sorted(set(shapes) - {r.name for r in layout.recipes} - set(layout.aliases.values()))
    ignored = [n for n in extra if layout.ignored_suffixes and n.endswith(layout.ignored_suffixes)]
    refused = [n for n in extra if n not in ignored]
    if refused:
        more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
        raise UnsupportedError(
            f"{hf.root} holds {refused[0]}{more}, which Meta's format has no place for; merge adapters or remove it."
        )
    notes = [f"ignored {len(ignored)} tensor(s) Meta's code recomputes ({ignored[0]}, …)"] if ignored else []
    narrowed = sorted({r.dtype.torch_name for r in hf.tensors.values() if r.dtype.itemsize > layout.dtype.itemsize})
    if layout.dtype.torch_name == "bfloat16" and any(r.dtype.torch_name == "float16" for r in hf.tensors.values()):
        narrowed.append("float16")
    if narrowed:
        notes.append(
            f"weights rounded from {' and '.join(narrowed)} to {layout.dtype} (Meta's dtype for the family); "
            "pass --dtype to keep another"
        )
    return notes


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


def _layout_from_hf(hf: HFFolder, dst: Path, opts: ConvertOptions, mp: int) -> MetaLayout:
    """Ask the families, in registry order, which one the config describes (the last one claims or refuses)."""
    from ...families import FAMILIES

    for family in FAMILIES:
        make = getattr(family, "meta_layout_from_hf", None)
        if make is None:
            continue
        layout = make(
            hf.config, hf.root, set(hf.tensors), mp=mp, dtype=_dtype(opts.dtype), dst=dst, tokenizer=opts.tokenizer
        )
        if layout is not None:
            return layout
    raise UnsupportedError(f"{hf.root / 'config.json'} describes a model no family converts to Meta's format.")


@dataclass(frozen=True)
class MetaPlan:
    """What a conversion into Meta's format will write, decided before any weight byte is read."""

    spec: Any  # the family's spec of the written checkpoint
    mp: int
    tensors: tuple[MetaTensor, ...]
    small_files: dict[str, bytes]
    notes: tuple[str, ...]

    @property
    def total_size(self) -> int:
        return sum(t.nbytes(self.mp) for t in self.tensors)

    def lines(self) -> list[str]:
        """The plan as text for ``--dry-run``: every Meta tensor, its shard shape, split axis and sources."""
        out = [f"consolidated.00.pth … consolidated.{self.mp - 1:02d}.pth  ({self.total_size / 1e9:.2f} GB)"]
        for t in self.tensors:
            split = "replicated" if t.mp_axis is None else f"split on dim {t.mp_axis}"
            steps = []
            for seg in t.segments:
                step = seg.source
                step += " (halves → pairs)" if seg.rotary else ""
                step += f" (each head ×{seg.kv_repeat})" if seg.kv_repeat > 1 else ""
                steps.append(step)
            out.append(f"  {t.name} {list(t.shard_shape(self.mp))} {t.dtype}, {split} ← {'; '.join(steps)}")
        out += [f"{name}  ({len(data)} bytes)" for name, data in self.small_files.items()]
        return [*out, "checklist.chk"]


def _plan_from_hf(hf: HFFolder, dst: Path, opts: ConvertOptions, mp: int) -> tuple[MetaPlan, MetaLayout]:
    from ...reverse.invert import invert_recipes

    layout = _layout_from_hf(hf, dst, opts, mp)
    notes = [*layout.notes, *_check_hf_tensors(hf, layout)]
    notes.append("a Hugging Face folder has no checksums to verify; checklist.chk covers the output")
    tensors = sorted(invert_recipes(layout.recipes, dtype=layout.dtype), key=lambda t: layout.order(t.name))
    _check_mp(tensors, mp, hf.root)
    return MetaPlan(layout.spec, mp, tuple(tensors), layout.small_files, tuple(notes)), layout


def plan_to_meta(src: str | os.PathLike[str], dst: str | os.PathLike[str] = "out", **options: Any) -> MetaPlan:
    """Plan a conversion into Meta's format (an HF folder, or a Meta checkpoint at ``mp`` shards) without
    writing anything; ``options`` are ``ConvertOptions`` fields."""
    from ...pipeline import ConvertOptions, source_format

    opts = ConvertOptions(**options)
    src, dst = Path(src), Path(dst)
    if source_format(src) == "hf":
        with find_hf_folder(src) as hf:
            return _plan_from_hf(hf, dst, opts, _degree(opts.mp))[0]
    _, _, layout, tensors = _plan_reshard(src, opts, _degree(opts.mp))
    return MetaPlan(layout.spec, _degree(opts.mp), tuple(tensors), layout.small_files, layout.notes)


def hf_to_meta(src: Path, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """A Hugging Face folder → Meta's format with ``opts.mp`` shards (default 1)."""
    from ...reverse.sources import HFRows

    started = time.perf_counter()
    mp = _degree(opts.mp)
    check_destination(dst.absolute(), force=opts.force)
    with find_hf_folder(src) as hf:
        plan, layout = _plan_from_hf(hf, dst, opts, mp)
        progress.start(plan.total_size, f"Writing {plan.spec.name} (Meta, MP{mp})")
        try:
            files = write_meta_folder(
                dst,
                plan.tensors,
                HFRows(hf, layout.aliases, layout.constants),
                mp=mp,
                small_files=plan.small_files,
                force=opts.force,
                advance=progress.advance,
            )
        finally:
            progress.finish()
    return _result(plan.spec, dst, files, plan.total_size, started, False, list(plan.notes))


def _plan_reshard(src: Path, opts: ConvertOptions, mp: int) -> tuple[Any, list[TensorRecipe], MetaLayout, list]:
    """The source spec, recipes reading it, the target layout and its Meta tensors (source order)."""
    from ...detect import detect
    from ...families import family_of
    from ...reverse.invert import invert_recipes

    spec = detect(src, llama_version=opts.llama_version, instruct=opts.instruct, fold_kv_heads=opts.fold_kv_heads)
    make = getattr(family_of(spec), "reshard_layout", None)
    if make is None:
        raise UnsupportedError(f"{src}: resharding {spec.name} checkpoints is not supported yet.")
    source_recipes, layout = make(spec, mp)
    target_recipes = list(layout.recipes)
    with TorchCheckpoint(spec.shards[0]) as first:
        refs = dict(first.tensors)
    # Tensors no recipe reads (rope.freqs of old checkpoints) are carried over, the same in every shard.
    used = {p.source for r in source_recipes for p in r.parts}
    for name, ref in refs.items():
        if name not in used:
            extra = TensorRecipe(name, (Part(name, None),), ref.shape, ref.dtype, ref.dtype)
            source_recipes.append(extra)
            target_recipes.append(extra)
    order = {name: i for i, name in enumerate(refs)}
    tensors = sorted(invert_recipes(target_recipes, dtype=layout.dtype), key=lambda t: order[t.name])
    tensors = [dataclasses.replace(t, dtype=refs[t.name].dtype) for t in tensors]
    _check_mp(tensors, mp, src)
    return spec, source_recipes, layout, tensors


def reshard(src: Path, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """A Meta checkpoint → the same model at ``opts.mp`` shards (bit-exact tensors), checksums verified."""
    from ...reverse.sources import RecipeRows
    from ...verify import BackgroundVerify

    started = time.perf_counter()
    mp = _degree(opts.mp)
    check_destination(dst.absolute(), force=opts.force)
    spec, source_recipes, layout, tensors = _plan_reshard(src, opts, mp)
    shards = [TorchCheckpoint(p) for p in spec.shards]
    notes = list(layout.notes)
    verifier = BackgroundVerify(spec.folder.root, workers=opts.verify_workers) if opts.verify else None
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
            small_files=layout.small_files,
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
    return _result(layout.spec, dst, files, total, started, verified, notes)


def _degree(mp: int | None) -> int:
    if mp is None:
        return 1
    if mp < 1:
        raise InputError(f"--mp {mp} is not a positive number of model-parallel shards.")
    return mp


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
