"""Meta checkpoint → GGUF: one streaming pass from Meta's shards to a ``.gguf`` file, no intermediate folder.

The family's recipes (renamed, rotary rows kept in Meta's order) feed the executor's row blocks or kernel
copies; each block is encoded to the tensor's GGUF type and streamed into ``GGUFStreamWriter``. Metadata
comes from the GGUF facts the family declares (``Capabilities.gguf``, e.g. ``families/llama/gguf.py``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, GGUFWriter

from ..errors import UnsupportedError
from ..execute import FileSpan, produce_pieces
from ..families import family_of
from ..formats.gguf.encode import OUTTYPES, OutType, encode, file_type, read_dtype, tensor_nbytes, tensor_type
from ..formats.gguf.writer import GGUFStreamWriter, TensorEntry
from ..formats.meta.torch_zip import TorchCheckpoint
from ..options import ConversionResult, ConvertOptions, Progress
from ..resume import fingerprint
from ..spec import ModelSpec
from ..version import __version__
from .common import Route, Stage, detect_spec, run_planned
from .gguf_plan import METADATA_ALLOWANCE, GGUFPlan, GGUFTensor, write_planned_gguf

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


def plan_gguf(spec: ModelSpec, outtype: str | None = None) -> GGUFPlan:
    """Tensors, types and sizes of the GGUF file for ``spec``: computed tensors first (as llama.cpp writes
    them), then the recipes in the first shard's order (sequential reads)."""
    facts = gguf_facts(spec)
    chosen = outtype or default_outtype(spec)
    if chosen not in OUTTYPES:
        raise UnsupportedError(f"GGUF output type {chosen!r} is not supported; choose {', '.join(OUTTYPES)}.")
    out: list[GGUFTensor] = []
    config = json_config(spec)
    freqs = facts.rope_freqs(config)
    if freqs is not None:
        entry = TensorEntry(facts.ROPE_FREQS, freqs.shape, GGMLQuantizationType.F32, freqs.nbytes)
        out.append(GGUFTensor(entry, None, freqs))
    with TorchCheckpoint(spec.shards[0]) as first:
        order = {name: i for i, name in enumerate(first.tensors)}
    recipes = sorted(facts.gguf_recipes(spec), key=lambda r: order.get(r.source, len(order)))
    for r in recipes:
        qtype = tensor_type(r.name, r.shape, chosen)  # type: ignore[arg-type]
        entry = TensorEntry(r.name, r.shape, qtype, tensor_nbytes(r.shape, qtype))
        out.append(GGUFTensor(entry, dataclasses.replace(r, dtype=read_dtype(qtype, r.source_dtype))))
    return GGUFPlan(spec, chosen, facts.ARCH, tuple(out))  # type: ignore[arg-type]


def json_config(spec: ModelSpec) -> dict[str, Any]:
    """The family's config.json of ``spec`` (what llama.cpp's converter would read its hyperparameters from)."""
    return json.loads(family_of(spec).metadata_files(spec, spec.source_dtype, tokenizer=False)["config.json"])


def write_gguf(plan: GGUFPlan, stage: Stage, files: dict[str, bytes]) -> None:
    """Write the GGUF file of ``plan`` into the stage (metadata from the family's facts over ``files``)."""
    facts = gguf_facts(plan.spec)
    writer = GGUFWriter(None, plan.arch)
    facts.add_spec_metadata(writer, plan.spec, files, file_type=file_type(plan.outtype), n_params=plan.parameter_count)
    shards = [TorchCheckpoint(p) for p in plan.spec.shards]

    def write_tensor(stream: GGUFStreamWriter, tensor: GGUFTensor, advance: Callable[[int], None]) -> None:
        if tensor.recipe is None:
            assert tensor.values is not None
            advance(stream.write(tensor.values))
            return
        for piece in produce_pieces(tensor.recipe, shards):
            if isinstance(piece, FileSpan):
                stream.copy_from(piece.shard.fileno(), piece.offset, piece.nbytes, advance)
            else:
                advance(stream.write(encode(piece, tensor.recipe.dtype, tensor.entry.qtype)))

    try:
        write_planned_gguf(plan, stage, writer, write_tensor)
    finally:
        for shard in shards:
            shard.close()


def _sources(spec: ModelSpec) -> list[Path]:
    scales = sorted(spec.folder.root.glob("fp8_scales_*.pt"))  # an FP8 release: its scales make the values
    return [*spec.shards, spec.folder.params_path, *([spec.folder.tokenizer] if spec.folder.tokenizer else []), *scales]


def plan_meta_to_gguf(src: Path, dst: Path, opts: ConvertOptions) -> GGUFPlan:
    """Recognise the checkpoint in ``src`` and plan its GGUF file."""
    return plan_gguf(detect_spec(src, opts, KEY), opts.outtype)


def run_meta_to_gguf(plan: GGUFPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan`` as one GGUF file at ``dst``, the source's checksums verified beside the stream."""
    spec = plan.spec
    family = family_of(spec)

    def body(stage: Stage) -> tuple[str, ...]:
        files = stage.beside.results()[0]
        assert isinstance(files, dict)
        write_gguf(plan, stage, files)
        return (dst.name,)

    return run_planned(
        plan,
        [dst],
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
