"""Meta → Q4_K_M (or another llama-quantize type): llama-convert's direct route vs the two-step path
(llama.cpp's ``convert_hf_to_gguf.py --outtype bf16`` of our Hugging Face folder, then ``llama-quantize``
with 2 threads), on full-width Llama 3.1 8B layers with random weights.

    python benchmarks/quant_bench.py --quantize BUILD/bin/llama-quantize \\
        --converter .../convert_hf_to_gguf.py --python VENV/bin/python --workdir /scratch \\
        [--layers 2] [--outtype q4_k_m] [--runs 1]

The checkpoint is Llama 3.1 8B's shape (width 4096, ffn 14336, 32 heads, 8 KV heads, vocabulary 128256)
cut to ``--layers`` layers. The page cache is dropped before the direct run and before the two-step path's
first step (when permitted). The Hugging Face folder the two-step path starts from is made beforehand by
llama-convert and not timed (a user with an HF download has it). Each process is measured by ``bench.py``'s
``run_measured`` (wall, CPU, peak RSS). Also printed: the weights per CPU second of each, and whether the
two files are identical (they should be, byte for byte, naming keys aside). Writes
``benchmarks/results/quant-bench.md``. On a shared machine the numbers are indicative only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (measurement helpers)
import compat_quant  # noqa: E402  (comparison of two GGUF files)


def _ours(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", "import sys, llama_convert.cli as c; sys.exit(c.main(sys.argv[1:]))", *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", type=Path, help="llama-quantize (without it: the direct route only)")
    parser.add_argument("--converter", type=Path)
    parser.add_argument("--python", type=Path)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--outtype", default="q4_k_m")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quant-bench.md")
    args = parser.parse_args(argv)
    import llama_convert
    from llama_convert.testing.synth import PRESETS, synthesize

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    preset = PRESETS["llama3.1-8b"]
    spec = preset.with_(params={**preset.params, "n_layers": args.layers}, fill="fast")
    src = work / "Llama3.1-8B"
    if not (src / "params.json").exists():
        synthesize(src, spec)
    weights = sum(p.stat().st_size for p in src.glob("*.pth")) // 2
    two_step = args.quantize is not None and args.converter is not None and args.python is not None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(HERE.parent)}
    hf = work / "hf" / "Llama-3.1-8B"
    if two_step and not hf.exists():
        hf.parent.mkdir(parents=True, exist_ok=True)
        llama_convert.convert(src, hf)
    rows: dict[str, list[bench.Measurement]] = {"direct (ours)": []}
    if two_step:
        rows |= {"step 1: convert_hf_to_gguf bf16": [], "step 2: llama-quantize (2 threads)": []}
    same = "not compared"
    for _ in range(args.runs):
        direct, bf16, theirs = work / "direct.gguf", work / "bf16.gguf", work / "two-step.gguf"
        for p in (direct, bf16, theirs):
            p.unlink(missing_ok=True)
        bench.drop_page_cache()
        m = bench.run_measured(
            _ours(["convert", str(src), str(direct), "--outtype", args.outtype, "-q"]), log=work / "direct.log", env=env
        )
        rows["direct (ours)"].append(m)
        print("direct", f"{m.wall_s:.1f} s", m.max_rss_bytes >> 20, "MiB, exit", m.exit_code, flush=True)
        if two_step:
            bench.drop_page_cache()
            convert = [str(args.python), str(args.converter), str(hf), "--outtype", "bf16", "--outfile", str(bf16)]
            m = bench.run_measured(convert, log=work / "convert.log", env=env)
            rows["step 1: convert_hf_to_gguf bf16"].append(m)
            print("step 1", f"{m.wall_s:.1f} s", m.max_rss_bytes >> 20, "MiB, exit", m.exit_code, flush=True)
            quantize = [str(args.quantize), str(bf16), str(theirs), args.outtype.upper(), "2"]
            m = bench.run_measured(quantize, log=work / "quantize.log", env=env)
            rows["step 2: llama-quantize (2 threads)"].append(m)
            print("step 2", f"{m.wall_s:.1f} s", m.max_rss_bytes >> 20, "MiB, exit", m.exit_code, flush=True)
            diffs = compat_quant.compare(theirs, direct, naming_too=False)
            same = "identical (naming keys aside)" if not diffs else f"{len(diffs)} differences: {diffs[:3]}"
        for p in (direct, bf16, theirs):
            p.unlink(missing_ok=True)

    def med(ms: list[bench.Measurement], attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in ms)

    lines = [
        f"# Meta → GGUF {args.outtype.upper()}: direct vs two-step (Llama 3.1 8B shape, {args.layers} layers, "
        f"{weights / 1e9:.2f} B weights, {args.runs} run(s))",
        "",
        "Shared 2-core machine: indicative numbers. Cold cache when permitted "
        f"({'yes' if bench.drop_page_cache() else 'no: not permitted here'}).",
        "",
        "| path | wall s | CPU s | peak RSS MiB | M weights per CPU s | exit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ms in rows.items():
        cpu = med(ms, "cpu_s")
        lines.append(
            f"| {name} | {med(ms, 'wall_s'):.1f} | {cpu:.1f} | {med(ms, 'max_rss_bytes') / 2**20:.0f} | "
            f"{weights / max(cpu, 1e-9) / 1e6:.1f} | {','.join(str(m.exit_code) for m in ms)} |"
        )
    if two_step:
        direct_s = med(rows["direct (ours)"], "wall_s")
        total = sum(med(ms, "wall_s") for name, ms in rows.items() if name.startswith("step"))
        lines += [
            f"| two-step total | {total:.1f} | | | | |",
            "",
            f"Direct / two-step wall time: {direct_s / total:.2f}×; direct / llama-quantize alone: "
            f"{direct_s / med(rows['step 2: llama-quantize (2 threads)'], 'wall_s'):.2f}×. Files: {same}.",
        ]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
