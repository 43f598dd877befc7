"""Hugging Face folder → GGUF, as llama.cpp's ``convert_hf_to_gguf.py`` converts it, streamed.

The folder's own config.json, generation_config.json and tokenizer files give the metadata (the files
llama.cpp reads; the naming keys come from the folder's name, as llama.cpp's do). Tensors are read by
rows with our safetensors reader; the family's GGUF facts name each tensor and say which rows go back
from Hugging Face's rotary halves to Meta's interleaved pairs (as llama.cpp's ``LlamaModel.permute``
does); every block is then encoded to the tensor's GGUF type. Verbatim BF16 tensors are copied in the kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ..errors import InputError, UnsupportedError
from ..execute import block_rows, rotary_to_pairs
from ..formats.gguf.encode import OUTTYPES, encode, file_type, tensor_nbytes, tensor_type
from ..formats.gguf.writer import GGUFStreamWriter, TensorEntry
from ..formats.hf.reader import HFFolder, find_hf_folder
from ..options import ConversionResult, ConvertOptions, Progress
from ..resume import fingerprint
from ..version import __version__
from .common import Route, Stage, family_for_hf, run_planned
from .gguf_plan import METADATA_ALLOWANCE, GGUFPlan, GGUFTensor, write_planned_gguf

__all__ = ["ROUTE", "plan_hf_to_gguf"]

KEY = ("hf", "gguf")


def _outtype(hf: HFFolder, outtype: str | None) -> str:
    chosen = outtype or ("bf16" if any(r.dtype.torch_name == "bfloat16" for r in hf.tensors.values()) else "f16")
    if chosen not in OUTTYPES:
        raise UnsupportedError(f"GGUF output type {chosen!r} is not supported; choose {', '.join(OUTTYPES)}.")
    return chosen


def plan_hf_to_gguf(src: Path, dst: Path, opts: ConvertOptions) -> GGUFPlan:
    """Read the folder's config and safetensors headers and plan its GGUF file: rope_freqs, then file order."""
    with find_hf_folder(src) as hf:
        config = hf.config
        facts = family_for_hf(config, hf.root / "config.json", KEY).capabilities.gguf
        if not hf.tensors:
            raise InputError(f"{hf.root}: the safetensors files hold no tensors; save the model again.")
        # The config first: a key it lacks is named as such, not taken for a tensor without a place.
        spec, notes = facts.spec_from_hf(config, hf.root, next(iter(hf.tensors.values())).dtype)
        _check_shapes(hf, facts.hf_shapes(config))
        outtype = _outtype(hf, opts.outtype)
        out: list[GGUFTensor] = []
        freqs = facts.rope_freqs(config)
        if freqs is not None:
            entry = TensorEntry(facts.ROPE_FREQS, freqs.shape, GGMLQuantizationType.F32, freqs.nbytes)
            out.append(GGUFTensor(entry, values=freqs))
        for name, ref in hf.tensors.items():
            try:
                mapped = facts.hf_tensor(name, config)
            except (KeyError, ValueError):
                raise UnsupportedError(
                    f"{hf.file_of(name).path} holds {name}, which the model has no place for in GGUF; "
                    "merge adapters or remove it."
                ) from None
            if mapped is None:
                continue
            gguf_name, heads = mapped
            qtype = tensor_type(gguf_name, ref.shape, outtype)  # type: ignore[arg-type]
            entry = TensorEntry(gguf_name, ref.shape, qtype, tensor_nbytes(ref.shape, qtype))
            out.append(GGUFTensor(entry, hf_name=name, rotary_heads=heads))
        head_dim = facts.hf_head_dim(config)
        return GGUFPlan(spec, outtype, facts.ARCH, tuple(out), hf.root, config, head_dim, notes)


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
    def write(stream: GGUFStreamWriter, t: GGUFTensor, advance: Callable[[int], None]) -> None:
        if t.hf_name is None:
            advance(stream.write(t.values))
            return
        ref = hf.tensors[t.hf_name]
        if t.rotary_heads is None and t.entry.qtype == GGMLQuantizationType.BF16 and ref.dtype.torch_name == "bfloat16":
            stream.copy_from(hf.file_of(t.hf_name).fileno(), ref.file_offset, ref.nbytes, advance)
            return
        rows = ref.shape[0]
        step = block_rows(math.prod(ref.shape[1:]) * 4, head_dim if t.rotary_heads else 1)
        for start in range(0, rows, step):
            block = hf.read_rows(t.hf_name, start, min(rows, start + step))
            if t.rotary_heads:
                block = rotary_to_pairs(block.reshape(block.shape[0], -1), head_dim)
            advance(stream.write(encode(np.ascontiguousarray(block), ref.dtype, t.entry.qtype)))

    return write


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file())


def run_hf_to_gguf(plan: GGUFPlan, dst: Path, opts: ConvertOptions, progress: Progress) -> ConversionResult:
    """Write ``plan`` as one GGUF file at ``dst``."""
    facts = family_for_hf(plan.config, plan.source_root / "config.json", KEY).capabilities.gguf

    def body(stage: Stage) -> tuple[str, ...]:
        writer = GGUFWriter(None, plan.arch)
        facts.add_hf_metadata(
            writer, plan.source_root, file_type=file_type(plan.outtype), n_params=plan.parameter_count
        )
        with find_hf_folder(plan.source_root) as hf:
            write_planned_gguf(plan, stage, writer, _write_tensor(hf, plan.head_dim))
        return (dst.name,)

    return run_planned(
        plan,
        [dst],
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
