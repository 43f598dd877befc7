"""Q2_K, Q4_K and Q5_K: the K-quants with a scale and a min per sub-block (``x ≈ d·sc·q − dmin·m``).

Ports of ``quantize_row_q{2,4,5}_K_ref`` and ``make_qkx2_quants`` of ggml-quants.c (llama.cpp 0c1e570), which is
what ``llama-quantize`` runs without an importance matrix. Each function takes a chunk of super-blocks as
``[B, 256]`` float32 and returns the ``[B, type_size]`` block bytes.
"""

from __future__ import annotations

import numpy as np

from .common import (
    F32,
    block_major,
    element_major,
    fp16_bits,
    fp16_value,
    nearest_int,
    positive_max,
    round_clamped,
    seq_sum,
)

QK_K = 256


def _error(x: np.ndarray, w: np.ndarray, levels: np.ndarray, scale, the_min, use_mad: bool, tmp) -> np.ndarray:
    """``sum_i w[i] * err(scale * L[i] + min - x[i])`` with err = |·| or (·)², left to right."""
    np.multiply(levels, scale, out=tmp)
    np.add(tmp, the_min, out=tmp)
    np.subtract(tmp, x, out=tmp)
    if use_mad:
        np.abs(tmp, out=tmp)
    else:
        np.multiply(tmp, tmp, out=tmp)
    np.multiply(tmp, w, out=tmp)
    return seq_sum(tmp)


_FAST_LIMIT = F32(4e6)  # below 2**22 = 4194304, where nearest_int is np.rint


def _levels(x: np.ndarray, the_min, iscale, nmax: int, out, tmp, lo, hi) -> np.ndarray:
    """``MAX(0, MIN(nmax, nearest_int(iscale * (x - min))))`` for sub-blocks whose values lie in ``[lo, hi]``.

    Usually ``|iscale * (x - min)|`` stays near nmax and ``np.rint`` is exact. A trial's min can end up above
    a sub-block's lowest value, and near its highest (one-signed sub-blocks), or the range can be a denormal
    (iscale = inf); then C's ``nearest_int`` bit trick returns other integers (or 0 for inf/NaN) than
    rounding would, so the chunk takes the bit-exact path for that trial."""
    bound = np.abs(iscale) * np.maximum(hi - the_min, the_min - lo)
    np.subtract(x, the_min, out=tmp)
    np.multiply(tmp, iscale, out=tmp)
    if bool((bound < _FAST_LIMIT).all()):
        return round_clamped(tmp, 0, nmax, out=out)
    out[...] = np.clip(nearest_int(tmp), 0, nmax)
    return out


def make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` over every sub-block of ``x`` (``[E, ...]``, weights ``w``) at once.

    Returns ``(L, scale, the_min)``: float32 levels ``[E, ...]`` and per-sub-block scale and ``-min``.
    The trial loop runs in Python over whole arrays; a better trial replaces the levels, the scale and the
    min, and later trials use the updated min (as in C). Instead of copying a better trial's levels (a masked
    copy of the whole array per trial), the (iscale, min) that made them are kept and the levels recomputed
    once at the end: the same operations on the same values, so the same levels."""
    lo = np.minimum.reduce(x, axis=0)
    mn = np.minimum(lo, F32(0))
    mx = np.maximum.reduce(x, axis=0)
    sum_w = seq_sum(w)
    sum_x = seq_sum(w * x)
    tmp = np.empty_like(x)
    trial = np.empty_like(x)
    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    _levels(x, mn, iscale, nmax, trial, tmp, lo, mx)
    best = _error(x, w, trial, scale, mn, use_mad, tmp)
    best_iscale, best_mn = iscale, mn
    wl = np.empty_like(x)
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
        _levels(x, mn, iscale, nmax, trial, tmp, lo, mx)
        np.multiply(w, trial, out=wl)
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(np.multiply(wl, trial, out=tmp))
        sum_xl = seq_sum(np.multiply(wl, x, out=tmp))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clamp = this_min > 0
        this_min = np.where(clamp, F32(0), this_min)
        this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
        error = _error(x, w, trial, this_scale, this_min, use_mad, tmp)
        better = (det > 0) & (error < best)
        best = np.where(better, error, best)
        scale = np.where(better, this_scale, scale)
        best_iscale = np.where(better, iscale, best_iscale)
        best_mn = np.where(better, mn, best_mn)  # the min these levels were made with
        mn = np.where(better, this_min, mn)
    # max == min: C returns early with L = 0 and scale 0; the arithmetic above already gives exactly that
    # (iscale = inf gives levels 0 and scale 1/inf = 0, and det = 0 rejects every trial).
    return _levels(x, best_mn, best_iscale, nmax, trial, tmp, lo, mx), scale, -mn


def _requantize(x: np.ndarray, levels: np.ndarray, d: np.ndarray, dm: np.ndarray, nmax: int) -> None:
    """``L = MAX(0, MIN(nmax, nearest_int((x + dm) / d)))`` where the sub-block's ``d`` is non-zero (in place)."""
    fresh = np.clip(nearest_int((x + dm) / d), 0, nmax).astype(F32)
    np.copyto(levels, fresh, where=d != 0)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 bytes of 6-bit scales and mins of Q4_K/Q5_K (inverse of ``get_scale_min_k4``); inputs ``[B, 8]``."""
    out = np.empty((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _scales_mins_k4(scales: np.ndarray, mins: np.ndarray):
    """6-bit sub-block scales and mins against the block's largest (``63 / max``), ``d``/``dmin`` as fp16.

    Returns ``(ls, lm, d_bits, dmin_bits)``; ``uint8_t ls = nearest_int(...)`` wraps before ``MIN(63, ls)``."""
    max_scale = positive_max(scales, axis=1)
    max_min = positive_max(mins, axis=1)
    inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
    inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    return ls, lm, fp16_bits(max_scale / F32(63)), fp16_bits(max_min / F32(63))


def _k4_levels(blocks: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Shared part of Q4_K and Q5_K: levels ``[B, 256]`` uint8, packed scales, d and dmin bits."""
    x = element_major(blocks, 32)  # [32, B, 8]
    sum_x2 = seq_sum(x * x)
    av_x = np.sqrt(sum_x2 / F32(32))
    w = av_x + np.abs(x)
    levels, scales, mins = make_qkx2_quants(x, w, nmax, rmin, 0.1, nstep, use_mad=False)
    ls, lm, d_bits, dmin_bits = _scales_mins_k4(scales, mins)
    d = fp16_value(d_bits)[:, None] * ls.astype(F32)
    dm = fp16_value(dmin_bits)[:, None] * lm.astype(F32)
    _requantize(x, levels, d, dm, nmax)
    return block_major(levels), _pack_scales_k4(ls, lm), d_bits, dmin_bits


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q4_K_ref``: 144 bytes per 256 values (d, dmin, scales[12], qs[128])."""
    levels, scales, d_bits, dmin_bits = _k4_levels(blocks, 15, -1.0, 20)
    q = levels.reshape(-1, 4, 2, 32)  # [B, 64-value group, low/high half, 32]
    qs = q[:, :, 0, :] | (q[:, :, 1, :] << 4)
    out = np.empty((blocks.shape[0], 144), dtype=np.uint8)
    out[:, 0:2] = d_bits[:, None].view(np.uint8)
    out[:, 2:4] = dmin_bits[:, None].view(np.uint8)
    out[:, 4:16] = scales
    out[:, 16:] = qs.reshape(-1, 128)
    return out


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q5_K_ref``: 176 bytes per 256 values (d, dmin, scales[12], qh[32], qs[128])."""
    levels, scales, d_bits, dmin_bits = _k4_levels(blocks, 31, -0.5, 15)
    q = levels.reshape(-1, 4, 2, 32)
    low = q & 0xF
    qs = low[:, :, 0, :] | (low[:, :, 1, :] << 4)
    high = (q >> 4).astype(np.uint8)  # [B, 4, 2, 32]: bit 2*group + half of qh[j]
    shifts = (2 * np.arange(4, dtype=np.uint8)[:, None] + np.arange(2, dtype=np.uint8)[None, :])[None, :, :, None]
    qh = np.bitwise_or.reduce((high << shifts).reshape(-1, 8, 32), axis=1)
    out = np.empty((blocks.shape[0], 176), dtype=np.uint8)
    out[:, 0:2] = d_bits[:, None].view(np.uint8)
    out[:, 2:4] = dmin_bits[:, None].view(np.uint8)
    out[:, 4:16] = scales
    out[:, 16:48] = qh
    out[:, 48:] = qs.reshape(-1, 128)
    return out


def pack_2bit(levels: np.ndarray) -> np.ndarray:
    """``qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6`` for j = 0, 128: ``[B, 64]``."""
    q = levels.reshape(-1, 2, 4, 32)
    packed = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return packed.reshape(-1, 64)


def quantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q2_K_ref``: 84 bytes per 256 values (scales[16], qs[64], d, dmin)."""
    x = element_major(blocks, 16)  # [16, B, 16]
    levels, scales, mins = make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    max_scale = positive_max(scales, axis=1)
    max_min = positive_max(mins, axis=1)
    q4scale = F32(15)
    ls = np.where(max_scale[:, None] > 0, nearest_int((q4scale / max_scale)[:, None] * scales), 0)
    lm = np.where(max_min[:, None] > 0, nearest_int((q4scale / max_min)[:, None] * mins), 0)
    packed = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)  # uint8_t stores: both wrap
    d_bits = np.where(max_scale > 0, fp16_bits(max_scale / q4scale), np.uint16(0))
    dmin_bits = np.where(max_min > 0, fp16_bits(max_min / q4scale), np.uint16(0))
    d = fp16_value(d_bits.astype(np.uint16))[:, None] * (packed & 0xF).astype(F32)
    dm = fp16_value(dmin_bits.astype(np.uint16))[:, None] * (packed >> 4).astype(F32)
    _requantize(x, levels, d, dm, 3)
    out = np.empty((blocks.shape[0], 84), dtype=np.uint8)
    out[:, 0:16] = packed
    out[:, 16:80] = pack_2bit(block_major(levels))
    out[:, 80:82] = d_bits.astype(np.uint16)[:, None].view(np.uint8)
    out[:, 82:84] = dmin_bits.astype(np.uint16)[:, None].view(np.uint8)
    return out
