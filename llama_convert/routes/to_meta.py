"""The routes into Meta's format: a Hugging Face folder → Meta shards, and Meta → Meta at another MP degree.

Both run the family's forward recipes backwards (``reverse.invert``) into ``consolidated.NN.pth`` files
written side by side in one pass over the source, hashed while written; ``params.json``,
``tokenizer.model`` and ``checklist.chk`` follow. Everything is staged beside the destination and
renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dtypes import F8_E4M3, DType
from ..errors import InputError, UnsupportedError
from ..families import family_of
from ..formats.hf.reader import HFFolder, find_hf_folder
from ..formats.meta.torch_zip import TorchCheckpoint
from ..formats.meta.writer import MetaShardWriter, checklist_text, shard_name
from ..options import ConversionResult, ConvertOptions, Progress, as_dtype
from ..plan import LoraDelta, MetaLayout, Part, TensorRecipe
from ..resume import fingerprint
from ..reverse.invert import MetaTensor, RowSource, invert_recipes, write_meta_tensors
from ..reverse.sources import AdaptedRows, HFRows, RecipeRows
from ..version import __version__
from .adapters import attach, check_family, hf_deltas, load_adapters, merged_note, recipe_head_dims
from .common import Route, Stage, detect_spec, family_for_hf, run_planned

__all__ = ["HF_ROUTE", "RESHARD_ROUTE", "MetaPlan", "plan_hf_to_meta", "plan_reshard", "write_meta_folder"]


def write_meta_folder(
    stage: Stage,
    tensors: Sequence[MetaTensor],
    source: RowSource,
    *,
    mp: int,
    small_files: dict[str, bytes],
    sync: bool = True,
) -> tuple[str, ...]:
    """Write the shards, ``small_files`` and checklist.chk into the stage's folder. Every
    ``CHECKPOINT_BYTES`` the shards are fsync'd and the stage records how far they got (tensors done, each
    archive's state), so a rerun after a crash continues from there."""
    names = [shard_name(r) for r in range(mp)]
    kept = stage.checkpoints.get(_SHARDS)
    resume = kept.position if kept is not None and _usable(kept.position, mp, len(tensors)) else None
    writer = MetaShardWriter(stage.path, mp, resume=resume["shards"] if resume else None)
    first = resume["tensors"] if resume else 0
    every = min(CHECKPOINT_BYTES, max(1, sum(t.nbytes(mp) for t in tensors) // 16))
    since = 0

    def on_tensor(done: int) -> None:
        nonlocal since
        since += tensors[done - 1].nbytes(mp)
        if since >= every:
            stage.checkpoint(_SHARDS, names, {"tensors": done, "shards": writer.checkpoint()})
            since = 0

    try:  # from here on a failure (also one a side job reports through advance) discards the open archives
        stage.advance(sum(t.nbytes(mp) for t in tensors[:first]))
        write_meta_tensors(tensors, source, writer, advance=stage.advance, first=first, on_tensor=on_tensor)
        digests = writer.finish(sync=sync)
    except BaseException:
        writer.abort()
        raise
    for name, data in small_files.items():
        (stage.path / name).write_bytes(data)
        digests[name] = hashlib.md5(data).hexdigest()
    (stage.path / "checklist.chk").write_text(checklist_text(digests))
    return (*sorted(digests), "checklist.chk")


_SHARDS = "shards"
CHECKPOINT_BYTES = 512 << 20  # at most this much is redone after a crash (smaller models: 1/16)


def _usable(position: Any, mp: int, n_tensors: int) -> bool:
    """A checkpoint position this plan can continue from (the fingerprint matched, so it is ours)."""
    return (
        isinstance(position, dict)
        and isinstance(position.get("tensors"), int)
        and 0 < position["tensors"] <= n_tensors
        and isinstance(position.get("shards"), list)
        and len(position["shards"]) == mp
    )


def _check_mp(tensors: Sequence[MetaTensor], mp: int, src: Path) -> None:
    problems = [p for t in tensors if (p := t.check(mp))]
    if problems:
        raise UnsupportedError(f"{src}: cannot write {mp} model-parallel shards ({problems[0]}); choose another --mp.")


def _invert(recipes: Sequence[TensorRecipe], layout: MetaLayout, mp: int, src: Path) -> list[MetaTensor]:
    try:
        return invert_recipes(recipes, dtype=layout.dtype, mp=mp, shard_shapes=layout.shard_shapes)
    except UnsupportedError as e:
        raise UnsupportedError(f"{src}: cannot write {mp} model-parallel shards ({e}); choose another --mp.") from None


def _unfilled_notes(tensors: Sequence[MetaTensor]) -> list[str]:
    gaps = [t for t in tensors if t.unfilled]
    if not gaps:
        return []
    return [
        f"{len(gaps)} tensor(s) such as {gaps[0].name} have entries no Hugging Face tensor holds "
        f"({gaps[0].unfilled} rows of it, which Meta's code never reads): "
        "written as zeros"
    ]


def _check_hf_tensors(hf: HFFolder, layout: MetaLayout) -> list[str]:
    """Every tensor the recipes make must be in the folder with the recipe's shape; anything else is refused
    unless the family says it may be dropped. Returns notes."""
    shapes = {name: ref.shape for name, ref in hf.tensors.items()}
    for r in layout.recipes:
        if r.name in layout.constants:
            continue
        name = layout.aliases.get(r.name, r.name)
        if name not in shapes:
            raise InputError(
                f"{hf.root} lacks {name}, which config.json implies (weights: {', '.join(hf.files)}); "
                "save the complete model again."
            )
        if tuple(shapes[name]) != tuple(r.shape):
            raise InputError(
                f"{hf.file_of(name).path}: {name} has shape {list(shapes[name])} but config.json implies "
                f"{list(r.shape)}; the config and the weights disagree."
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


def _layout_from_hf(hf: HFFolder, dst: Path, opts: ConvertOptions, mp: int) -> MetaLayout:
    """The Meta checkpoint the family whose architecture config.json names makes of the folder."""
    family = family_for_hf(hf.config, hf.root / "config.json", HF_KEY)
    return family.meta_layout_from_hf(  # type: ignore[attr-defined]
        hf.config, hf.root, set(hf.tensors), mp=mp, dtype=as_dtype(opts.dtype), dst=dst, tokenizer=opts.tokenizer
    )


HF_KEY, RESHARD_KEY = ("hf", "meta"), ("meta", "meta")


@dataclass(frozen=True)
class MetaPlan:
    """What a conversion into Meta's format will write, decided before any weight byte is read."""

    spec: Any  # the family's spec of the written checkpoint
    mp: int
    tensors: tuple[MetaTensor, ...]
    small_files: dict[str, bytes]
    notes: tuple[str, ...]
    layout: MetaLayout
    source: Path  # the Hugging Face folder, or the Meta checkpoint folder being resharded
    source_spec: Any = None  # resharding: the spec of the source checkpoint …
    source_recipes: tuple[TensorRecipe, ...] = ()  # … and the recipes that read it
    deltas: dict[str, tuple[LoraDelta, ...]] = field(default_factory=dict)  # LoRA, by Hugging Face tensor name

    @property
    def total_size(self) -> int:
        return sum(t.nbytes(self.mp) for t in self.tensors)

    @property
    def headline(self) -> str:
        return f"{self.spec.name} in Meta's format, MP{self.mp}"

    def lines(self) -> list[str]:
        """The plan as text for ``--dry-run``: every Meta tensor, its shard shape, split axis and sources."""
        out = [f"consolidated.00.pth … consolidated.{self.mp - 1:02d}.pth  ({self.total_size / 1e9:.2f} GB)"]
        for t in self.tensors:
            split = "replicated" if t.mp_axis is None else f"split on dim {t.mp_axis}"
            steps = []
            for seg in t.segments:
                step = seg.source
                step += "".join(f" {d.describe()}" for d in self.deltas.get(seg.source, ()))
                step += " (halves → pairs)" if seg.rotary else ""
                step += f" (each head ×{seg.kv_repeat})" if seg.kv_repeat > 1 else ""
                if seg.cat_axis:
                    step += f" ({seg.offset}:{seg.offset + seg.shape[seg.cat_axis]} of dim {seg.cat_axis})"
                if seg.gather is not None:
                    step += " (rows gathered: repeats checked equal, padding checked zero)"
                steps.append(step)
            out.append(f"  {t.name} {list(t.shard_shape(self.mp))} {t.dtype}, {split} ← {'; '.join(steps)}")
        out += [f"{name}  ({len(data)} bytes)" for name, data in self.small_files.items()]
        return [*out, "checklist.chk"]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "family": self.spec.family,
            "format": "meta",
            "model_parallel": self.mp,
            "total_bytes": self.total_size,
            "tensors": [
                {
                    "name": t.name,
                    "shard_shape": list(t.shard_shape(self.mp)),
                    "dtype": t.dtype.torch_name,
                    "mp_axis": t.mp_axis,
                    "sources": [seg.source for seg in t.segments],
                }
                for t in self.tensors
            ],
            "files": [*self.small_files, "checklist.chk"],
            "adapters": {name: [d.describe() for d in ds] for name, ds in sorted(self.deltas.items())},
        }


def plan_hf_to_meta(src: Path, dst: Path, opts: ConvertOptions) -> MetaPlan:
    """The Meta checkpoint (``opts.mp`` shards, default 1) a Hugging Face folder becomes."""
    mp = _degree(opts.mp)
    with find_hf_folder(src) as hf:
        layout = _layout_from_hf(hf, dst, opts, mp)
        notes = [*layout.notes, *_check_hf_tensors(hf, layout)]
        root = hf.root
        adapters = load_adapters(opts.adapters)
        check_family(family_for_hf(hf.config, root / "config.json", HF_KEY), adapters, root)
        shapes = {name: ref.shape for name, ref in hf.tensors.items()}
        # the deltas are added to the Hugging Face rows as read, before they go back to Meta's rotary order
        deltas = hf_deltas(adapters, shapes, model=layout.spec.name, where=root) if adapters else {}
    notes += [
        *merged_note(deltas, adapters),
        "a Hugging Face folder has no checksums to verify; checklist.chk covers the output",
    ]
    tensors = sorted(_invert(layout.recipes, layout, mp, root), key=lambda t: layout.order(t.name))
    _check_mp(tensors, mp, root)
    notes += _unfilled_notes(tensors)
    return MetaPlan(layout.spec, mp, tuple(tensors), layout.small_files, tuple(notes), layout, root, deltas=deltas)


def run_hf_to_meta(plan: MetaPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan``'s shards from the Hugging Face folder."""

    def body(stage: Stage) -> tuple[str, ...]:
        with find_hf_folder(plan.source) as hf:
            rows: RowSource = HFRows(hf, plan.layout.aliases, plan.layout.constants)
            if plan.deltas:
                rows = AdaptedRows(rows, plan.deltas)  # type: ignore[arg-type]
            return write_meta_folder(stage, plan.tensors, rows, mp=plan.mp, small_files=plan.small_files)

    label = f"Writing {plan.spec.name} (Meta, MP{plan.mp})"
    key = fingerprint(sorted(p for p in plan.source.iterdir() if p.is_file()), __version__, "meta", plan.to_json())
    return run_planned(
        plan, [dst], opts, progress, body=body, label=label, staging="resumable", verify_root=None, fingerprint=key
    )


def _written_dtype(stored: DType, model: DType) -> DType:
    return model if stored == F8_E4M3 else stored


def plan_reshard(src: Path, dst: Path, opts: ConvertOptions) -> MetaPlan:
    """The same model at ``opts.mp`` shards: recipes reading the source, the target's layout and tensors."""
    if opts.dtype is not None:
        raise UnsupportedError("resharding keeps the checkpoint's dtype; drop --dtype.")
    spec = detect_spec(src, opts, RESHARD_KEY)  # first: a missing or damaged source is said as such
    if opts.mp is None and not opts.adapters:
        raise InputError(f"{src} is already in Meta's format; pass --mp N to write it with N shards.")
    mp = _degree(opts.mp) if opts.mp is not None else spec.mp
    family = family_of(spec)
    source_recipes, layout = family.reshard_layout(spec, mp)  # type: ignore[attr-defined]
    adapters = load_adapters(opts.adapters)
    deltas = {}
    if adapters:
        check_family(family, adapters, spec.folder.root)
        hf = family.recipes(spec, spec.source_dtype)
        shapes, heads = {r.name: r.shape for r in hf}, recipe_head_dims(hf)
        deltas = hf_deltas(adapters, shapes, head_dims=heads, model=spec.name, where=spec.folder.root)
        source_recipes = attach(source_recipes, deltas)  # Meta's rotary order: B's q/k rows move back
        layout = dataclasses.replace(layout, notes=(*layout.notes, *merged_note(deltas, adapters)))
    target_recipes = list(layout.recipes)
    with TorchCheckpoint(spec.shards[0]) as first:
        refs = dict(first.tensors)
    # Tensors no recipe reads (rope.freqs of old checkpoints) are carried over, the same in every shard.
    used = {p.source for r in source_recipes for p in r.parts}
    for name, ref in refs.items():
        if name not in used and not (layout.ignored_suffixes and name.endswith(layout.ignored_suffixes)):
            extra = TensorRecipe(name, (Part(name, None),), ref.shape, ref.dtype, ref.dtype)
            source_recipes.append(extra)
            target_recipes.append(extra)
    order = {name: i for i, name in enumerate(refs)}
    order.update({r.parts[0].source: len(order) for r in target_recipes if r.parts[0].source not in order})
    tensors = sorted(_invert(target_recipes, layout, mp, src), key=lambda t: order[t.name])
    # each tensor keeps its stored dtype; float8 weights (an FP8 release) are written dequantized, as bf16
    tensors = [dataclasses.replace(t, dtype=_written_dtype(refs[t.name].dtype, layout.dtype)) for t in tensors]
    _check_mp(tensors, mp, src)
    return MetaPlan(
        layout.spec,
        mp,
        tuple(tensors),
        layout.small_files,
        layout.notes,
        layout,
        src,
        spec,
        tuple(source_recipes),
        deltas,
    )


def run_reshard(plan: MetaPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan``'s shards from the source checkpoint (bit-exact tensors), its checksums verified."""
    spec = plan.source_spec

    def body(stage: Stage) -> tuple[str, ...]:
        shards = [TorchCheckpoint(p) for p in spec.shards]
        try:
            rows = RecipeRows(plan.source_recipes, shards)
            return write_meta_folder(stage, plan.tensors, rows, mp=plan.mp, small_files=plan.small_files)
        finally:
            for shard in shards:
                shard.close()

    label = f"Resharding {spec.name} MP{spec.mp} → MP{plan.mp}"
    sources = [*spec.shards, spec.folder.params_path, *([spec.folder.tokenizer] if spec.folder.tokenizer else [])]
    sources += sorted(spec.folder.root.glob("fp8_scales_*.pt"))  # an FP8 release: its scales make the values
    key = fingerprint(sources, __version__, "reshard", plan.to_json())
    return run_planned(
        plan,
        [dst],
        opts,
        progress,
        body=body,
        label=label,
        staging="resumable",
        verify_root=spec.folder.root,
        fingerprint=key,
    )


def _degree(mp: int | None) -> int:
    if mp is None:
        return 1
    if mp < 1:
        raise InputError(f"--mp {mp} is not a positive number of model-parallel shards.")
    return mp


HF_ROUTE = Route("hf", "meta", "Hugging Face folder → Meta checkpoint", plan_hf_to_meta, run_hf_to_meta)  # type: ignore[arg-type]
RESHARD_ROUTE = Route("meta", "meta", "Meta checkpoint → Meta checkpoint at another MP", plan_reshard, run_reshard)  # type: ignore[arg-type]
