"""The compiled quantizers (``quants/_native.c``) give the numpy kernels' bytes, block for block, on every kind of
block (the numpy kernels are pinned to ggml's C code by tests/test_quants_kernels.py); the backend choice."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from llama_convert.errors import UnsupportedError
from llama_convert.formats.gguf.quants import backend as backends
from llama_convert.formats.gguf.quants import quantize

native = pytest.mark.skipif(
    not backends.native_available(), reason="the compiled quantizers are not built (no C compiler at install)"
)
NATIVE_TYPES = sorted(backends.NATIVE_TYPES, key=lambda t: t.name)


def _bf16(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def _blocks() -> dict[str, np.ndarray]:
    """Rows of 512 values of every kind the kernels meet, a few hundred super-blocks in all."""
    rng = np.random.default_rng(2023)
    normal = lambda rows, s=1.0: (rng.standard_normal((rows, 512)) * s).astype(np.float32)  # noqa: E731
    sets = {"random": normal(24, 0.02), "wide": normal(8) * np.logspace(-6, 6, 8, dtype=np.float32)[:, None]}
    sets["zero"] = np.zeros((2, 512), dtype=np.float32)
    sets["zero"][1, ::3] = -0.0
    const = np.empty((6, 512), dtype=np.float32)
    const[:] = np.float32([0.125, -3.0, 1e-3, 7.0, -1e-20, 2.0**39])[:, None]
    sets["constant"] = const
    piecewise = np.repeat(rng.uniform(-2, 2, (8, 32)).astype(np.float32), 16, axis=1)  # constant sub-blocks
    sets["piecewise"] = piecewise
    outliers = normal(16, 0.02)
    where = rng.choice(outliers.size, 200, replace=False)
    outliers.reshape(-1)[where] = rng.choice([-1, 1], 200) * rng.uniform(0.5, 1e3, 200)
    sets["outliers"] = outliers
    sets["tiny"] = (
        normal(10) * np.float32([1e-8, 1e-15, 1e-20, 1e-30, 1e-36, 2e-38, 1e-39, 1e-40, 1e-43, 1e-45])[:, None]
    )
    denormal = rng.integers(-(2**23) + 1, 2**23, (8, 512)).astype(np.int32)
    sets["denormal"] = (np.abs(denormal) | (denormal < 0).astype(np.int32) << 31).view(np.float32)  # all subnormal
    sets["sparse_denormal"] = np.where(rng.random((4, 512)) < 0.05, sets["denormal"][:4], np.float32(0))
    sets["bf16"] = _bf16(normal(16, 0.02))
    sets["bf16_grid"] = _bf16(rng.integers(-8, 8, (8, 512)) / np.float32(128))
    sets["ties"] = rng.integers(-16, 17, (8, 512)).astype(np.float32) / np.float32(8)
    sets["one_sign"] = np.abs(normal(8, 0.1)) * np.float32([1, 1, 1, 1, -1, -1, -1, -1])[:, None]
    sets["heavy_tail"] = (rng.standard_t(2, (16, 512)) * 0.01).astype(np.float32)
    sets["near_limit"] = normal(4, 2.0**36)
    return sets


def _lane_counts() -> list[int]:
    """The widths the compiled kernels can run here: 8 (AVX2) and 4, or the one the build has."""
    if not backends.native_available():
        return [0]
    top = backends._native.lanes()
    return [8, 4] if top == 8 else [top]


@pytest.fixture(params=_lane_counts(), ids=lambda n: f"lanes{n}")
def lanes(request):
    if not backends.native_available():
        pytest.skip("the compiled quantizers are not built (no C compiler at install)")
    before = backends._native.lanes()
    backends._native.lanes(request.param)
    yield request.param
    backends._native.lanes(before)


@native
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_native_bytes_equal_numpy(qtype, lanes):
    assert backends._native.lanes() == lanes
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    for name, rows in _blocks().items():
        ours = quantize(rows, qtype, backend="native")
        expected = quantize(rows, qtype, backend="numpy")
        differ = np.nonzero((ours.reshape(-1, block_bytes) != expected.reshape(-1, block_bytes)).any(axis=1))[0]
        assert differ.size == 0, f"{name}: {differ.size} blocks differ, first {differ[:5]}"


@native
def test_native_covers_the_priority_types():
    assert {t.name for t in backends.NATIVE_TYPES} >= {"Q4_K", "Q6_K", "Q5_K", "Q8_0"}
    with pytest.raises(ValueError, match="lanes must be"):
        backends._native.lanes(3)


@native
def test_native_fp16_rounds_to_nearest_even():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    special = np.float32([0.0, -0.0, 65504, 65519.99, 65520, -65520, 1e30, np.inf, -np.inf, 2**-24, 2**-25])
    special = np.concatenate([special, np.float32([2**-25 * 1.0000001, 3 * 2**-25, 2**-14, 2**-14 * 0.99999])])
    values = np.concatenate([bits.view(np.float32), special])
    values = values[~np.isnan(values)]
    out = np.empty(values.size, dtype=np.uint16)
    backends._native.fp16(values, out)
    with np.errstate(over="ignore"):
        assert np.array_equal(out, values.astype(np.float16).view(np.uint16))


@native
def test_native_refuses_bad_values_and_shapes():
    rows = np.zeros((4, 256), dtype=np.float32)
    rows[3, 7] = np.nan
    out = np.empty((4, 144), dtype=np.uint8)
    assert backends._native.quantize(12, rows, out) is False
    with pytest.raises(ValueError, match="whole float32 blocks"):
        backends._native.quantize(12, rows[:, :100].copy(), out)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    assert backends.choose_backend() == ("native" if backends.native_available() else "numpy")
    assert backends.choose_backend("NumPy") == "numpy"
    monkeypatch.setenv(backends.ENV, "numpy")
    assert backends.choose_backend() == "numpy"
    monkeypatch.setenv(backends.ENV, "fortran")
    with pytest.raises(UnsupportedError, match="Unknown quantizer backend 'fortran'"):
        quantize(np.zeros((1, 256), dtype=np.float32), GGMLQuantizationType.Q4_K)
    monkeypatch.setattr(backends, "_native", None)
    with pytest.raises(UnsupportedError, match="compiled quantizers are not built"):
        backends.choose_backend("native")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("cc"), reason="needs a Linux C compiler")
def test_scalar_build_equals_numpy(tmp_path):
    """The plain C code (what compilers without vector types build, ``-DQUANTS_SCALAR``) gives the same bytes."""
    source = Path(backends.__file__).with_name("_native.c")
    target = tmp_path / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    flags = ["-O2", "-ffp-contract=off", "-fno-fast-math", "-DQUANTS_SCALAR", "-shared", "-fPIC"]
    subprocess.run(["cc", *flags, f"-I{include}", str(source), "-o", str(target)], check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("_native", target)
    scalar = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scalar)
    assert scalar.lanes() == 1
    for qtype in sorted((GGMLQuantizationType(t) for t in scalar.types()), key=lambda t: t.name):
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        for name, rows in _blocks().items():
            ours = np.empty(rows.size // block * block_bytes, dtype=np.uint8)
            assert scalar.quantize(int(qtype), rows, ours)
            expected = quantize(rows, qtype, backend="numpy").reshape(-1)
            assert np.array_equal(ours, expected), f"{qtype.name} {name}"
