"""IQ4_NL: 4-bit non-linear levels, 32 values per block with one fp16 scale.

llama-quantize writes it for Q2_K/Q3_K tensors whose rows are not a multiple of 256. Without an importance
matrix ``ggml_quantize_chunk`` calls ``quantize_iq4_nl``, i.e. ``quantize_row_iq4_nl_impl(32, 32, ...,
quant_weights=NULL, ntry=7)`` (not ``quantize_row_iq4_nl_ref``, which uses ``ntry=-1``): weights x², an initial
scale ``-max / values[0]``, 15 trial scales, then every value re-mapped with ``1 / d`` of the float32 ``d``.
"""

from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, element_major, first_abs_max, fp16_bits, seq_sum

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_VALUES = KVALUES.astype(F32)
NTRY = 7


# _AT_MOST[k + 127]: how many levels are <= the integer k, for k in -127..113 (the levels are integers, so
# the levels <= v are those <= floor(v))
_AT_MOST = np.searchsorted(_VALUES, np.arange(-127, 114, dtype=F32), side="right").astype(np.intp)


def best_index(values: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, kvalues_iq4nl, x)`` elementwise: the nearest level, the lower one unless
    ``x - val[mu-1] < val[mu] - x`` fails (float32 differences, as C computes them)."""
    floor = np.clip(np.floor(values), F32(-127), F32(113))
    floor = np.nan_to_num(floor, copy=False, nan=113).astype(np.intp)  # C's binary search ends at 15 for NaN
    upper = np.clip(_AT_MOST[floor + 127], 1, 15)
    below = values - _VALUES[upper - 1] < _VALUES[upper] - values
    index = upper - below
    index[values <= _VALUES[0]] = 0
    index[values >= _VALUES[15]] = 15
    return index


def _sums(x: np.ndarray, w: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = _VALUES[best_index(inverse * x)]
    wq = w * q
    return seq_sum(wq * x), seq_sum(wq * q)


def quantize_iq4_nl(blocks: np.ndarray) -> np.ndarray:
    """``quantize_iq4_nl`` without an importance matrix: 18 bytes per 32 values (d, qs[16])."""
    x = element_major(blocks, 32)[:, :, 0]  # [32, B]
    w = x * x
    amax, mx = first_abs_max(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    d = -mx / _VALUES[0]
    sumqx, sumq2 = _sums(x, w, F32(1) / d)
    d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        sumqx, sumq2 = _sums(x, w, F32(itry + int(KVALUES[0])) / mx)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    d = np.where(zero, F32(0), d)
    inverse = np.where(d != 0, F32(1) / d, F32(0))
    levels = best_index(inverse * x).astype(np.uint8).T  # [B, 32]
    out = np.empty((blocks.shape[0], 18), dtype=np.uint8)
    out[:, 0:2] = fp16_bits(d)[:, None].view(np.uint8)
    out[:, 2:] = levels[:, :16] | (levels[:, 16:] << 4)
    return out
