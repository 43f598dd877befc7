"""Benchmark Llama 4 Hugging Face → Meta at release tensor sizes against ``cp`` of the same bytes.

Synthesizes the Scout-shaped checkpoint of ``bench_llama4.py`` (every tensor at its published per-shard size,
``--layers`` of 48 text layers, 2 vision layers, MP8, random bf16), converts it to a Hugging Face folder with
llama-convert (setup, not measured) and deletes it, then, each with a cold page cache when run as root:

- ``cp -r HF DST && sync``                        the disk limit: read everything once, write it once
- ``md5sum LARGEST_OUTPUT_SHARD``                 one core's MD5 of the largest shard written
- ``llama-convert HF DST --to meta --mp N``        ours: 2-D expert tensors cut out of the 3-D HF ones, fused
                                                  ``wqkv``, MD5 of every shard while writing, fsync'd

Peak RSS from ``/usr/bin/time -v`` (``bench.run_measured``). Indicative: the machine is shared.

    python benchmarks/bench_llama4_reverse.py --workdir DIR [--layers 1] [--mp 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  (shared measurement helpers)
from bench_llama4 import synthesize  # noqa: E402

from llama_convert import convert  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--mp", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the Hugging Face folder")
    args = parser.parse_args()
    hf = args.workdir / f"Llama-4-Scout-17B-16E-Instruct-{args.layers}layers-hf"
    if not (hf / "config.json").exists():
        meta = args.workdir / f"Llama-4-Scout-17B-16E-Instruct-{args.layers}layers"
        started = time.perf_counter()
        synthesize(meta, args.layers)
        convert(meta, hf, force=True)
        shutil.rmtree(meta, ignore_errors=True)
        print(f"prepared {hf.name}: {bench.tree_bytes(hf) / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")
    size = bench.tree_bytes(hf)
    dst = args.workdir / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    ours = [sys.executable, "-m", "llama_convert", "convert", str(hf), str(dst), "--to", "meta"]
    rows = {
        "cp -r && sync": ["sh", "-c", f'cp -r "{hf}" "{dst}" && sync'],
        f"llama-convert --to meta --mp {args.mp}": [*ours, "--mp", str(args.mp), "--quiet"],
    }
    results = {}
    cold = True
    largest: Path | None = None
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
        if label.startswith("llama-convert"):
            largest = max(dst.glob("consolidated.*.pth"), key=lambda p: p.stat().st_size)
            keep = args.workdir / "largest.pth"
            shutil.move(largest, keep)
            bench.drop_page_cache()
            m = bench.run_measured(["md5sum", str(keep)], log=args.workdir / "run.log", env=env)
            results["md5sum largest output shard"] = {
                "wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1), "max_rss_mib": m.max_rss_bytes >> 20,
            }  # fmt: skip
            keep.unlink()
    bench.remove(dst)
    cp = results["cp -r && sync"]["wall_s"]
    lines = [
        f"Scout-shaped Llama 4 HF → Meta MP{args.mp}, release tensor sizes, {args.layers} of 48 layers "
        f"(2 of 34 vision layers), bf16, {size / 1e9:.2f} GB; {'cold' if cold else 'warm'} page cache; one run each; "
        "shared 2-core machine (indicative).",
        "",
        "| run | wall | × cp | CPU | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['wall_s']} s | {r['wall_s'] / cp:.2f} | {r['cpu_s']} s | {r['max_rss_mib']} MiB |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_llama4_reverse.md").write_text(table + "\n")
        (args.out / "bench_llama4_reverse.json").write_text(json.dumps({"bytes": size, "cold": cold, **results}))
    if not args.keep:
        shutil.rmtree(hf, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
