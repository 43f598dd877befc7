"""float32 building blocks shared by the kernels, written to round exactly as ggml-quants.c does on x86-64.

The kernels hold a chunk of blocks element-major: an array ``[E, B, J]`` is element ``e`` of sub-block ``j`` of
super-block ``b`` (E values per sub-block, J sub-blocks per super-block). Every per-element loop of the C code
becomes one array operation over all sub-blocks at once, and every ``sum += ...`` over a sub-block becomes
``np.add.reduce(axis=0)`` over the contiguous ``[B, J]`` slabs, which numpy adds one slab after the other: left to
right in float32 like C, not pairwise (a test pins this).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

F32 = np.float32
MAGIC = F32(12582912.0)  # 1.5 * 2**23: adding it rounds a float32 to an integer, ties to even
GROUP_MAX_EPS = F32(1e-15)

Kernel = Callable[[np.ndarray], np.ndarray]
# Inputs must be finite and below this in magnitude. Beyond about 7e12 the cubes and squares the K-quants sum
# overflow float32, and C's results on inf/NaN come out of its integer tricks, which the kernels do not
# reproduce. (C matches ours up to 6.5e12 in the benchmark's tests; real weights are far below 1.)
LIMIT = F32(2.0**40)


class OutOfRangeError(ValueError):
    """A block holds a non-finite value or one of magnitude LIMIT or more."""


def seq_sum(values: np.ndarray) -> np.ndarray:
    """``s = 0; for e: s += values[e]`` in float32 over axis 0 (one slab after the other)."""
    return np.add.reduce(values, axis=0)


def nearest_int(values: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` bit for bit (int32), including its results for infinities, NaN and |x| >= 2**22."""
    bits = (values.astype(F32, copy=False) + MAGIC).view(np.int32)
    return (bits & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def round_clamped(values: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(values)))`` as float32, for finite values below 2**22 in magnitude.

    There ``nearest_int`` is round-half-to-even, i.e. ``np.rint``; callers guarantee the bound (their values
    are a sub-block's own values times a finite scale that maps the sub-block's range onto about ``hi``)."""
    out = np.rint(values, out=out)
    return np.clip(out, F32(lo), F32(hi), out=out)


def fp16_bits(values: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_FP16`` (round to nearest even) as the uint16 stored in a block."""
    return np.asarray(values, dtype=F32).astype(np.float16).view(np.uint16)


def fp16_value(bits: np.ndarray) -> np.ndarray:
    """``GGML_FP16_TO_FP32`` of stored uint16 values."""
    return bits.view(np.float16).astype(F32)


def first_abs_max(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(amax, max)``: the largest ``|v|`` along ``axis`` and the signed value where it first occurs, as C's
    ``if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`` from ``amax = 0`` (an all-zero group keeps +0.0)."""
    absolute = np.abs(values)
    if axis == 0:  # element-major chunks (argmax along axis 0 is slow): the max is +amax or -amax
        amax = np.maximum.reduce(absolute, axis=0)
        positive = np.maximum.reduce(values, axis=0) == amax
        signed = np.where(positive, amax, -amax)
        both = np.nonzero((positive & (np.minimum.reduce(values, axis=0) == -amax)).reshape(-1))[0]
        if both.size:  # +amax and -amax both occur: the first one counts
            flat = values.reshape(values.shape[0], -1)[:, both]
            first = np.argmax(np.abs(flat) == amax.reshape(-1)[both], axis=0)
            signed.reshape(-1)[both] = flat[first, np.arange(both.size)]
    else:
        index = np.expand_dims(np.argmax(absolute, axis=axis), axis)
        amax = np.take_along_axis(absolute, index, axis=axis).squeeze(axis)
        signed = np.take_along_axis(values, index, axis=axis).squeeze(axis)
    return amax, np.where(amax > 0, signed, F32(0))


def positive_max(values: np.ndarray, axis: int) -> np.ndarray:
    """``m = 0; for v: if (v > m) m = v;`` along ``axis``: the largest value if positive, else +0.0."""
    largest = np.max(values, axis=axis)
    return np.where(largest > 0, largest, F32(0))


def element_major(blocks: np.ndarray, sub: int) -> np.ndarray:
    """``[B, QK]`` rows of blocks → a contiguous ``[sub, B, QK // sub]`` array (see the module docstring)."""
    n_blocks, qk = blocks.shape
    return np.ascontiguousarray(blocks.reshape(n_blocks, qk // sub, sub).transpose(2, 0, 1))


def block_major(levels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`element_major` for the quant levels: ``[sub, B, J]`` → ``[B, J * sub]`` uint8."""
    sub, n_blocks, groups = levels.shape
    return levels.astype(np.uint8).transpose(1, 2, 0).reshape(n_blocks, groups * sub)


def for_each_chunk(work: Callable[[int], None], n: int, chunk: int, threads: int) -> None:
    """``work(start)`` for ``start`` in ``range(0, n, chunk)``, spread over ``threads`` threads."""
    starts = range(0, n, chunk)
    if threads <= 1 or len(starts) <= 1:
        for start in starts:
            work(start)
    else:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(work, starts))


def run_chunked(kernel: Kernel, blocks: np.ndarray, type_size: int, chunk: int, threads: int) -> np.ndarray:
    """Apply ``kernel`` to ``[B, QK]`` float32 blocks ``chunk`` blocks at a time (to stay in cache), spreading
    the chunks over ``threads`` threads (numpy releases the GIL inside each operation). Blocks are independent,
    so the bytes do not depend on ``chunk`` or ``threads``. Raises OutOfRangeError for values outside LIMIT."""
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)

    def work(start: int) -> None:
        part = blocks[start : start + chunk]
        if not (part.min() > -LIMIT and part.max() < LIMIT):  # also false for NaN
            raise OutOfRangeError
        with np.errstate(all="ignore"):
            out[start : start + chunk] = kernel(part)

    for_each_chunk(work, blocks.shape[0], chunk, threads)
    return out
