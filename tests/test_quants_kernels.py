"""The quantizers against ggml's C code: every type, every data set, byte for byte, for both backends (the numpy
kernels and the compiled ones, skipped where not built).

``tests/data/quants/vectors.npz`` holds float32 input rows and the bytes ``ggml_quantize_chunk`` (no importance
matrix) made of them, from ggml-quants.c of llama.cpp 0c1e570 built for x86-64 without FMA
(``benchmarks/quant_vectors.py vectors`` regenerates it). The data sets: normal rows of 256 and 512 values,
rows at scales from 1e-4 to 1e3, zero and constant (sub-)blocks, outliers, tiny scales down to denormals,
bf16-valued rows, values on exact rounding ties, one-signed rows, sparse rows, and rows of 96 values for the
32-value types.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from llama_convert.dtypes import DTYPES
from llama_convert.errors import UnsupportedError
from llama_convert.formats.gguf.encode import encode
from llama_convert.formats.gguf.quants import QUANTIZED_TYPES, quantize, row_nbytes
from llama_convert.formats.gguf.quants.backend import BACKENDS, ENV, native_available
from llama_convert.formats.gguf.quants.common import nearest_int, seq_sum

VECTORS = Path(__file__).parent / "data" / "quants" / "vectors.npz"
TYPES = sorted(QUANTIZED_TYPES, key=lambda t: t.name)
BITS = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q4_0": 4, "Q4_1": 4, "IQ4_NL": 4, "Q5_K": 5, "Q5_0": 5, "Q5_1": 5}
BITS |= {"Q6_K": 6, "Q8_0": 8}


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Each backend in turn, also for code that does not name one (``encode``): through the environment."""
    if request.param == "native" and not native_available():
        pytest.skip("the compiled quantizers are not built (no C compiler at install)")
    monkeypatch.setenv(ENV, request.param)
    return request.param


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    with np.load(VECTORS) as data:
        return {name: data[name] for name in data.files}


def _sets(vectors: dict[str, np.ndarray]) -> list[str]:
    return sorted(name[: -len(".x")] for name in vectors if name.endswith(".x"))


def test_vectors_cover_every_type_and_set(vectors):
    sets = _sets(vectors)
    assert len(sets) >= 12
    for name in sets:
        n = vectors[f"{name}.x"].shape[1]
        for qtype in TYPES:
            present = f"{name}.{qtype.name}" in vectors
            assert present == (n % GGML_QUANT_SIZES[qtype][0] == 0), (name, qtype.name)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_equal_ggml(backend, vectors, qtype):
    checked = 0
    for name in _sets(vectors):
        expected = vectors.get(f"{name}.{qtype.name}")
        if expected is None:
            continue
        rows = vectors[f"{name}.x"]
        ours = quantize(rows, qtype)
        assert ours.shape == (rows.shape[0], row_nbytes(rows.shape[1], qtype))
        block = GGML_QUANT_SIZES[qtype][1]
        differ = np.nonzero((ours.reshape(-1, block) != expected.reshape(-1, block)).any(axis=1))[0]
        assert differ.size == 0, f"{name}: {differ.size} of {expected.size // block} blocks differ, first {differ[:5]}"
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_encode_of_bf16_weights_equals_ggml(backend, vectors, qtype):
    """The GGUF sink's path: bf16 weights as stored in a checkpoint → encode() → C's bytes of their float32."""
    for name in ("bf16", "bf16_wide"):
        bits = (vectors[f"{name}.x"].view(np.uint32) >> 16).astype(np.uint16)
        out = encode(bits, DTYPES["bfloat16"], qtype, threads=2)
        assert np.array_equal(out, vectors[f"{name}.{qtype.name}"]), name


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_threads_and_row_blocks_give_the_same_bytes(backend, qtype):
    rows = (np.random.default_rng(7).standard_normal((40, 768)) * 0.02).astype(np.float32)
    whole = quantize(rows, qtype)
    assert np.array_equal(quantize(rows, qtype, threads=2), whole)
    assert np.array_equal(np.concatenate([quantize(rows[:13], qtype), quantize(rows[13:], qtype)]), whole)
    assert np.array_equal(quantize(rows.reshape(8, 5, 768), qtype), whole)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("scale", [0.02, 1.0, 100.0])
def test_dequantized_error_within_the_types_resolution(backend, qtype, scale):
    """gguf-py's dequantizers give back the values within the resolution of ``bits`` levels per block:
    uniform data, RMS error at most ~1/(2^bits - 1) of the RMS value (the step over sqrt(12)), and no value
    further than two steps of its block's range; normal data, RMS error at most 1.5/(2^bits - 1). (Much
    smaller values lose more: the fp16 super-block scale becomes subnormal, in C as here.)"""
    rng = np.random.default_rng(11)
    levels = 2 ** BITS[qtype.name] - 1
    uniform = (rng.uniform(-1, 1, (32, 512)) * scale).astype(np.float32)
    normal = (rng.standard_normal((32, 512)) * scale).astype(np.float32)
    for rows, rms_bound in ((uniform, 1.15), (normal, 1.5)):
        back = quants.dequantize(quantize(rows, qtype), qtype).reshape(rows.shape)
        error = back - rows
        assert np.sqrt(np.mean(error**2) / np.mean(rows**2)) < rms_bound / levels
    worst = np.abs(error.reshape(-1, 32)).max(axis=1) / np.abs(rows.reshape(-1, 32)).max(axis=1)
    assert worst.max() < 2.5 / levels


def test_sequential_sum_adds_left_to_right():
    """The kernels rely on ``np.add.reduce(axis=0)`` adding slab after slab in float32 (not pairwise)."""
    values = (np.random.default_rng(3).standard_normal((32, 50, 8)) * np.logspace(-3, 3, 8)).astype(np.float32)
    expected = np.zeros(values.shape[1:], dtype=np.float32)
    for slab in values:
        expected = expected + slab
    assert np.array_equal(seq_sum(values), expected)
    pairwise = np.sum(np.ascontiguousarray(values.transpose(1, 2, 0)), axis=-1)
    assert not np.array_equal(pairwise, expected)  # numpy's pairwise summation would differ


def test_nearest_int_is_ggmls_bit_trick():
    values = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, 3.49999, -7.6, 4194303.0, 5e6, np.inf, -np.inf, np.nan])
    assert nearest_int(values).tolist() == [0, 2, 2, 0, -2, 3, -8, 4194303, -3791456, -4194304, -4194304, 0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e20, -(2.0**40)])
def test_non_finite_and_huge_values_are_refused(backend, bad):
    rows = np.zeros((3, 512), dtype=np.float32)
    rows[2, 300] = bad
    for qtype in (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q8_0):
        with pytest.raises(UnsupportedError, match=f"cannot be quantized to {qtype.name}"):
            quantize(rows, qtype, threads=2)
    rows[2, 300] = 2.0**39  # below the limit: quantized
    assert quantize(rows, GGMLQuantizationType.Q6_K).shape == (3, 420)


def test_refusals(backend):
    with pytest.raises(UnsupportedError, match="Rows of 100 values cannot be stored as Q4_K"):
        quantize(np.zeros((2, 100), dtype=np.float32), GGMLQuantizationType.Q4_K)
    with pytest.raises(UnsupportedError, match="No quantizer for GGUF type IQ2_XXS"):
        quantize(np.zeros((2, 256), dtype=np.float32), GGMLQuantizationType.IQ2_XXS)
