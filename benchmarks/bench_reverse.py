"""Benchmark the way back (Hugging Face → Meta) and resharding against ``cp`` of the same bytes.

For each model shape: synthesize the full-size Meta checkpoint (random weights), convert it to a
Hugging Face folder with llama-convert, delete the Meta folder (disk), then, with a cold page cache
before every run:

- ``cp -r HF DST && sync``                      the disk limit for these bytes
- ``llama-convert HF DST --to meta --mp N``     ours: Meta shards + params.json + tokenizer.model +
                                                checklist.chk (md5 computed while writing), fsync'd
- ``md5sum LARGEST_OUTPUT_SHARD``               the hashing limit: checklist.chk needs the MD5 of every
                                                output byte, one core per file

and report wall time, CPU time, peak RSS and the ratio to the limit, the slower of ``cp`` and ``md5sum``
(goal ≤ 1.15 × limit, ≤ 1 GiB RSS), as bench.py does for the forward direction.
Uses the measurement helpers of ``bench.py`` (run as root for cold caches).

    python benchmarks/bench_reverse.py --models 8b --mp 1 --repeats 3 --work /big/disk
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import os
import re

from bench import GIB, MIB, RSS_TARGET, WALL_TARGET, ModelCase, drop_page_cache, run_measured, synth_spec
from bench import model_case as bench_model_case


def model_case(key: str) -> ModelCase:
    """bench.py's shapes, plus ``8b-<N>layers``: the 8B width (embeddings, layers) with fewer layers."""
    if m := re.fullmatch(r"8b-(\d+)layers", key):
        n = int(m[1])
        return ModelCase(key, "llama3.1-8b", f"Llama3.1-8B-{n}layers", "3.1", n_layers=n)
    return bench_model_case(key)


def _rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=False)


def prepare(key: str, work: Path) -> Path:
    """An HF folder converted from a synthesized full-size Meta checkpoint (kept between runs)."""
    from llama_convert import convert
    from llama_convert.testing.synth import synthesize

    case = model_case(key)
    hf = work / f"{case.folder}-hf"
    if (hf / "config.json").exists():
        return hf
    meta = work / case.folder
    _rm(meta)
    t = time.perf_counter()
    synthesize(meta, synth_spec(case))
    print(f"synthesized {meta} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    convert(meta, hf, force=True)
    _rm(meta)
    return hf


def bench(key: str, work: Path, *, mp: int, repeats: int) -> dict:
    hf = prepare(key, work)
    size = sum(p.stat().st_size for p in hf.iterdir())
    dst = work / f"{hf.name}-out"
    ours = f"llama-convert --to meta --mp {mp}"
    rows: dict[str, list] = {"cp -r && sync": [], "md5sum largest output": [], ours: []}
    cold = True
    for _ in range(repeats):
        for label, argv in (
            ("cp -r && sync", ["sh", "-c", f"cp -r '{hf}' '{dst}' && sync"]),
            (
                f"llama-convert --to meta --mp {mp}",
                [
                    sys.executable,
                    "-m",
                    "llama_convert",
                    "convert",
                    str(hf),
                    str(dst),
                    *("--to", "meta", "--mp", str(mp)),
                ],
            ),
        ):
            _rm(dst)
            cold = drop_page_cache() and cold
            m = run_measured(argv, log=work / "bench_reverse.log")
            if m.exit_code != 0:
                raise SystemExit(f"{label} failed; see {work / 'bench_reverse.log'}")
            rows[label].append(m)
            if label == ours:
                subprocess.run(["md5sum", "-c", "--quiet", "checklist.chk"], cwd=dst, check=True)
                largest = max(dst.glob("*.pth"), key=lambda f: f.stat().st_size)
                drop_page_cache()
                rows["md5sum largest output"].append(run_measured(["md5sum", str(largest)], log=work / "md5.log"))
    _rm(dst)
    cp = statistics.median(m.wall_s for m in rows["cp -r && sync"])
    limit = max(cp, statistics.median(m.wall_s for m in rows["md5sum largest output"]))
    table = []
    for label, ms in rows.items():
        wall = statistics.median(m.wall_s for m in ms)
        table.append(
            {
                "run": label,
                "wall_s": round(wall, 1),
                "cpu_s": round(statistics.median(m.cpu_s for m in ms), 1),
                "peak_rss_mib": round(max(m.max_rss_bytes for m in ms) / MIB),
                "x_cp": round(wall / cp, 2),
                "x_limit": round(wall / limit, 2),
                "all_wall_s": [round(m.wall_s, 1) for m in ms],
            }
        )
    load = os.getloadavg()[0]
    return {"model": key, "mp": mp, "bytes": size, "cold_cache": cold, "repeats": repeats, "rows": table, "load": load}


def render(result: dict) -> str:
    lines = [
        f"### {result['model']} HF → Meta MP{result['mp']} ({result['bytes'] / 1e9:.2f} GB, "
        f"{'cold' if result['cold_cache'] else 'WARM (not root)'} cache, median of {result['repeats']}, "
        f"load average {result.get('load', 0):.1f} on {os.cpu_count()} cores)",
        "",
        "| run | wall | CPU | peak RSS | × cp | × limit | runs |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['run']} | {r['wall_s']} s | {r['cpu_s']} s | {r['peak_rss_mib']} MiB | {r['x_cp']} | "
            f"{r['x_limit']} | {', '.join(map(str, r['all_wall_s']))} |"
        )
    ours = next(r for r in result["rows"] if r["run"].startswith("llama-convert"))
    lines.append("")
    lines.append(
        f"Goal ≤ {WALL_TARGET} × cp: {'met' if ours['x_cp'] <= WALL_TARGET else 'NOT met'}; "
        f"≤ {WALL_TARGET} × limit: {'met' if ours['x_limit'] <= WALL_TARGET else 'NOT met'}; "
        f"peak RSS ≤ {RSS_TARGET / GIB:.0f} GiB: {'met' if ours['peak_rss_mib'] * MIB <= RSS_TARGET else 'NOT met'}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["8b"], help="1b, 3b, 8b, 8b-<N>layers, 70b-mp8-<N>layers")
    parser.add_argument("--mp", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("bench-work"))
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [bench(key, args.work, mp=args.mp, repeats=args.repeats) for key in args.models]
    for result in results:
        print(render(result))
        print()
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
