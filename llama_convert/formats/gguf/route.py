"""The Meta → GGUF route: one streaming pass from Meta's shards to a ``.gguf`` file, no intermediate folder.

The family's recipes (renamed, rotary rows kept in Meta's order) feed the executor's row blocks or kernel
copies; each block is encoded to the tensor's GGUF type and streamed into ``GGUFStreamWriter``. Metadata
comes from the family's GGUF facts (``families/<name>/gguf.py``); families without them are refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ...detect import detect
from ...errors import UnsupportedError
from ...execute import FileSpan, produce_pieces
from ...families import ModelSpec, family_of
from ...output import check_free_space
from ...plan import TensorRecipe
from ..meta.torch_zip import TorchCheckpoint
from .encode import OUTTYPES, OutType, encode, file_type, read_dtype, tensor_nbytes, tensor_type
from .writer import GGUFStreamWriter, TensorEntry, atomic_output_file, check_gguf_destination

__all__ = ["GGUFPlan", "GGUFTensor", "convert_to_gguf", "plan_gguf"]

# Family name → the module holding its GGUF facts (ARCH, gguf_recipes, rope_freqs, add_spec_metadata).
GGUF_FAMILIES = {"llama": "llama_convert.families.llama.gguf"}
_METADATA_ALLOWANCE = 64 << 20  # header, vocabulary and merges, for the free-space check


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the GGUF file and where its values come from: a recipe or computed values."""

    entry: TensorEntry
    recipe: TensorRecipe | None
    values: np.ndarray | None = None


@dataclass(frozen=True)
class GGUFPlan:
    """Everything a GGUF conversion will write, decided before any byte is read."""

    spec: ModelSpec
    outtype: OutType
    arch: str
    tensors: tuple[GGUFTensor, ...]

    @property
    def total_size(self) -> int:
        return sum(t.entry.nbytes for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.entry.shape) for t in self.tensors)


def gguf_facts(spec: ModelSpec) -> ModuleType:
    """The family's GGUF module, or a clear refusal."""
    module = GGUF_FAMILIES.get(spec.family)
    if module is None:
        raise UnsupportedError(
            f"{spec.folder.root}: {spec.name} cannot be written as GGUF by this version (only Llama text models "
            "can); convert it to a Hugging Face folder instead."
        )
    return importlib.import_module(module)


def default_outtype(spec: ModelSpec) -> OutType:
    """The checkpoint's own precision: f16 for float16 weights (Llama 1), bf16 otherwise."""
    return "f16" if spec.source_dtype.torch_name == "float16" else "bf16"


def plan_gguf(spec: ModelSpec, outtype: str | None = None) -> GGUFPlan:
    """Tensors, types and sizes of the GGUF file for ``spec``: computed tensors first (as llama.cpp writes
    them), then the recipes in the first shard's order (sequential reads)."""
    facts = gguf_facts(spec)
    chosen = outtype or default_outtype(spec)
    if chosen not in OUTTYPES:
        raise UnsupportedError(f"GGUF output type {chosen!r} is not supported; choose bf16, f16 or q8_0.")
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


def write_gguf(
    plan: GGUFPlan,
    path: Path,
    files: dict[str, bytes],
    *,
    advance: Any = lambda n: None,
    sync: bool = True,
) -> None:
    """Write the whole GGUF file of ``plan`` at ``path`` (metadata from the family's facts over ``files``)."""
    facts = gguf_facts(plan.spec)
    writer = GGUFWriter(None, plan.arch)
    facts.add_spec_metadata(writer, plan.spec, files, file_type=file_type(plan.outtype), n_params=plan.parameter_count)
    stream = GGUFStreamWriter(path, writer, [t.entry for t in plan.tensors])
    shards = [TorchCheckpoint(p) for p in plan.spec.shards]
    try:
        for tensor in plan.tensors:
            if tensor.recipe is None:
                assert tensor.values is not None
                advance(stream.write(tensor.values))
            else:
                for piece in produce_pieces(tensor.recipe, shards):
                    if isinstance(piece, FileSpan):
                        stream.copy_from(piece.shard.fileno(), piece.offset, piece.nbytes, advance)
                    else:
                        advance(stream.write(encode(piece, tensor.recipe.dtype, tensor.entry.qtype)))
            stream.end_tensor()
    except BaseException:
        stream.abort()
        raise
    finally:
        for shard in shards:
            shard.close()
    stream.close(sync=sync)


def convert_to_gguf(src: Path, dst: Path, opts: Any, *, progress: Any) -> Any:
    """A Meta checkpoint folder (checksums verified beside the conversion) or a Hugging Face Llama folder →
    one GGUF file at ``dst``."""
    from ...pipeline import ConversionResult, checked_advance, source_format
    from ...verify import BackgroundVerify

    started = time.perf_counter()
    if source_format(src) == "hf":
        from .from_hf import hf_to_gguf

        return hf_to_gguf(src, dst, opts, progress=progress)
    check_gguf_destination(dst.absolute(), force=opts.force)
    spec = detect(src, llama_version=opts.llama_version, instruct=opts.instruct, fold_kv_heads=opts.fold_kv_heads)
    plan = plan_gguf(spec, opts.outtype)
    check_free_space(dst.absolute(), plan.total_size + _METADATA_ALLOWANCE)
    files = family_of(spec).metadata_files(spec, spec.source_dtype, tokenizer=True)
    verifier = BackgroundVerify(spec.folder.root, workers=opts.verify_workers) if opts.verify else None
    notes = list(spec.notes)
    try:
        with atomic_output_file(dst, force=opts.force) as tmp:
            progress.start(plan.total_size, f"Converting {spec.name} to GGUF {plan.outtype}")
            try:
                write_gguf(plan, tmp, files, advance=checked_advance(progress, verifier))
            finally:
                progress.finish()
            verified = verifier.result() if verifier is not None else False
    except BaseException:
        if verifier is not None:
            verifier.cancel()
        raise
    if verifier is not None and not verified:
        notes.append("no checklist.chk found: checksums were not verified.")
    return ConversionResult(
        spec=spec,
        destination=dst,
        files=(dst.name,),
        bytes_written=dst.stat().st_size,
        seconds=time.perf_counter() - started,
        verified=verified,
        notes=tuple(notes),
    )
