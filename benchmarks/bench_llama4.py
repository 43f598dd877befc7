"""Benchmark the Llama 4 conversion at release tensor sizes: wall time against ``cp`` and peak RSS.

Synthesizes a Scout-shaped checkpoint in Meta's layout with every tensor at its published per-shard
size (dim 5120, 40 heads / 8 KV heads, 16 experts of width 8192, vocabulary 202048, vision encoder
1408 wide), 8 shards, bf16, but only a few layers (``--layers``, default 2, and 2 vision layers) to fit
a small disk; random bytes (the converter never looks at values). Then, each with a cold page cache
when run as root:

- ``cp -r SRC DST && sync``             the disk limit: read everything once, write it once
- ``md5sum LARGEST_SHARD``              the hashing limit for the verified conversion
- ``llama-convert SRC DST``             zero flags, checksums verified (the default)
- ``llama-convert SRC DST --no-verify``

Peak RSS comes from ``/usr/bin/time -v``. The routed-expert ``down_proj`` is assembled one expert at a
time (its shards interleave inside each expert), the largest block of this model: 8192 × 5120 bf16
= 80 MiB, which bounds the peak RSS.

    python benchmarks/bench_llama4.py --workdir DIR [--layers 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  (shared measurement helpers)

from llama_convert.dtypes import DTYPES  # noqa: E402
from llama_convert.families.llama4.layout import DROPPED, shard_shapes, tensor_table  # noqa: E402
from llama_convert.families.llama4.params import parse_llama4_params  # noqa: E402
from llama_convert.formats.meta.torch_zip_writer import TorchZipWriter  # noqa: E402
from llama_convert.formats.meta.writer import write_checklist  # noqa: E402
from llama_convert.testing.llama4 import SCOUT_PARAMS  # noqa: E402

MP = 8
_NOISE = np.random.default_rng(0).integers(0x3C00, 0x3D00, size=16 << 20, dtype=np.uint16)  # small bf16s


def _chunks(numel: int, salt: int):
    """``numel`` bf16 values in 32 MiB chunks, from a fixed random pool (offset by ``salt``)."""
    done = 0
    while done < numel:
        n = min(numel - done, _NOISE.size)
        start = (salt * 7919 + done) % (_NOISE.size - n + 1)
        yield _NOISE[start : start + n]
        done += n


def synthesize(folder: Path, layers: int, vision_layers: int = 2) -> dict:
    vision = {**SCOUT_PARAMS["vision_args"], "n_layers": vision_layers}
    params = {**SCOUT_PARAMS, "n_layers": layers, "vision_args": vision}
    p = parse_llama4_params(params, Path("params.json"))
    shapes = shard_shapes(tensor_table(p, MP, p.vocab_size or 0))
    folder.mkdir(parents=True, exist_ok=True)
    bf16 = DTYPES["bfloat16"]
    for rank in range(MP):
        with TorchZipWriter(folder / f"consolidated.{rank:02d}.pth") as writer:
            for i, (name, shape) in enumerate(shapes.items()):
                numel = math.prod(shape)
                key = writer.add_storage(bf16, numel, _chunks(numel, rank * 1000 + i))
                writer.add_view(name, key, shape)
            for layer in range(layers):  # the expert statistics Meta's shards carry (dropped)
                name = f"layers.{layer}.feed_forward.global_gate_stats_3E"
                assert DROPPED.match(name)
                writer.add_tensor(name, np.zeros((3, p.moe.num_experts), np.float32), DTYPES["float32"])
    (folder / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    import importlib.resources

    tokenizer = importlib.resources.files("llama_models") / "llama4" / "tokenizer.model"
    (folder / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    write_checklist(folder)
    return params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the synthesized checkpoint")
    args = parser.parse_args()
    src = args.workdir / f"Llama-4-Scout-17B-16E-Instruct-{args.layers}layers"
    if not (src / "checklist.chk").exists():
        started = time.perf_counter()
        synthesize(src, args.layers)
        print(f"synthesized {src.name}: {bench.tree_bytes(src) / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")
    size = bench.tree_bytes(src)
    largest = max(src.glob("consolidated.*.pth"), key=lambda p: p.stat().st_size)
    dst = args.workdir / "out"
    rows = {
        "cp -r && sync": ["sh", "-c", f'cp -r "{src}" "{dst}" && sync'],
        "md5sum largest shard": ["md5sum", str(largest)],
        "llama-convert (verified)": [sys.executable, "-m", "llama_convert", str(src), str(dst), "--quiet"],
        "llama-convert --no-verify": [
            sys.executable,
            "-m",
            "llama_convert",
            str(src),
            str(dst),
            "--quiet",
            "--no-verify",
        ],
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    results = {}
    cold = True
    for label, argv in rows.items():
        bench.remove(dst)
        cold = bench.drop_page_cache() and cold
        m = bench.run_measured(argv, log=args.workdir / "run.log", env=env)
        if m.exit_code != 0:
            print((args.workdir / "run.log").read_text()[-2000:])
            raise SystemExit(f"{label} failed")
        results[label] = {
            "wall_s": round(m.wall_s, 1),
            "cpu_s": round(m.cpu_s, 1),
            "max_rss_mib": m.max_rss_bytes >> 20,
        }
        print(f"{label}: {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, peak RSS {m.max_rss_bytes >> 20} MiB")
    bench.remove(dst)
    limit = max(results["cp -r && sync"]["wall_s"], results["md5sum largest shard"]["wall_s"])
    lines = [
        f"Scout-shaped Llama 4, release tensor sizes, {args.layers} of 48 layers (2 of 34 vision layers), MP{MP}, "
        f"bf16, {size / 1e9:.2f} GB; {'cold' if cold else 'warm'} page cache; one run each.",
        "",
        "| run | wall | × limit | CPU | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['wall_s']} s | {r['wall_s'] / limit:.2f} | {r['cpu_s']} s | {r['max_rss_mib']} MiB |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_llama4.md").write_text(table + "\n")
        (args.out / "bench_llama4.json").write_text(json.dumps({"bytes": size, "cold": cold, **results}, indent=2))
    if not args.keep:
        shutil.rmtree(src, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
