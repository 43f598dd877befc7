"""Llama 4 → GGUF at release tensor sizes: our direct Meta → GGUF against the two-step way (ours → Hugging Face,
then llama.cpp's ``convert_hf_to_gguf.py``, plain for the text model and ``--mmproj`` for the projector).

The checkpoint is ``bench_llama4.py``'s: Scout-shaped, every tensor at its published per-shard size (dim 5120,
16 experts of width 8192, vocabulary 202048, vision 1408 wide), MP8, bf16, random values, but only
``--layers`` layers (default 1) and 3 vision layers (the fewest llama.cpp's converter can name). Each step runs
as a child process measured with ``/usr/bin/time -v`` (wall, CPU, peak RSS), with a cold page cache when run
as root. Outputs are deleted after each row to bound the disk used (about 3 × the checkpoint at the peak).

    python benchmarks/bench_llama4_gguf.py --workdir DIR --converter $LLAMACPP/convert_hf_to_gguf.py \\
        --python /path/to/lcpp-venv/bin/python [--layers 1] [--outtype bf16] [--out benchmarks/results]

The machine the committed results ran on was shared with other jobs: the numbers are indicative.
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

import bench  # noqa: E402  (measurement helpers)
import bench_llama4  # noqa: E402  (the release-sized synthesizer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--converter", type=Path, required=True)
    parser.add_argument("--python", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--outtype", default="bf16")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the synthesized checkpoint")
    args = parser.parse_args()
    work = args.workdir.resolve()
    src = work / f"Llama-4-Scout-17B-16E-Instruct-{args.layers}layers"
    if not (src / "checklist.chk").exists():
        started = time.perf_counter()
        bench_llama4.synthesize(src, args.layers, vision_layers=3)
        print(f"synthesized {src.name}: {bench.tree_bytes(src) / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")
    size = bench.tree_bytes(src)
    ours_env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    theirs_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    direct, hf, two = work / "direct.gguf", work / "Llama-4-Scout-17B-16E-Instruct-hf", work / "two-step.gguf"
    llamacpp = [str(args.python), str(args.converter), str(hf), "--outtype", args.outtype, "--outfile"]
    ours = [sys.executable, "-m", "llama_convert"]
    rows = [
        ("direct", "llama-convert Meta → GGUF (text + mmproj)", [*ours, str(src), str(direct), "--quiet",
                                                                  "--outtype", args.outtype], ours_env),
        ("two-step", "llama-convert Meta → HF", [*ours, str(src), str(hf), "--quiet"], ours_env),
        ("two-step", "llama.cpp HF → GGUF (text)", [*llamacpp, str(two)], theirs_env),
        ("two-step", "llama.cpp HF → GGUF (--mmproj)", [*llamacpp, str(work / "mmproj-two-step.gguf"), "--mmproj"],
         theirs_env),
    ]  # fmt: skip
    results, cold = [], True
    for group, label, argv, env in rows:
        cold = bench.drop_page_cache() and cold
        m = bench.run_measured(argv, log=work / "run.log", env=env)
        if m.exit_code != 0:
            print((work / "run.log").read_text()[-3000:])
            raise SystemExit(f"{label} failed")
        results.append(
            {"group": group, "step": label, "wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1),
             "max_rss_mib": m.max_rss_bytes >> 20}
        )  # fmt: skip
        print(f"{label}: {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, peak RSS {m.max_rss_bytes >> 20} MiB", flush=True)
        if label.startswith("llama-convert Meta → GGUF"):
            for p in (direct, direct.with_name("mmproj-" + direct.name)):
                p.unlink()
        if label.endswith("(text)"):
            two.unlink()
    for p in (hf, work / "mmproj-two-step.gguf"):
        bench.remove(p)
    total = {g: sum(r["wall_s"] for r in results if r["group"] == g) for g in ("direct", "two-step")}
    cpu = {g: sum(r["cpu_s"] for r in results if r["group"] == g) for g in ("direct", "two-step")}
    lines = [
        f"Llama 4 Scout-shaped, release tensor sizes, {args.layers} of 48 layers (3 of 34 vision layers), MP8, bf16, "
        f"{size / 1e9:.2f} GB → GGUF {args.outtype}; {'cold' if cold else 'warm'} page cache; one run each; "
        "shared machine (other jobs running): indicative.",
        "",
        "| way | step | wall | CPU | peak RSS |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['group']} | {r['step']} | {r['wall_s']} s | {r['cpu_s']} s | {r['max_rss_mib']} MiB |")
    lines += [
        "",
        f"Direct {total['direct']:.1f} s vs two-step {total['two-step']:.1f} s wall "
        f"({total['two-step'] / total['direct']:.2f}×); CPU {cpu['direct']:.1f} s vs {cpu['two-step']:.1f} s.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_llama4_gguf.md").write_text(table + "\n")
        (args.out / "bench_llama4_gguf.json").write_text(json.dumps({"bytes": size, "cold": cold, "rows": results}))
    if not args.keep:
        shutil.rmtree(src, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
