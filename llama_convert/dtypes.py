"""The tensor dtypes a Llama checkpoint uses, and exact conversions between them without torch.

numpy has no bfloat16, so bf16 data travels as raw ``uint16`` and is converted with bit
operations that round exactly as torch does (round-to-nearest-even, NaN kept quiet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DTYPES",
    "E4M3_VALUES",
    "F8_E4M3",
    "DType",
    "cast",
    "dtype_by_name",
    "e4m3_to_f32",
    "f32_to_bf16",
    "f32_to_e4m3",
]


@dataclass(frozen=True)
class DType:
    """One element type: its safetensors code, torch name and numpy storage dtype."""

    safetensors: str  # "BF16", "F16", ...
    torch_name: str  # "bfloat16", "float16", ...
    storage: np.dtype  # how the raw bytes are held in numpy

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize

    def __str__(self) -> str:
        return self.torch_name


BF16 = DType("BF16", "bfloat16", np.dtype("<u2"))
F16 = DType("F16", "float16", np.dtype("<f2"))
F32 = DType("F32", "float32", np.dtype("<f4"))
F64 = DType("F64", "float64", np.dtype("<f8"))
I64 = DType("I64", "int64", np.dtype("<i8"))
I32 = DType("I32", "int32", np.dtype("<i4"))
I16 = DType("I16", "int16", np.dtype("<i2"))
I8 = DType("I8", "int8", np.dtype("i1"))
U8 = DType("U8", "uint8", np.dtype("u1"))
BOOL = DType("BOOL", "bool", np.dtype("?"))
# float8 e4m3 "fn" (no infinities, 0x7F/0xFF NaN, max 448): stored by the FP8 releases; held as raw bytes
# and only ever dequantized (``e4m3_to_f32``) or produced by ``f32_to_e4m3``, never cast.
F8_E4M3 = DType("F8_E4M3", "float8_e4m3fn", np.dtype("u1"))

DTYPES: dict[str, DType] = {d.torch_name: d for d in (BF16, F16, F32, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3)}
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
_FLOATS = {BF16, F16, F32, F64}


def dtype_by_name(name: str) -> DType:
    """Look up a dtype by torch name or a common alias (``bf16``, ``fp16``, ``fp32``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of bfloat16, float16, float32")
    return DTYPES[key]


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch does; NaN → 0x7FC0. In place on one scratch array (half the passes)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    scratch = bits >> 16
    scratch &= 1
    scratch += 0x7FFF
    scratch += bits
    scratch >>= 16
    rounded = scratch.astype(np.uint16)
    nan = np.isnan(bits.view(np.float32))
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bits (``uint16``), round-to-nearest-even as torch."""
    return _f32_to_bf16(x)


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    value = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp.astype(np.float64) - 7))
    value = np.where((codes & 0x7F) == 0x7F, np.nan, sign * value)
    return value.astype(np.float32)


E4M3_VALUES = _e4m3_table()
_E4M3_POSITIVE = E4M3_VALUES[:127]  # codes 0x00..0x7E: 0 … 448, increasing


def e4m3_to_f32(raw: np.ndarray) -> np.ndarray:
    """float8_e4m3fn bytes → float32 values (exact: every e4m3 value is a float32)."""
    return E4M3_VALUES[raw]


def f32_to_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 → float8_e4m3fn bytes, round-to-nearest-even and saturating at ±448 as torch's
    ``.to(torch.float8_e4m3fn)`` does for values already clamped to the range (NaN → 0x7F)."""
    x = np.asarray(x, dtype=np.float32)
    mag = np.minimum(np.abs(x), np.float32(448.0))
    hi = np.clip(np.searchsorted(_E4M3_POSITIVE, mag, side="left"), 0, 126)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - _E4M3_POSITIVE[lo], _E4M3_POSITIVE[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code = np.where(np.signbit(x), code | 0x80, code)
    return np.where(np.isnan(x), np.uint8(0x7F), code).astype(np.uint8)


def cast(data: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """Convert ``data`` (held as ``src.storage``) to ``dst``, rounding exactly as torch's ``.to()``."""
    if src == dst:
        return data
    if src not in _FLOATS or dst not in _FLOATS:
        raise ValueError(f"cannot convert {src} to {dst}: only floating-point casts are supported")
    as_float = _bf16_to_f32(data) if src == BF16 else data
    if dst == BF16:
        return _f32_to_bf16(as_float.astype(np.float32, copy=False))
    return as_float.astype(dst.storage)
