"""GGUF tensor types: which type a tensor gets, how many bytes it takes, and encoding row blocks into it.

The choices are llama.cpp's (``convert_hf_to_gguf.py``, ``ModelBase.prepare_tensors``): 1-D tensors,
norms, names not ending in ``.weight``, MoE routers (``ffn_gate_inp``) and position embeddings are F32, a
vision patch embedding F32 (F16 in an f16 file); every other tensor gets the output type; a Q8_0 tensor
whose rows are not a multiple of 32 values falls back to F16. The llama-quantize file types (Q4_K_M, Q6_K,
…, ``QUANTIZE_TYPES``) start from the converter's bf16 types and take ``mixture.choose_types``'s per-tensor
types. Quantized blocks (Q8_0 and the llama-quantize types) are made by ``.quants``, ggml-quants.c's
quantizers (compiled where built, else numpy: the same bytes), row block by row block: each block depends
only on its own values, so quantising rows in pieces gives the bytes quantising the whole tensor gives.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ...dtypes import DTYPES, DType, cast
from .mixture import FILE_TYPES, normalize_outtype
from .quants import quantize

__all__ = [
    "OUTTYPES",
    "QUANTIZE_TYPES",
    "OutType",
    "base_outtype",
    "encode",
    "encode_threads",
    "file_type",
    "quantized_outtype",
    "read_dtype",
    "tensor_nbytes",
    "tensor_type",
]

OutType = Literal["bf16", "f16", "q8_0"]
# the converter's own output types, then llama-quantize's (their tensors' types come from the mixture)
QUANTIZE_TYPES = tuple(k for k in FILE_TYPES if k not in ("bf16", "f16", "q8_0"))
OUTTYPES: dict[str, GGMLQuantizationType] = {
    "bf16": GGMLQuantizationType.BF16,
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    **{k: FILE_TYPES[k][1] for k in QUANTIZE_TYPES},
}
_FILE_TYPES = {
    "bf16": LlamaFileType.MOSTLY_BF16,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}
_F32, _BF16 = DTYPES["float32"], DTYPES["bfloat16"]


def quantized_outtype(outtype: str) -> bool:
    """Whether ``outtype`` (any case) is one of llama-quantize's file types rather than a converter type."""
    return normalize_outtype(outtype) in QUANTIZE_TYPES


def file_type(outtype: str) -> int:
    """``general.file_type`` for an output type (bf16 32, f16 1, q8_0 7, Q4_K_M 15, …)."""
    key = normalize_outtype(outtype)
    return int(_FILE_TYPES[key]) if key in _FILE_TYPES else int(FILE_TYPES[key][0])


def base_outtype(outtype: str) -> str:
    """The converter type a file of ``outtype`` starts from: bf16 for llama-quantize's types, else itself."""
    key = normalize_outtype(outtype)
    return "bf16" if key in QUANTIZE_TYPES else key


def tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> GGMLQuantizationType:
    """The GGUF type llama.cpp's converter gives tensor ``name`` of (numpy-order) ``shape``; for a
    llama-quantize file type, the type of its bf16 conversion (the mixture's starting point)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    if ".ffn_gate_inp" in name or name.endswith("position_embd.weight"):
        return GGMLQuantizationType.F32  # MoE routers and position embeddings stay float32
    outtype = base_outtype(outtype)
    if ".patch_embd.weight" in name:  # a vision projector's patch embedding: F16 in an f16 file, else F32
        return GGMLQuantizationType.F16 if outtype == "f16" else GGMLQuantizationType.F32
    qtype = OUTTYPES[outtype]
    block, _ = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return GGMLQuantizationType.F16  # llama.cpp: "Can't quantize tensor with shape ...", falling back to F16
    return qtype


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of (numpy-order) ``shape`` stored as ``qtype``."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def read_dtype(qtype: GGMLQuantizationType, source: DType) -> DType:
    """The dtype row blocks are produced in for ``qtype``: the source's own for a BF16 copy of BF16
    weights (so that contiguous tensors are copied verbatim), float32 otherwise."""
    return source if qtype == GGMLQuantizationType.BF16 and source == _BF16 else _F32


def encode(block: np.ndarray, dtype: DType, qtype: GGMLQuantizationType, threads: int = 1) -> np.ndarray:
    """Rows held as ``dtype`` (whole rows, any leading shape) → the bytes of ``qtype``, as llama.cpp makes
    them from float32: BF16 round-to-nearest-even (a bit copy of bf16 weights), F16 ``astype`` (round to
    nearest even), quantized types (``quants.QUANTIZED_TYPES``) as ggml-quants.c does, in ``threads`` threads."""
    if qtype == GGMLQuantizationType.BF16:
        return cast(block, dtype, _BF16)
    values = cast(block, dtype, _F32)
    if qtype == GGMLQuantizationType.F32:
        return values
    if qtype == GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return quantize(values.reshape(-1, values.shape[-1]), qtype, threads=threads).reshape(-1)


def encode_threads() -> int:
    """Threads for quantizing: every core this process may use (the kernels release the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
