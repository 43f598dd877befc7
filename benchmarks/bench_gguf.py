"""Meta → GGUF: llama-convert's direct route vs the two-step path (llama-convert to Hugging Face, then
llama.cpp's ``convert_hf_to_gguf.py``), cold page cache, full-size checkpoint with random weights.

    python benchmarks/bench_gguf.py --converter /path/to/llama.cpp/convert_hf_to_gguf.py \\
        --python /path/to/lcp-venv/bin/python --workdir /scratch [--model 8b] [--outtype bf16] [--runs 1]

The page cache is dropped before the direct run and before the first step of the two-step path (not
between its steps: a user running both steps back to back gets whatever the cache still holds, which
favours the two-step path). Measurement as ``bench.py`` does it (``/usr/bin/time -v``: wall time, peak
RSS). Needs about 3× the model size of scratch space; outputs are deleted after each run. Prints a
Markdown table and writes it to ``benchmarks/results/bench-gguf-<model>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the measurement helpers of the main benchmark)


def _ours(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", "import sys, llama_convert.cli as c; sys.exit(c.main(sys.argv[1:]))", *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--converter", type=Path, required=True)
    parser.add_argument("--python", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default="8b")
    parser.add_argument("--outtype", default="bf16", choices=["bf16", "f16", "q8_0"])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    case = bench.model_case(args.model)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    src, _ = bench.synthesize_case(case, work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(HERE.parent)}
    rows: dict[str, list[bench.Measurement]] = {"direct": [], "step 1 (ours → HF)": [], "step 2 (llama.cpp)": []}
    for run in range(args.runs):
        gguf, hf, gguf2 = work / "direct.gguf", work / "hf", work / "two-step.gguf"
        for path in (gguf, gguf2):
            path.unlink(missing_ok=True)
        shutil.rmtree(hf, ignore_errors=True)
        bench.drop_page_cache()
        m = bench.run_measured(
            _ours(["convert", str(src), str(gguf), "--to", "gguf", "--outtype", args.outtype, "-q"]),
            log=work / f"direct-{run}.log",
            env=env,
        )
        rows["direct"].append(m)
        print("direct", m.wall_s, m.max_rss_bytes >> 20, "MiB, exit", m.exit_code, flush=True)
        gguf.unlink(missing_ok=True)
        bench.drop_page_cache()
        m = bench.run_measured(_ours(["convert", str(src), str(hf), "-q"]), log=work / f"hf-{run}.log", env=env)
        rows["step 1 (ours → HF)"].append(m)
        print("step 1", m.wall_s, m.max_rss_bytes >> 20, "MiB, exit", m.exit_code, flush=True)
        argv_lcp = [str(args.python), str(args.converter), str(hf), "--outtype", args.outtype, "--outfile", str(gguf2)]
        m = bench.run_measured(argv_lcp, log=work / f"llamacpp-{run}.log", env=env)
        rows["step 2 (llama.cpp)"].append(m)
        print("step 2", m.wall_s, m.max_rss_bytes >> 20, "MiB, exit", m.exit_code, flush=True)
        gguf2.unlink(missing_ok=True)
        shutil.rmtree(hf, ignore_errors=True)

    def med(ms: list[bench.Measurement], attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in ms)

    direct = med(rows["direct"], "wall_s")
    two = med(rows["step 1 (ours → HF)"], "wall_s") + med(rows["step 2 (llama.cpp)"], "wall_s")
    lines = [
        f"# Meta → GGUF {args.outtype}: direct vs two-step ({args.model}, {args.runs} run(s), cold cache)",
        "",
        "| path | wall s | peak RSS MiB | exit |",
        "|---|---:|---:|---:|",
    ]
    for name, ms in rows.items():
        exits = ",".join(str(m.exit_code) for m in ms)
        lines.append(f"| {name} | {med(ms, 'wall_s'):.1f} | {med(ms, 'max_rss_bytes') / 2**20:.0f} | {exits} |")
    lines += [f"| two-step total | {two:.1f} | | |", "", f"Direct is {two / direct:.2f}× faster than two-step."]
    report = "\n".join(lines) + "\n"
    print(report)
    out = args.out or HERE / "results" / f"bench-gguf-{args.model}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    raw = {k: [m.__dict__ for m in v] for k, v in rows.items()}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
