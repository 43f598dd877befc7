"""Which implementation quantizes: the compiled kernels of ``_native.c`` (built at install when a C compiler is
present) or the numpy kernels, which give the same bytes (both are ports of ggml-quants.c; the tests pin both to
C's vectors and to each other). ``LLAMA_CONVERT_QUANT_BACKEND=numpy|native`` or ``quantize(..., backend=)``
chooses; by default the native kernels where built, numpy otherwise and for types without a native kernel.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ....errors import UnsupportedError
from .common import OutOfRangeError, for_each_chunk

try:
    _native = importlib.import_module("._native", __package__)
except ImportError:  # built without a C compiler: numpy only
    _native = None

__all__ = ["BACKENDS", "ENV", "NATIVE_TYPES", "choose_backend", "native_available", "run_native"]

ENV = "LLAMA_CONVERT_QUANT_BACKEND"
BACKENDS = ("native", "numpy")
NATIVE_TYPES = frozenset(GGMLQuantizationType(t) for t in _native.types()) if _native is not None else frozenset()
_CHUNK_WEIGHTS = 1 << 16  # per call: 256 KiB of float32, small enough to spread over threads


def native_available() -> bool:
    """Whether the compiled kernels were built and import."""
    return _native is not None


def choose_backend(requested: str | None = None) -> str:
    """``requested``, else ``$LLAMA_CONVERT_QUANT_BACKEND``, else ``native`` if built, else ``numpy``."""
    name = (requested or os.environ.get(ENV) or ("native" if _native is not None else "numpy")).lower()
    if name not in BACKENDS:
        raise UnsupportedError(f"Unknown quantizer backend {name!r} (from {ENV}?); use one of {', '.join(BACKENDS)}.")
    if name == "native" and _native is None:
        raise UnsupportedError(
            "The compiled quantizers are not built: reinstall llama-convert with a C compiler present "
            f"(`pip install .`), or set {ENV}=numpy."
        )
    return name


def run_native(qtype: GGMLQuantizationType, blocks: np.ndarray, threads: int) -> np.ndarray:
    """``[B, QK]`` contiguous float32 blocks → ``[B, type_size]`` bytes by the C kernel of ``qtype``, in chunks
    spread over ``threads`` threads (the kernel releases the GIL). Raises OutOfRangeError as ``run_chunked``."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    chunk = max(1, _CHUNK_WEIGHTS // block)

    def work(start: int) -> None:
        if not _native.quantize(int(qtype), blocks[start : start + chunk], out[start : start + chunk]):
            raise OutOfRangeError

    for_each_chunk(work, blocks.shape[0], chunk, threads)
    return out
