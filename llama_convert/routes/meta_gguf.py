"""Meta checkpoint → GGUF: one streaming pass from Meta's shards to a ``.gguf`` file, no intermediate folder.

The family's recipes (renamed, rotary rows kept in Meta's order) feed the executor's row blocks or kernel
copies; each block is encoded to the tensor's GGUF type and streamed into ``GGUFStreamWriter``. Metadata
comes from the GGUF facts the family declares (``Capabilities.gguf``, e.g. ``families/llama/gguf.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ..ahead import ahead
from ..errors import UnsupportedError
from ..execute import FileSpan, produce_pieces
from ..families import family_of
from ..formats.gguf.encode import (
    OUTTYPES,
    OutType,
    base_outtype,
    encode,
    encode_threads,
    file_type,
    read_dtype,
    tensor_nbytes,
    tensor_type,
)
from ..formats.gguf.mixture import normalize_outtype
from ..formats.gguf.writer import GGUFStreamWriter, TensorEntry
from ..formats.meta.torch_zip import TorchCheckpoint
from ..formats.peft import Adapter
from ..options import ConversionResult, ConvertOptions, Progress
from ..plan import StackedRecipe, TensorRecipe
from ..resume import fingerprint
from ..spec import ModelSpec
from ..version import __version__
from .adapters import attach, check_family, hf_deltas, load_adapters, merged_note, recipe_head_dims
from .common import Route, Stage, detect_spec, run_planned
from .gguf_plan import (
    METADATA_ALLOWANCE,
    GGUFPlan,
    GGUFTensor,
    apply_mixture,
    model_facts,
    quantize_metadata,
    write_planned_gguf,
)

__all__ = ["ROUTE", "GGUFPlan", "GGUFTensor", "plan_gguf", "write_gguf"]

KEY = ("meta", "gguf")


def gguf_facts(spec: ModelSpec) -> Any:
    """The GGUF facts the family declares (the route table only plans families that declare them)."""
    facts = family_of(spec).capabilities.gguf
    assert facts is not None, f"{spec.family} declares the GGUF route but no GGUF facts"
    return facts


def default_outtype(spec: ModelSpec) -> OutType:
    """The checkpoint's own precision: f16 for float16 weights (Llama 1), bf16 otherwise."""
    return "f16" if spec.source_dtype.torch_name == "float16" else "bf16"


def plan_gguf(
    spec: ModelSpec, outtype: str | None = None, adapters: Sequence[Adapter] = (), *, mmproj: bool = True
) -> GGUFPlan:
    """Tensors, types and sizes of the GGUF file for ``spec``: computed tensors first (as llama.cpp writes
    them), then the recipes in the first shard's order (sequential reads), ``adapters`` merged; for a
    llama-quantize file type, llama-quantize's types and order. With ``mmproj`` and a family that declares
    one, the companion file (a vision projector) likewise, typed as the converter's ``--mmproj`` run of the
    same outtype (bf16 for a llama-quantize type: llama-quantize does not touch projectors)."""
    facts = gguf_facts(spec)
    chosen = normalize_outtype(outtype) if outtype else default_outtype(spec)
    if chosen not in OUTTYPES:
        raise UnsupportedError(f"GGUF output type {chosen!r} is not supported; choose {', '.join(OUTTYPES)}.")
    out: list[GGUFTensor] = []
    config = json_config(spec)
    freqs = facts.rope_freqs(config)
    if freqs is not None:
        entry = TensorEntry(facts.ROPE_FREQS, freqs.shape, GGMLQuantizationType.F32, freqs.nbytes)
        out.append(GGUFTensor(entry, values=freqs))
    with TorchCheckpoint(spec.shards[0]) as first:
        order = {name: i for i, name in enumerate(first.tensors)}
    recipes = facts.gguf_recipes(spec)
    if adapters:
        family = family_of(spec)
        check_family(family, adapters, spec.folder.root)
        hf = family.recipes(spec, spec.source_dtype)
        where = spec.folder.root
        shapes = {r.name: r.shape for r in hf}
        deltas = hf_deltas(adapters, shapes, head_dims=recipe_head_dims(hf), model=spec.name, where=where)
        # GGUF keeps Meta's rotary order: the deltas of q/k get B's rows moved back (LoraDelta.head_dim)
        recipes = attach(recipes, deltas, lambda name: facts.hf_tensor(name, config)[0])
        spec = dataclasses.replace(spec, notes=(*spec.notes, *merged_note(deltas, adapters)))
    out += _planned(recipes, order, chosen)
    out = apply_mixture(out, chosen, model_facts(config, facts.ARCH))
    companions: tuple[GGUFPlan, ...] = ()
    extra = facts.companion(spec) if mmproj and hasattr(facts, "companion") else None
    if extra:
        base = base_outtype(chosen)
        tensors = tuple(_planned(extra, order, base))
        companions = (GGUFPlan(spec, base, facts.COMPANION_ARCH, tensors, prefix=facts.COMPANION_PREFIX),)
    return GGUFPlan(spec, chosen, facts.ARCH, tuple(out), companions=companions)  # type: ignore[arg-type]


def _planned(items: list[TensorRecipe | StackedRecipe], order: dict[str, int], outtype: str) -> list[GGUFTensor]:
    """Each recipe (or stack of recipes) as a GGUF tensor of its type, in the first shard's order."""
    out = []
    for r in sorted(items, key=lambda r: order.get(r.source, len(order))):
        qtype = tensor_type(r.name, r.shape, outtype)  # type: ignore[arg-type]
        entry = TensorEntry(r.name, r.shape, qtype, tensor_nbytes(r.shape, qtype))
        recipes = r.recipes if isinstance(r, StackedRecipe) else (r,)
        read = tuple(dataclasses.replace(x, dtype=read_dtype(qtype, x.source_dtype)) for x in recipes)
        out.append(GGUFTensor(entry, read))
    return out


def json_config(spec: ModelSpec) -> dict[str, Any]:
    """The family's config.json of ``spec`` (what llama.cpp's converter would read its hyperparameters from)."""
    return json.loads(family_of(spec).metadata_files(spec, spec.source_dtype, tokenizer=False)["config.json"])


def entries(plan: GGUFPlan) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of ``plan``'s file (what the naming keys' parameter counts read)."""
    return [(t.entry.name, tuple(t.entry.shape)) for t in plan.tensors]


def _stacked_bytes(tensor: GGUFTensor) -> int:
    """Bytes each recipe of a tensor stacked from equal parts (Llama 4's experts) makes, else 0."""
    recipes = tensor.recipes
    if len(recipes) < 2 or len({math.prod(r.shape) for r in recipes}) != 1 or tensor.entry.nbytes % len(recipes):
        return 0
    return tensor.entry.nbytes // len(recipes)


def write_gguf(plan: GGUFPlan, stage: Stage, files: dict[str, bytes]) -> None:
    """Write the GGUF file of ``plan`` (and its companions) into the stage (metadata from the family's facts
    over ``files``)."""
    facts = gguf_facts(plan.spec)
    shards = [TorchCheckpoint(p) for p in plan.spec.shards]
    threads = encode_threads()

    def write_tensor(stream: GGUFStreamWriter, tensor: GGUFTensor, advance: Callable[[int], None]) -> None:
        if not tensor.recipes:
            assert tensor.values is not None
            advance(stream.write(tensor.values))
            return
        each = _stacked_bytes(tensor)
        for recipe in tensor.recipes:
            if each and stream.skip >= each:  # in the file from an interrupted run: not read again
                stream.skipped(each)
                continue
            # Read, cast and quantize in a thread a block ahead of the writes (spans are not read there).
            for piece in ahead(_encoded(recipe, tensor.entry.qtype)):
                if isinstance(piece, FileSpan):
                    stream.copy_range(piece.shard.source, piece.offset, piece.nbytes, advance)
                else:
                    advance(stream.write(piece))

    def _encoded(recipe: TensorRecipe, qtype: Any) -> Iterator[np.ndarray | FileSpan]:
        for piece in produce_pieces(recipe, shards):
            yield piece if isinstance(piece, FileSpan) else encode(piece, recipe.dtype, qtype, threads)

    try:
        for i, part in enumerate((plan, *plan.companions)):
            writer = GGUFWriter(None, part.arch)
            add = facts.add_spec_metadata if i == 0 else facts.add_companion_metadata
            kw = {"n_params": plan.parameter_count} if i == 0 else {}
            add(writer, plan.spec, files, file_type=file_type(part.outtype), entries=entries(part), **kw)
            if i == 0:
                quantize_metadata(writer, plan.outtype)
            write_planned_gguf(part, stage, writer, write_tensor, path=stage.paths[i])
    finally:
        for shard in shards:
            shard.close()


def _sources(spec: ModelSpec) -> list[Path]:
    scales = sorted(spec.folder.root.glob("fp8_scales_*.pt"))  # an FP8 release: its scales make the values
    return [*spec.shards, spec.folder.params_path, *([spec.folder.tokenizer] if spec.folder.tokenizer else []), *scales]


def plan_meta_to_gguf(src: Path, dst: Path, opts: ConvertOptions) -> GGUFPlan:
    """Recognise the checkpoint in ``src`` and plan its GGUF file."""
    return plan_gguf(detect_spec(src, opts, KEY), opts.outtype, load_adapters(opts.adapters), mmproj=opts.mmproj)


def run_meta_to_gguf(plan: GGUFPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan`` as one GGUF file at ``dst``, the source's checksums verified beside the stream."""
    spec = plan.spec
    family = family_of(spec)

    def body(stage: Stage) -> tuple[str, ...]:
        files = stage.beside.results()[0]
        assert isinstance(files, dict)
        write_gguf(plan, stage, files)
        return tuple(p.name for p in plan.paths(dst))

    return run_planned(
        plan,
        plan.paths(dst),
        opts,
        progress,
        body=body,
        label=f"Converting {spec.name} to GGUF {plan.outtype}",
        staging="resumable-files",
        fingerprint=fingerprint(_sources(spec), __version__, "gguf", plan.to_json(), spec.name, spec.instruct),
        verify_root=spec.folder.root,
        jobs=[lambda: family.metadata_files(spec, spec.source_dtype, tokenizer=True)],
        allowance=METADATA_ALLOWANCE,
    )


ROUTE = Route("meta", "gguf", "Meta checkpoint → GGUF file", plan_meta_to_gguf, run_meta_to_gguf)  # type: ignore[arg-type]
