"""Hugging Face folder → GGUF, as llama.cpp's ``convert_hf_to_gguf.py`` converts it, streamed.

The folder's own config.json, generation_config.json and tokenizer files give the metadata (the files
llama.cpp reads; the naming keys come from the folder's name, as llama.cpp's do). Tensors are read by
rows with our safetensors reader; the family's GGUF facts name each tensor and say which rows go back
from Hugging Face's rotary halves to Meta's interleaved pairs (as llama.cpp's ``LlamaModel.permute``
does); every block is then encoded to the tensor's GGUF type. Verbatim BF16 tensors are copied in the kernel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ..ahead import ahead
from ..dtypes import DTYPES
from ..errors import InputError, UnsupportedError
from ..execute import DeltaRows, block_rows, rotary_to_pairs
from ..formats.gguf.encode import OUTTYPES, base_outtype, encode, encode_threads, file_type, tensor_nbytes, tensor_type
from ..formats.gguf.mixture import normalize_outtype
from ..formats.gguf.writer import GGUFStreamWriter, TensorEntry
from ..formats.hf.reader import HFFolder, find_hf_folder
from ..options import ConversionResult, ConvertOptions, Progress
from ..resume import fingerprint
from ..version import __version__
from .adapters import check_family, hf_deltas, load_adapters, merged_note
from .common import Route, Stage, family_for_hf, run_planned
from .gguf_plan import (
    METADATA_ALLOWANCE,
    GGUFPlan,
    GGUFTensor,
    apply_mixture,
    model_facts,
    quantize_metadata,
    write_planned_gguf,
)

__all__ = ["ROUTE", "plan_hf_to_gguf"]

KEY = ("hf", "gguf")


def _outtype(hf: HFFolder, outtype: str | None) -> str:
    stored = "bf16" if any(r.dtype.torch_name == "bfloat16" for r in hf.tensors.values()) else "f16"
    chosen = normalize_outtype(outtype) if outtype else stored
    if chosen not in OUTTYPES:
        raise UnsupportedError(f"GGUF output type {chosen!r} is not supported; choose {', '.join(OUTTYPES)}.")
    return chosen


def plan_hf_to_gguf(src: Path, dst: Path, opts: ConvertOptions) -> GGUFPlan:
    """Read the folder's config and safetensors headers and plan its GGUF file: rope_freqs, then file order;
    with ``opts.mmproj`` and a family that declares one, the companion file (a vision projector) likewise."""
    with find_hf_folder(src) as hf:
        config = hf.config
        family = family_for_hf(config, hf.root / "config.json", KEY)
        facts = family.capabilities.gguf
        if not hf.tensors:
            raise InputError(f"{hf.root}: the safetensors files hold no tensors; save the model again.")
        # The config first: a key it lacks is named as such, not taken for a tensor without a place.
        spec, notes = facts.spec_from_hf(config, hf.root, next(iter(hf.tensors.values())).dtype)
        if hasattr(facts, "hf_shapes"):  # a family that can say which tensors its config implies
            _check_shapes(hf, facts.hf_shapes(config))
        adapters = load_adapters(opts.adapters)
        check_family(family, adapters, hf.root)
        shapes = {name: ref.shape for name, ref in hf.tensors.items()}
        deltas = hf_deltas(adapters, shapes, model=spec.name, where=hf.root) if adapters else {}
        outtype = _outtype(hf, opts.outtype)
        out: list[GGUFTensor] = []
        freqs = facts.rope_freqs(config)
        if freqs is not None:
            entry = TensorEntry(facts.ROPE_FREQS, freqs.shape, GGMLQuantizationType.F32, freqs.nbytes)
            out.append(GGUFTensor(entry, values=freqs))
        out += _planned(hf, lambda name, shape: _entries(facts, name, shape, config), outtype, deltas)
        notes = (*notes, *merged_note(deltas, adapters))
        head_dim = facts.hf_head_dim(config)
        out = apply_mixture(out, outtype, model_facts(config, facts.ARCH))
        companions: tuple[GGUFPlan, ...] = ()
        if opts.mmproj and hasattr(facts, "hf_companion_entries"):
            base = base_outtype(outtype)
            extra = _planned(hf, lambda name, shape: facts.hf_companion_entries(name, shape, config), base)
            if extra:
                plan = GGUFPlan(spec, base, facts.COMPANION_ARCH, tuple(extra), hf.root, config, head_dim)
                companions = (dataclasses.replace(plan, prefix=facts.COMPANION_PREFIX),)
        return GGUFPlan(spec, outtype, facts.ARCH, tuple(out), hf.root, config, head_dim, notes, companions)


Entries = Callable[[str, tuple[int, ...]], list[Any]]


def _entries(facts: Any, name: str, shape: tuple[int, ...], config: dict[str, Any]) -> list[Any]:
    """The GGUF entries (name, shape, rotary heads, columns, transpose) of one HF tensor."""
    if hasattr(facts, "hf_entries"):
        return facts.hf_entries(name, shape, config)
    mapped = facts.hf_tensor(name, config)
    return [] if mapped is None else [(mapped[0], shape, mapped[1], None, False)]


def _planned(
    hf: HFFolder, entries: Entries, outtype: str, deltas: dict[str, tuple[Any, ...]] | None = None
) -> list[GGUFTensor]:
    deltas = deltas or {}
    out = []
    for name, ref in hf.tensors.items():
        try:
            mapped = entries(name, tuple(ref.shape))
        except (KeyError, ValueError):
            raise UnsupportedError(
                f"{hf.file_of(name).path} holds {name}, which the model has no place for in GGUF; "
                "merge adapters or remove it."
            ) from None
        for gguf_name, shape, heads, columns, transpose in mapped:
            qtype = tensor_type(gguf_name, shape, outtype)  # type: ignore[arg-type]
            entry = TensorEntry(gguf_name, shape, qtype, tensor_nbytes(shape, qtype))
            out.append(
                GGUFTensor(
                    entry,
                    hf_name=name,
                    rotary_heads=heads,
                    hf_columns=columns,
                    hf_transpose=transpose,
                    deltas=deltas.get(name, ()) if columns is None and not transpose else (),
                )
            )
    return out


def _check_shapes(hf: HFFolder, expected: dict[str, tuple[int, ...]]) -> None:
    """The weights hold every tensor config.json implies, each with its shape; tensors beyond them (an extra
    layer) are refused by the tensor map or here."""
    for name, shape in expected.items():
        if name not in hf.tensors:
            raise InputError(
                f"{hf.root} lacks {name}, which config.json implies (weights: {', '.join(hf.files)}); "
                "save the complete model again."
            )
        if tuple(hf.tensors[name].shape) != shape:
            raise InputError(
                f"{hf.file_of(name).path}: {name} has shape {list(hf.tensors[name].shape)} but config.json implies "
                f"{list(shape)}; the config and the weights disagree."
            )
    n_layers = len({n.split(".")[2] for n in expected if n.startswith("model.layers.")})
    layers = [n.split(".") for n in hf.tensors if n.startswith("model.layers.")]
    beyond = [".".join(n) for n in layers if n[2].isdigit() and int(n[2]) >= n_layers]
    if beyond:
        raise InputError(
            f"{hf.file_of(beyond[0]).path} holds {beyond[0]}, beyond the layers config.json describes; "
            "the config and the weights disagree."
        )


TensorWriter = Callable[[GGUFStreamWriter, GGUFTensor, Callable[[int], None]], None]


def _write_tensor(hf: HFFolder, head_dim: int) -> TensorWriter:
    threads = encode_threads()

    def write(stream: GGUFStreamWriter, t: GGUFTensor, advance: Callable[[int], None]) -> None:
        if t.hf_name is None:
            advance(stream.write(t.values))
            return
        ref = hf.tensors[t.hf_name]
        if t.hf_transpose:
            _write_transposed(hf, stream, t, advance, threads)
            return
        lora = DeltaRows(t.deltas, meta_order=False) if t.deltas else None
        plain = t.rotary_heads is None and t.hf_columns is None and lora is None
        if plain and t.entry.qtype == GGMLQuantizationType.BF16 and ref.dtype.torch_name == "bfloat16":
            stream.copy_range(hf.file_of(t.hf_name).source, ref.file_offset, ref.nbytes, advance)
            return
        rows = ref.shape[0]
        step = block_rows(math.prod(ref.shape[1:]) * 4, head_dim if t.rotary_heads else 1)

        # blocks in the file from an interrupted run are not read again
        out_row = t.entry.nbytes // rows if t.entry.nbytes % rows == 0 else 0  # bytes of one row in the file
        first = stream.skip // (step * out_row) * step if out_row else 0
        stream.skipped(first * out_row)

        def encoded() -> Iterator[np.ndarray]:
            assert t.hf_name is not None
            for start in range(first, rows, step):
                block, dtype = hf.read_rows(t.hf_name, start, min(rows, start + step)), ref.dtype
                if t.hf_columns is not None:
                    block = block[..., t.hf_columns[0] : t.hf_columns[1]]
                if lora is not None:  # in Hugging Face's basis, before the rows go back to Meta's order
                    block, dtype = lora.merged(block, ref.dtype, start), DTYPES["float32"]
                if t.rotary_heads:
                    block = rotary_to_pairs(block.reshape(block.shape[0], -1), head_dim)
                yield encode(np.ascontiguousarray(block), dtype, t.entry.qtype, threads)

        for data in ahead(encoded()):  # read and encode a block ahead of the writes
            advance(stream.write(data))

    return write


def _write_transposed(
    hf: HFFolder, stream: GGUFStreamWriter, t: GGUFTensor, advance: Callable[[int], None], threads: int
) -> None:
    """A tensor whose last two axes are swapped (llama.cpp's expert tensors): one index of the first axis
    (one expert) at a time, its output rows in blocks."""
    assert t.hf_name is not None
    ref = hf.tensors[t.hf_name]
    lo, hi = t.hf_columns or (0, ref.shape[-1])

    def encoded() -> Iterator[np.ndarray]:
        assert t.hf_name is not None
        for index in range(ref.shape[0]):
            slab = hf.read_rows(t.hf_name, index, index + 1).reshape(ref.shape[1:])
            step = block_rows(slab.shape[0] * 4, 1)
            for start in range(lo, hi, step):
                block = np.ascontiguousarray(slab[:, start : min(hi, start + step)].T)
                yield encode(block, ref.dtype, t.entry.qtype, threads)

    for data in ahead(encoded()):  # read and encode a block ahead of the writes
        advance(stream.write(data))


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file())


def run_hf_to_gguf(plan: GGUFPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan`` as one GGUF file at ``dst``."""
    facts = family_for_hf(plan.config, plan.source_root / "config.json", KEY).capabilities.gguf

    def body(stage: Stage) -> tuple[str, ...]:
        with find_hf_folder(plan.source_root) as hf:
            for i, part in enumerate((plan, *plan.companions)):
                writer = GGUFWriter(None, part.arch)
                entries = [(t.entry.name, tuple(t.entry.shape)) for t in part.tensors]
                kw: dict[str, Any] = {"file_type": file_type(part.outtype), "entries": entries}
                if i == 0:
                    facts.add_hf_metadata(writer, plan.source_root, n_params=plan.parameter_count, **kw)
                    quantize_metadata(writer, plan.outtype)
                else:
                    facts.add_companion_hf_metadata(writer, plan.source_root, **kw)
                write_planned_gguf(part, stage, writer, _write_tensor(hf, plan.head_dim), path=stage.paths[i])
        return tuple(p.name for p in plan.paths(dst))

    return run_planned(
        plan,
        plan.paths(dst),
        opts,
        progress,
        body=body,
        label=f"Converting {plan.source_root.name} to GGUF {plan.outtype}",
        staging="resumable-files",
        verify_root=None,
        fingerprint=fingerprint(
            sorted(p for p in plan.source_root.iterdir() if p.is_file()), __version__, plan.to_json()
        ),
        allowance=METADATA_ALLOWANCE,
    )


ROUTE = Route("hf", "gguf", "Hugging Face folder → GGUF file", plan_hf_to_gguf, run_hf_to_gguf)  # type: ignore[arg-type]
