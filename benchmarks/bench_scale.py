"""At scale, in one command: verified multi-shard conversions, resume after SIGKILL, small-model fixed costs.

For each model shape (full release widths, few layers) it synthesizes a Meta checkpoint, then runs with a
cold page cache:

- ``cp -r SRC DST && sync``            the disk limit
- ``md5sum`` of all shards, 2 at a time  the hashing limit (``xargs -P2``: both cores)
- Meta → HF, verified                 our default conversion
- Meta → GGUF bf16                    uninterrupted, then killed (SIGKILL) half way and rerun: the rerun's wall
- HF → Meta at the source's MP         the same, from the HF folder of the first conversion

The limit is the slower of the first two rows. "Half way" is when the staged output holds half of the
bytes the uninterrupted run wrote; the killed run's output is compared byte for byte with the uninterrupted
one. Prints a Markdown table and saves it with the raw numbers (``--out``). Run as root to drop the page cache.

    python benchmarks/bench_scale.py --workdir /big/disk/bench --models 1b,70b-mp8-2layers
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench  # the measurement machinery: cold cache, /usr/bin/time, idle wait, synthesis

MIB = 1 << 20
RESUME_TARGET = 0.75  # × an uninterrupted run


def _ours(args: argparse.Namespace, *extra: str) -> list[str]:
    return [args.python, "-m", "llama_convert", "convert", *extra]


def _measure(argv: list[str], workdir: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    bench.drop_page_cache()
    if args.idle_wait > 0:
        bench.wait_for_idle(args.idle_wait)
    m = bench.run_measured(argv, log=workdir / f"log-{name}.txt")
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "rss_mib": m.max_rss_bytes / MIB, "exit": m.exit_code}


def _staged_bytes(dst: Path) -> int:
    """Bytes a conversion to ``dst`` has staged so far (its partial folder or temporary file beside ``dst``)."""
    total = 0
    for path in dst.parent.glob(f".{dst.name}*"):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files if p.exists())
    return total


def _kill_half_way(argv: list[str], dst: Path, expected: int) -> float:
    """Run ``argv`` until it has staged half of ``expected`` bytes, SIGKILL it; return when it was killed."""
    bench.drop_page_cache()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and _staged_bytes(dst) < expected // 2:
        time.sleep(0.05)
    if proc.poll() is not None:
        raise SystemExit(f"{' '.join(argv)} finished before half of its output was staged; use a larger model")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic() - start


def _same_tree(a: Path, b: Path) -> bool:
    if a.is_file():
        return filecmp.cmp(a, b, shallow=False)
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def _resume_pair(argv_of, name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Uninterrupted run, then a run killed half way and its rerun; the rerun's output must be identical."""
    full, killed = workdir / f"out-{name}-full", workdir / f"out-{name}-killed"
    for p in (full, killed):
        bench.remove(p)
    row: dict[str, Any] = {"uninterrupted": _measure(argv_of(full), workdir, f"{name}-full", args)}
    expected = bench.tree_bytes(full)
    row["killed_after_s"] = _kill_half_way(argv_of(killed), killed, expected)
    row["rerun"] = _measure(argv_of(killed), workdir, f"{name}-rerun", args)
    row["identical"] = _same_tree(full, killed)
    row["rerun_ratio"] = row["rerun"]["wall_s"] / row["uninterrupted"]["wall_s"]
    for p in (full, killed):
        bench.remove(p)
    return row


def bench_case(case: bench.ModelCase, args: argparse.Namespace) -> dict[str, Any]:
    src, _ = bench.synthesize_case(case, args.workdir)
    shards = sorted(str(p) for p in src.glob("consolidated.*.pth"))
    mp = len(shards)
    w = args.workdir
    out: dict[str, Any] = {"model": case.key, "source_gb": bench.tree_bytes(src) / 1e9, "mp": mp, "rows": {}}
    rows = out["rows"]
    bench.remove(w / "out-cp")
    rows["cp"] = _measure(["sh", "-c", 'cp -r "$0" "$1" && sync', str(src), str(w / "out-cp")], w, "cp", args)
    bench.remove(w / "out-cp")
    rows["md5"] = _measure(["sh", "-c", 'printf "%s\\n" "$@" | xargs -P2 -n1 md5sum', "md5", *shards], w, "md5", args)
    hf = w / "out-hf"
    bench.remove(hf)
    rows["hf"] = _measure(_ours(args, str(src), str(hf)), w, "hf", args)
    rows["gguf"] = _resume_pair(lambda d: _ours(args, str(src), str(d), "--to", "gguf"), "gguf", w, args)
    to_meta = ("--to", "meta", "--mp", str(mp))
    rows["meta"] = _resume_pair(lambda d: _ours(args, str(hf), str(d), *to_meta), "meta", w, args)
    bench.remove(hf)
    if not args.keep:
        bench.remove(src)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# llama-convert at scale: {report['started']}", "", report["environment"], ""]
    lines += [
        "| model | GB | `cp && sync` s | md5 all shards ×2 s | limit s | → HF verified s | × limit | RSS MiB "
        "| → GGUF s | rerun after kill s | × | → Meta s | rerun after kill s | × | reruns identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in report["models"]:
        r = m["rows"]
        limit = max(r["cp"]["wall_s"], r["md5"]["wall_s"])
        g, t = r["gguf"], r["meta"]
        same = "yes" if g["identical"] and t["identical"] else "NO"
        lines.append(
            f"| {m['model']} (MP{m['mp']}) | {m['source_gb']:.1f} | {r['cp']['wall_s']:.1f} | {r['md5']['wall_s']:.1f} "
            f"| {limit:.1f} | {r['hf']['wall_s']:.1f} | {r['hf']['wall_s'] / limit:.2f} | {r['hf']['rss_mib']:.0f} "
            f"| {g['uninterrupted']['wall_s']:.1f} | {g['rerun']['wall_s']:.1f} | {g['rerun_ratio']:.2f} "
            f"| {t['uninterrupted']['wall_s']:.1f} | {t['rerun']['wall_s']:.1f} | {t['rerun_ratio']:.2f} | {same} |"
        )
    lines += [
        "",
        f"Targets: → HF verified ≤ {bench.WALL_TARGET} × limit; RSS ≤ 1024 MiB; rerun after a kill half way "
        f"≤ {RESUME_TARGET} × an uninterrupted run, byte-identical.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="1b,70b-mp8-2layers", help="comma-separated: 1b, 8b, 70b-mp8-<N>layers")
    parser.add_argument("--workdir", type=Path, required=True, help="where checkpoints and outputs go (needs disk)")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the synthesized checkpoints")
    parser.add_argument("--idle-wait", type=float, default=120, help="wait up to this many s for other load to stop")
    parser.add_argument("--python", default=sys.executable, help="python that has llama_convert installed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for .md and .json")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.absolute()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cold = bench.drop_page_cache()
    report: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": f"{os.cpu_count()} CPUs; page cache {'dropped before every run' if cold else 'NOT dropped'}",
        "models": [],
    }
    name = "bench-scale-" + args.models.replace(",", "-")
    args.out.mkdir(parents=True, exist_ok=True)
    for key in args.models.split(","):
        report["models"].append(bench_case(bench.model_case(key.strip()), args))
        (args.out / f"{name}.json").write_text(json.dumps(bench.scrub(report, args.workdir), indent=2) + "\n")
    text = markdown(report)
    print(text)
    (args.out / f"{name}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
