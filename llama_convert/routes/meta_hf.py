"""Meta checkpoint → Hugging Face folder: recognise, plan, stream the weights, write the small files.

Verification hashes in background threads while converting and the small files (tokenizer, configs) and
the family's deferred checks run beside the weight stream; a failure of any stops the stream. Output is
staged in a resumable folder beside the destination: after a crash the same command keeps the files it
had proven complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ..execute import write_weights
from ..families import family_of
from ..formats.meta.torch_zip import TorchCheckpoint
from ..formats.peft import Adapter
from ..formats.storage import is_remote
from ..options import ConversionResult, ConvertOptions, Progress, as_dtype
from ..plan import ConversionPlan, build_plan, parse_size
from ..resume import fingerprint
from ..spec import ModelSpec
from ..version import __version__
from .adapters import attach, check_family, hf_deltas, load_adapters, merged_note, recipe_head_dims
from .common import Route, Stage, detect_spec, run_planned
from .tied import check_tied_rows

__all__ = ["ROUTE", "plan_for", "plan_meta_to_hf"]

KEY = ("meta", "hf")


def plan_for(
    spec: ModelSpec,
    *,
    dtype: object = None,
    max_shard_size: str | int = "5GB",
    adapters: Sequence[Adapter] = (),
) -> ConversionPlan:
    """The Hugging Face plan of a recognised spec, tensors in the first shard's order, ``adapters`` merged."""
    out_dtype = as_dtype(dtype) or spec.source_dtype  # type: ignore[arg-type]
    with TorchCheckpoint(spec.shards[0]) as first:
        order = list(first.tensors)
    family = family_of(spec)
    recipes = family.recipes(spec, out_dtype)
    if adapters:
        check_family(family, adapters, spec.folder.root)
        shapes = {r.name: r.shape for r in recipes}
        deltas = hf_deltas(
            adapters, shapes, head_dims=recipe_head_dims(recipes), model=spec.name, where=spec.folder.root
        )
        recipes = attach(recipes, deltas)
        spec = dataclasses.replace(spec, notes=(*spec.notes, *merged_note(deltas, adapters)))
    return build_plan(spec, recipes, dtype=out_dtype, max_shard_size=parse_size(max_shard_size), source_order=order)


def plan_meta_to_hf(src: Path, dst: Path, opts: ConvertOptions) -> ConversionPlan:
    """Recognise the checkpoint in ``src`` and plan its Hugging Face folder."""
    spec = detect_spec(src, opts, KEY)
    adapters = load_adapters(opts.adapters)
    return plan_for(spec, dtype=opts.dtype, max_shard_size=opts.max_shard_size, adapters=adapters)


def run_meta_to_hf(plan: ConversionPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan`` into a Hugging Face folder at ``dst``."""
    spec = plan.spec
    family = family_of(spec)
    with_tokenizer = opts.tokenizer or opts.tokenizer_only
    tie = None if opts.tokenizer_only else family.tied_rows(spec)
    remote = is_remote(spec.folder.root)
    checks = [lambda: check_tied_rows(tie, plan, None)] if tie is not None and not remote else []
    sources = [*spec.shards, spec.folder.params_path, *([spec.folder.tokenizer] if spec.folder.tokenizer else [])]
    sources += sorted(spec.folder.root.glob("fp8_scales_*.pt"))  # an FP8 release: its scales make the values
    key = fingerprint(
        sources, __version__, "hf", (opts.tokenizer_only, with_tokenizer), plan.to_json(), spec.name, spec.instruct
    )

    changes: dict[str, float] = {}  # requantized tensors (--keep-fp8) → largest relative change

    def body(stage: Stage) -> tuple[str, ...]:
        names: list[str] = []
        if not opts.tokenizer_only:
            names += write_weights(
                plan,
                stage.path,
                advance=stage.advance,
                skip=frozenset(stage.resumed),
                on_file_done=stage.record,
                observe=changes.__setitem__,
                keep_cached=frozenset([tie.kept] if tie is not None and remote else []),  # read back after
            )
            if tie is not None and remote:
                check_tied_rows(tie, plan, stage.path)
        metadata = stage.beside.results()[0]
        assert isinstance(metadata, dict)
        if opts.tokenizer_only:
            metadata = {k: v for k, v in metadata.items() if k not in ("config.json", "generation_config.json")}
        for name, data in metadata.items():
            (stage.path / name).write_bytes(data)
        return (*names, *metadata)

    result = run_planned(
        plan,
        [dst],
        opts,
        progress,
        body=body,
        label=f"Converting {spec.name}",
        staging="resumable",
        verify_root=None if opts.tokenizer_only else spec.folder.root,
        jobs=[lambda: family.metadata_files(spec, plan.dtype, tokenizer=with_tokenizer), *checks],
        fingerprint=key,
        planned_files=len(plan.files),
        total=0 if opts.tokenizer_only else plan.total_size,
    )
    if changes:
        name = max(changes, key=changes.__getitem__)
        note = (
            f"{len(changes)} row-parallel FP8 weight(s) requantized per full row (fbgemm's rule); largest relative "
            f"change {changes[name]:.3g} of the row's max (in {name})"
        )
        result = dataclasses.replace(result, notes=(*result.notes, note))
    return result


ROUTE = Route("meta", "hf", "Meta checkpoint → Hugging Face folder", plan_meta_to_hf, run_meta_to_hf)  # type: ignore[arg-type]
