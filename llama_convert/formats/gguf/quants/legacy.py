"""Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: the 32-value block types (``quantize_row_*_ref`` of ggml-quants.c).

Q8_0 comes from gguf-py (``gguf.quants``): its bytes equal ggml's on every committed C vector and, given rows
of 1024 values, it runs at about 1.5-2× C's time per core. The other four are ported here although gguf-py
quantizes them at about the same speed, because gguf-py's bytes differ from C's where the sign of a zero is
stored: Q4_0/Q5_0 of an all-zero block whose first value is -0.0 (gguf-py takes that value as the block's max, C
keeps its initial +0.0, so the fp16 ``d`` gets the other sign), and Q4_1/Q5_1 of a block whose min or max is
zero (``blocks.min()``/``max()`` may return either zero, C keeps the first). The ``signed_zero`` and
``zero_extremes`` vectors show them.

C converts with ``(int8_t)``/``(uint8_t)`` casts of floats: x86-64 truncates to int32 (``cvttss2si``, INT_MIN for
NaN and out of range) and keeps the low byte. ``astype(np.int32)`` then ``& 0xFF`` does the same, which keeps the
bytes equal even for denormal blocks whose ``1/d`` overflows.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, quants

from .common import F32, first_abs_max, fp16_bits


def _inverse(d: np.ndarray) -> np.ndarray:
    return np.where(d != 0, F32(1) / d, F32(0))


def _c_byte(values: np.ndarray, top: int | None) -> np.ndarray:
    """``MIN(top, (int8_t)v)`` (or ``(uint8_t)v`` without top) stored as uint8, for v >= 0 or non-finite."""
    ints = values.astype(np.int32)
    if top is not None:
        np.minimum(ints, top, out=ints)
    return (ints & 0xFF).astype(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """``qs[j] = q[j] & 0xF | (q[j + 16] & 0xF) << 4``."""
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """``qh`` (uint32 little-endian): bit j is bit 4 of q[j]."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _symmetric(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    _, signed_max = first_abs_max(blocks, axis=1)
    d = signed_max / F32(-levels)
    q = _c_byte(blocks * _inverse(d)[:, None] + F32(levels + 0.5), 2 * levels - 1)
    return fp16_bits(d), q


def _first_zero(blocks: np.ndarray, extreme: np.ndarray) -> np.ndarray:
    """C's ``min = FLT_MAX; if (v < min) min = v;`` (and ``max = -FLT_MAX; if (v > max) max = v;``) keep the
    first of equal candidates: where the block's min (max) is zero, the first zero of the block, whose sign
    decides the fp16 ``m`` (and the sign of ``d = (max - min) / n``) in the bytes."""
    zero = np.nonzero(extreme == 0)[0]
    if zero.size:
        first = np.argmax(blocks[zero] == 0, axis=1)
        extreme[zero] = blocks[zero, first]
    return extreme


def _affine(blocks: np.ndarray, levels: int, top: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = _first_zero(blocks, blocks.min(axis=1))
    d = (_first_zero(blocks, blocks.max(axis=1)) - low) / F32(levels)
    q = _c_byte((blocks - low[:, None]) * _inverse(d)[:, None] + F32(0.5), top)
    return fp16_bits(d), fp16_bits(low), q


def quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    d, q = _symmetric(blocks, 8)
    out = np.empty((blocks.shape[0], 18), dtype=np.uint8)
    out[:, 0:2] = d[:, None].view(np.uint8)
    out[:, 2:] = _nibbles(q)
    return out


def quantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    d, q = _symmetric(blocks, 16)
    out = np.empty((blocks.shape[0], 22), dtype=np.uint8)
    out[:, 0:2] = d[:, None].view(np.uint8)
    out[:, 2:6] = _high_bits(q)
    out[:, 6:] = _nibbles(q)
    return out


def quantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, m, q = _affine(blocks, 15, 15)
    out = np.empty((blocks.shape[0], 20), dtype=np.uint8)
    out[:, 0:2] = d[:, None].view(np.uint8)
    out[:, 2:4] = m[:, None].view(np.uint8)
    out[:, 4:] = _nibbles(q)
    return out


def quantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    d, m, q = _affine(blocks, 31, None)
    out = np.empty((blocks.shape[0], 24), dtype=np.uint8)
    out[:, 0:2] = d[:, None].view(np.uint8)
    out[:, 2:4] = m[:, None].view(np.uint8)
    out[:, 4:8] = _high_bits(q)
    out[:, 8:] = _nibbles(q)
    return out


def quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    # gguf-py's cost is per row: handed [B, 32] it runs at a fifth of its speed on rows of 1024
    per_row = 32 if blocks.shape[0] % 32 else 1024
    return quants.quantize(blocks.reshape(-1, per_row), GGMLQuantizationType.Q8_0).reshape(blocks.shape[0], 34)


LEGACY_KERNELS = {
    GGMLQuantizationType.Q4_0: quantize_q4_0,
    GGMLQuantizationType.Q4_1: quantize_q4_1,
    GGMLQuantizationType.Q5_0: quantize_q5_0,
    GGMLQuantizationType.Q5_1: quantize_q5_1,
    GGMLQuantizationType.Q8_0: quantize_q8_0,
}
