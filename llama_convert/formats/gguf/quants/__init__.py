"""ggml's quantizers in numpy, byte-identical to ggml-quants.c as ``llama-quantize`` runs it (no importance
matrix): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. Pure functions, no I/O.

``quantize(rows, qtype, threads=2)`` takes float32 rows whose length is a multiple of the type's block size and
returns their bytes, ``[rows, row_bytes]`` uint8. Blocks are independent, so a tensor can be quantized in any
row blocks and the pieces concatenated. Non-finite values and values of magnitude 2**40 or more are refused.
Every type also has a compiled kernel (``_native.c``, optional at install) giving the same bytes; ``.backend``
chooses between them.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ....errors import UnsupportedError
from .backend import NATIVE_TYPES, choose_backend, run_native
from .common import LIMIT, Kernel, OutOfRangeError, run_chunked
from .iq4_nl import quantize_iq4_nl
from .kquants_min import quantize_q2_k, quantize_q4_k, quantize_q5_k
from .kquants_sym import quantize_q3_k, quantize_q6_k
from .legacy import LEGACY_KERNELS

__all__ = ["QUANTIZED_TYPES", "quantize", "row_nbytes"]

_T = GGMLQuantizationType
# kernel and blocks per call: a chunk's float32 temporaries stay within the core's L2 cache
_KERNELS: dict[GGMLQuantizationType, tuple[Kernel, int]] = {
    _T.Q2_K: (quantize_q2_k, 512),
    _T.Q3_K: (quantize_q3_k, 1024),
    _T.Q4_K: (quantize_q4_k, 256),
    _T.Q5_K: (quantize_q5_k, 256),
    _T.Q6_K: (quantize_q6_k, 256),
    _T.IQ4_NL: (quantize_iq4_nl, 2048),
    **{qtype: (kernel, 2048) for qtype, kernel in LEGACY_KERNELS.items()},
}
QUANTIZED_TYPES = frozenset(_KERNELS)


def row_nbytes(n: int, qtype: GGMLQuantizationType) -> int:
    """Bytes of one row of ``n`` values stored as ``qtype``."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    return n // block * type_size


def quantize(
    values: np.ndarray, qtype: GGMLQuantizationType, threads: int = 1, backend: str | None = None
) -> np.ndarray:
    """Rows of float32 ``values`` (any leading shape) → ``[rows, row_bytes]`` uint8 blocks of ``qtype``, the
    bytes ``ggml_quantize_chunk`` makes without an importance matrix. ``threads`` > 1 quantizes chunks of
    blocks in parallel threads; ``backend`` (``native``/``numpy``, default ``backend.choose_backend()``) picks
    the kernels. The bytes are the same either way."""
    name = choose_backend(backend)
    if qtype not in _KERNELS:
        raise UnsupportedError(f"No quantizer for GGUF type {qtype.name}; quantizable: {_names()}.")
    block, type_size = GGML_QUANT_SIZES[qtype]
    values = np.asarray(values)
    n = values.shape[-1] if values.ndim else 0
    if values.ndim == 0 or n % block:
        raise UnsupportedError(f"Rows of {n} values cannot be stored as {qtype.name} (blocks of {block}).")
    rows = values.reshape(-1, n)
    blocks = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, block)
    kernel, chunk = _KERNELS[qtype]
    try:
        if name == "native" and qtype in NATIVE_TYPES:
            return run_native(qtype, blocks, threads).reshape(rows.shape[0], -1)
        return run_chunked(kernel, blocks, type_size, chunk, threads).reshape(rows.shape[0], -1)
    except OutOfRangeError:
        raise UnsupportedError(
            f"Values that are infinite, NaN or of magnitude 2**{int(np.log2(LIMIT))} or more cannot be quantized "
            f"to {qtype.name} as llama.cpp does; check the checkpoint's weights."
        ) from None


def _names() -> str:
    return ", ".join(t.name for t in _KERNELS)
