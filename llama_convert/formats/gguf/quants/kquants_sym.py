"""Q3_K and Q6_K: the symmetric K-quants (``x ≈ d·sc·q``, 16 sub-blocks of 16 values, signed scales).

Ports of ``quantize_row_q3_K_ref`` / ``make_q3_quants`` and ``quantize_row_q6_K_ref`` / ``make_qx_quants``
(rmse_type 1, no weights) of ggml-quants.c (llama.cpp 0c1e570). Each function takes ``[B, 256]`` float32
super-blocks and returns ``[B, type_size]`` block bytes.
"""

from __future__ import annotations

import numpy as np

from .common import (
    F32,
    GROUP_MAX_EPS,
    block_major,
    element_major,
    first_abs_max,
    fp16_bits,
    fp16_value,
    nearest_int,
    round_clamped,
    seq_sum,
)
from .kquants_min import pack_2bit


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)`` over every sub-block of ``x`` (``[E, ...]``).

    Returns float32 levels (``l + nmax``; 0 for a group below GROUP_MAX_EPS) and the per-sub-block scale.
    Trials ``is = -9..9`` (skipping 0) keep the levels and scale of the best ``sumlx² / suml2``; the levels are
    recomputed from the best trial's iscale at the end (the same operations, so the same levels)."""
    amax, mx = first_abs_max(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    tmp = np.empty_like(x)
    levels = np.empty_like(x)

    def levels_for(iscale: np.ndarray) -> np.ndarray:
        np.multiply(x, np.where(zero, F32(0), iscale), out=tmp)
        return round_clamped(tmp, -nmax, nmax - 1, out=levels)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels_for(iscale)
        sumlx = seq_sum(np.multiply(wx, levels, out=tmp))
        np.multiply(w, levels, out=tmp)
        return sumlx, seq_sum(np.multiply(tmp, levels, out=tmp))

    best_iscale = F32(-nmax) / mx
    sumlx, suml2 = sums(best_iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
        sumlx, suml2 = sums(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
        best_iscale = np.where(better, iscale, best_iscale)
    levels_for(best_iscale)  # the best trial's levels again: cheaper than a masked copy per trial
    levels += F32(nmax)
    np.copyto(levels, F32(0), where=zero)
    return levels, np.where(zero, F32(0), scale)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q6_K_ref``: 210 bytes per 256 values (ql[128], qh[64], scales[16] int8, d)."""
    x = element_major(blocks, 16)  # [16, B, 16]
    levels, scales = make_qx_quants(x, 32)
    max_abs_scale, max_scale = first_abs_max(scales, axis=1)
    zero_block = max_abs_scale < GROUP_MAX_EPS
    iscale = F32(-128) / max_scale
    d_bits = fp16_bits(F32(1) / iscale)
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    d = fp16_value(d_bits)[:, None] * sc.astype(F32)
    fresh = np.clip(nearest_int(x / d), -32, 31) + 32
    np.copyto(levels, fresh.astype(F32), where=d != 0)
    q = block_major(levels).reshape(-1, 2, 4, 32)  # [B, half, quarter, 32]
    low = q & 0xF
    ql = np.stack([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    high = q >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    out = np.empty((blocks.shape[0], 210), dtype=np.uint8)
    out[:, 0:128] = ql.reshape(-1, 128)
    out[:, 128:192] = qh.reshape(-1, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d_bits[:, None].view(np.uint8)
    out[zero_block] = 0
    return out


def make_q3_quants(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(16, 4, x, L, do_rmse=true)`` over every sub-block of ``x`` (``[16, ...]``).

    The element-by-element refinement (up to 5 passes, each element's choice depending on the sums left by the
    previous one) runs as a Python loop over the 16 positions on arrays of all sub-blocks. A sub-block that C
    stops early (a pass without changes) is unchanged by further passes, so running them is harmless."""
    nmax = 4
    amax, mx = first_abs_max(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    iscale = np.where(zero, F32(0), F32(-nmax) / mx)
    levels = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(F32)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * levels)
    suml2 = seq_sum((w * levels) * levels)
    shape = sumlx.shape
    flat = (x.reshape(x.shape[0], -1), w.reshape(x.shape[0], -1), wx.reshape(x.shape[0], -1))
    all_levels = levels.reshape(x.shape[0], -1)
    sumlx, suml2 = sumlx.reshape(-1), suml2.reshape(-1)
    active = np.arange(sumlx.size)
    for _ in range(5):
        # only sub-blocks that changed in the previous pass can change in this one
        if active.size == sumlx.size:  # the first pass: in place, no gathering
            changed = _q3_pass(*flat, all_levels, sumlx, suml2, nmax)
        else:
            xa, wa, wxa = (part[:, active] for part in flat)
            la, slx_a, sl2_a = all_levels[:, active], sumlx[active], suml2[active]
            changed = _q3_pass(xa, wa, wxa, la, slx_a, sl2_a, nmax)
            all_levels[:, active], sumlx[active], suml2[active] = la, slx_a, sl2_a
        active = active[changed]
        if not active.size:
            break
    sumlx, suml2 = sumlx.reshape(shape), suml2.reshape(shape)
    levels += F32(nmax)
    np.copyto(levels, F32(0), where=zero)
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return levels, np.where(zero, F32(0), scale)


def _q3_pass(x, w, wx, levels, sumlx, suml2, nmax: int) -> np.ndarray:
    """One refinement pass of ``make_q3_quants`` over ``[16, S]`` sub-blocks, updating ``levels``, ``sumlx``
    and ``suml2`` in place; returns which sub-blocks changed."""
    changed = np.zeros(sumlx.shape, dtype=bool)
    for i in range(x.shape[0]):
        xi, wi, wxi, li = x[i], w[i], wx[i], levels[i]
        slx = sumlx - wxi * li
        sl2 = suml2 - (wi * li) * li
        new_l = np.clip(nearest_int((xi * sl2) / slx), -nmax, nmax - 1).astype(F32)
        candidate = (slx > 0) & (new_l != li)
        slx += wxi * new_l
        sl2 += (wi * new_l) * new_l
        accept = candidate & (sl2 > 0) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
        if accept.any():
            np.copyto(li, new_l, where=accept)
            np.copyto(sumlx, slx, where=accept)
            np.copyto(suml2, sl2, where=accept)
            changed |= accept
    return changed


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q3_K_ref``: 110 bytes per 256 values (hmask[32], qs[64], scales[12], d)."""
    x = element_major(blocks, 16)  # [16, B, 16]
    levels, scales = make_q3_quants(x)
    _, max_scale = first_abs_max(scales, axis=1)
    nonzero = max_scale != 0
    iscale = F32(-32) / max_scale
    wrapped = ((nearest_int(iscale[:, None] * scales) + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
    ls = np.where(nonzero[:, None], np.clip(wrapped, -32, 31) + 32, 0).astype(np.uint8)  # [B, 16]
    packed = np.empty((blocks.shape[0], 12), dtype=np.uint8)
    packed[:, 0:8] = (ls[:, 0:8] & 0xF) | ((ls[:, 8:16] & 0xF) << 4)
    high = (ls >> 4).reshape(-1, 4, 4)  # [B, j // 4, j % 4]
    packed[:, 8:12] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    d_bits = np.where(nonzero, fp16_bits(F32(1) / iscale), np.uint16(0)).astype(np.uint16)
    d = fp16_value(d_bits)[:, None] * (ls.astype(F32) - F32(32))
    fresh = np.clip(nearest_int(x / d), -4, 3) + 4
    np.copyto(levels, fresh.astype(F32), where=d != 0)
    q = block_major(levels)  # [B, 256], values 0..7
    over = (q > 3).astype(np.uint8).reshape(-1, 8, 32)
    hmask = np.bitwise_or.reduce(over << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    out = np.empty((blocks.shape[0], 110), dtype=np.uint8)
    out[:, 0:32] = hmask
    out[:, 32:96] = pack_2bit(q & 3)
    out[:, 96:108] = packed
    out[:, 108:110] = d_bits[:, None].view(np.uint8)
    return out
