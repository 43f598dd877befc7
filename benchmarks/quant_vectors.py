"""Reference vectors and throughput of ggml's own C quantizers, next to ``llama_convert.formats.gguf.quants``.

ggml's C code is not a dependency of llama-convert. This script builds it on demand, outside the repository:
it fetches the llama-cpp-python 0.3.36 sdist (which vendors llama.cpp at upstream commit 0c1e570) with
``pip download`` into a scratch folder, configures it with CMake as upstream does on x86-64 without
``-march``/``-mfma`` (``GGML_NATIVE=OFF``, Release), builds only the ``ggml-base`` shared library and calls
``ggml_quantize_chunk`` (no importance matrix: the path llama-quantize takes) through ctypes.

    python benchmarks/quant_vectors.py vectors [--lib libggml-base.so] [--workdir DIR] [--out FILE]
    python benchmarks/quant_vectors.py check [--lib libggml-base.so] [--weights 1048576]
    python benchmarks/quant_vectors.py bench [--lib libggml-base.so] [--weights 4194304] [--threads 1]

``vectors`` writes ``tests/data/quants/vectors.npz``: the input sets below (float32 rows) and, for every type,
the bytes C makes of them; ``tests/test_quants_kernels.py`` compares our kernels against it byte for byte.
``check`` compares our bytes (both backends: numpy and, where built, native) with C's on larger generated sets
(normal, bf16-valued, Laplace, Student-t, bf16 grid values, one-signed), not stored. ``bench`` prints weights
per second of C and of both our backends for each type (one C thread; ours with ``--threads``). All refuse a
library built with FMA instructions, whose rounding differs.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

SDIST = "llama-cpp-python==0.3.36"
TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "quants" / "vectors.npz"


def build_library(workdir: Path) -> Path:
    """Fetch the sdist into ``workdir`` and build ``libggml-base.so`` there; return its path."""
    lib = workdir / "build" / "bin" / "libggml-base.so"
    if lib.exists():
        return lib
    workdir.mkdir(parents=True, exist_ok=True)
    dist = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(dist)],
        check=True,
    )
    (archive,) = dist.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(workdir, filter="data")
        except TypeError:  # Python < 3.11.4: no extraction filters
            tar.extractall(workdir)
    (source,) = workdir.glob("llama_cpp_python-*/vendor/llama.cpp")
    flags = ["-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_OPENMP=OFF"]
    flags += [f"-DLLAMA_{x}=OFF" for x in ("CURL", "BUILD_TESTS", "BUILD_EXAMPLES", "BUILD_SERVER", "BUILD_TOOLS")]
    subprocess.run(["cmake", "-S", str(source), "-B", str(workdir / "build"), *flags], check=True)
    subprocess.run(["cmake", "--build", str(workdir / "build"), "--target", "ggml-base", "-j2"], check=True)
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    """Open ``libggml-base.so``, refusing a build whose code contains FMA instructions."""
    disassembly = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    if "vfmadd" in disassembly or "vfmsub" in disassembly:
        raise SystemExit(f"{path} uses FMA instructions; its bytes differ from upstream's x86-64 build.")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_quantize_chunk.argtypes += [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def c_quantize(lib: ctypes.CDLL, rows: np.ndarray, qtype: str) -> np.ndarray:
    """``ggml_quantize_chunk`` of float32 ``rows`` (no importance matrix) → uint8 bytes."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    gtype = GGMLQuantizationType[qtype]
    block, size = GGML_QUANT_SIZES[gtype]
    out = np.zeros(rows.size // block * size, dtype=np.uint8)
    n = lib.ggml_quantize_chunk(int(gtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1], None)
    assert n == out.size, (qtype, n, out.size)
    return out


def _bf16(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def input_sets(seed: int = 23) -> dict[str, np.ndarray]:
    """The data sets: float32 rows of 256 or 512 values (96 for the 32-value types only)."""
    rng = np.random.default_rng(seed)
    normal = lambda rows, n, s=1.0: (rng.standard_normal((rows, n)) * s).astype(np.float32)  # noqa: E731
    sets: dict[str, np.ndarray] = {}
    sets["normal_512"] = normal(12, 512, 0.02)
    sets["normal_256"] = normal(8, 256, 1.0)
    sets["scales"] = normal(8, 256) * np.logspace(-4, 3, 8, dtype=np.float32)[:, None]
    zero = np.zeros((3, 256), dtype=np.float32)
    zero[1, 32:96] = normal(1, 64, 0.05)[0]  # zero and non-zero sub-blocks side by side
    zero[2, 5] = -0.25  # a single non-zero value
    sets["zeros"] = zero
    const = np.empty((4, 256), dtype=np.float32)
    const[0], const[1] = 0.125, -3.0
    const[2] = np.repeat(np.float32([0.5, -0.5, 1e-3, 7.0, -2.0, 0.0, 1.0, 2.0]), 32)
    const[3] = np.repeat(np.linspace(-1, 1, 16, dtype=np.float32), 16)
    sets["constant"] = const
    out = normal(8, 256, 0.02)
    where = rng.choice(out.size, 24, replace=False)
    out.reshape(-1)[where] = rng.choice([-1, 1], 24) * rng.uniform(0.5, 40, 24)
    sets["outliers"] = out
    tiny = normal(6, 256)
    tiny *= np.float32([1e-30, 1e-20, 1e-10, 2e-38, 1e-40, 1e-44])[:, None]
    sets["tiny"] = tiny
    sets["bf16"] = _bf16(normal(12, 256, 0.02))
    sets["bf16_wide"] = _bf16(normal(4, 512, 1.0))
    ties = rng.integers(-16, 17, (4, 256)).astype(np.float32) / np.float32(8)
    sets["ties"] = ties
    sign = np.abs(normal(4, 256, 0.1))
    sign[2:] *= -1
    sign[1] += 0.5  # strictly positive: the min is clamped at zero
    sets["one_sign"] = sign
    sparse = np.zeros((4, 256), dtype=np.float32)
    sparse.reshape(-1)[rng.choice(1024, 40, replace=False)] = normal(1, 40, 0.1)[0]
    sets["sparse"] = sparse
    signed = np.abs(normal(4, 256, 0.05))
    signed[:, ::7] = 0.0
    signed[:, 3::11] = -0.0  # zero mins of both signs, first -0.0 or first +0.0
    signed[2:] *= -1
    signed[3, :64] = -0.0  # all-zero blocks that start with -0.0
    signed[3, 64:96] = 0.0
    signed[3, 65] = -0.0
    sets["signed_zero"] = signed
    sets["narrow_96"] = normal(4, 96, 0.02)
    extremes = np.zeros((3, 256), dtype=np.float32)  # no random draws: the sets above stay as they were
    extremes[0, ::3] = -0.0  # all-zero blocks of mixed signs: the first zero is both min and max
    extremes[1, 1::4] = -0.0
    extremes[1, 2::8] = -0.5  # max zero, min negative: max's sign (the first zero's) gives d's
    extremes[2] = np.abs(np.linspace(-1, 1, 256, dtype=np.float32))
    extremes[2, 0::5] = -0.0  # min zero, either sign first
    sets["zero_extremes"] = extremes
    return sets


def make_vectors(lib: ctypes.CDLL, out: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, rows in input_sets().items():
        arrays[f"{name}.x"] = rows
        for qtype in TYPES:
            if rows.shape[1] % GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0] == 0:
                arrays[f"{name}.{qtype}"] = c_quantize(lib, rows, qtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(arrays)} arrays)")


def check(lib: ctypes.CDLL, weights: int) -> None:
    """Our bytes against C's on larger sets than the committed ones (not stored): exit status 1 on a mismatch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from llama_convert.formats.gguf.quants import quantize
    from llama_convert.formats.gguf.quants.backend import native_available

    backends = ["numpy", "native"] if native_available() else ["numpy"]
    rng = np.random.default_rng(99)
    shape = (max(1, weights // 4096), 4096)
    sets = {
        "normal": rng.standard_normal(shape) * 0.02,
        "bf16": _bf16(rng.standard_normal(shape) * 0.02),
        "laplace": rng.laplace(0, 0.01, shape),
        "student_t2": rng.standard_t(2, shape) * 0.01,
        "bf16_grid": _bf16(rng.integers(-8, 8, shape) / 128),
        "positive": rng.random(shape),
        "negative_narrow": -(0.5 + rng.random(shape) / 2),
    }
    failed = False
    for name, values in sets.items():
        rows = values.astype(np.float32)
        bad = [
            f"{q} ({backend})"
            for q in TYPES
            for backend in backends
            if not np.array_equal(
                quantize(rows, GGMLQuantizationType[q], backend=backend).reshape(-1), c_quantize(lib, rows, q)
            )
        ]
        failed |= bool(bad)
        print(f"{name}: {rows.size} weights, {'differ: ' + ', '.join(bad) if bad else 'all types byte-identical'}")
    if failed:
        raise SystemExit(1)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench(lib: ctypes.CDLL, weights: int, threads: int, types: list[str]) -> None:
    """Throughput per core (weights per CPU second, robust on a busy machine) of C and of both backends, and
    the native backend's per wall second with ``threads`` threads."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from llama_convert.formats.gguf.quants import quantize
    from llama_convert.formats.gguf.quants.backend import NATIVE_TYPES

    rows = (np.random.default_rng(0).standard_normal((weights // 4096, 4096)) * 0.02).astype(np.float32)
    print(f"{rows.size} weights (rows of 4096), N(0, 0.02); ours with {threads} thread(s); Mw = 10^6 weights")
    print("| type | C Mw/CPU-s | numpy Mw/CPU-s | native Mw/CPU-s | native/C time per core | native Mw/wall-s |")
    print("|---|---|---|---|---|---|")
    mw = lambda seconds: f"{rows.size / seconds / 1e6:.1f}"  # noqa: E731
    for qtype in types:
        gtype = GGMLQuantizationType[qtype]
        ref, _, c_cpu = _timed(lambda q=qtype: c_quantize(lib, rows, q))
        slow, _, numpy_cpu = _timed(lambda q=gtype: quantize(rows, q, threads=threads, backend="numpy"))
        assert np.array_equal(slow.reshape(-1), ref), f"numpy {qtype} differs from C"
        if gtype not in NATIVE_TYPES:
            print(f"| {qtype} | {mw(c_cpu)} | {mw(numpy_cpu)} | - | - | - |")
            continue
        fast, wall, cpu = _timed(lambda q=gtype: quantize(rows, q, threads=threads, backend="native"))
        assert np.array_equal(fast.reshape(-1), ref), f"native {qtype} differs from C"
        print(f"| {qtype} | {mw(c_cpu)} | {mw(numpy_cpu)} | {mw(cpu)} | {cpu / c_cpu:.2f}× | {mw(wall)} |")
    print("every output byte-identical to C's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["vectors", "check", "bench"])
    parser.add_argument("--lib", type=Path, help="an existing libggml-base.so built as described above")
    parser.add_argument("--workdir", type=Path, help="where to fetch and build (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--weights", type=int, default=1 << 20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--types", default=",".join(TYPES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.lib or build_library(args.workdir or Path(scratch))
        lib = load_library(path)
        if args.command == "vectors":
            make_vectors(lib, args.out)
        elif args.command == "check":
            check(lib, args.weights)
        else:
            bench(lib, args.weights, args.threads, args.types.split(","))


if __name__ == "__main__":
    main()
