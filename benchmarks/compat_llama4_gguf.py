"""Llama 4 → GGUF: ours (from Meta's shards and from our Hugging Face folder) vs llama.cpp's converter.

For two tiny fixed-seed checkpoints in Meta's shipped layout (``tests/llama4_fixtures.py``: Scout-like, every
layer MoE, MP1; Maverick-like, dense and MoE layers interleaved, MP2; both with a 3-layer vision tower, the
fewest llama.cpp's converter can name) and three output types (bf16, f16, q8_0) it:

1. converts the Meta checkpoint with ``llama_convert.convert`` to a Hugging Face folder;
2. runs llama.cpp's ``convert_hf_to_gguf.py`` on that folder, unchanged, in its own venv: once for the text
   model and once with ``--mmproj`` for the vision projector;
3. converts the Meta checkpoint straight to GGUF (``<stem>.gguf`` + ``mmproj-<stem>.gguf``) and the Hugging
   Face folder likewise;
4. compares every metadata key (type and value; naming keys only from the HF folder, whose name llama.cpp
   reads them from) and every tensor (name, type, shape, sha256 of its bytes).

``--capture FILE`` writes llama.cpp's side as JSON (tests/data/gguf_llama4_llamacpp.json): the test suite
regenerates the same checkpoints from the same seeds and compares against it without llama.cpp.

    python benchmarks/compat_llama4_gguf.py --converter $LLAMACPP/convert_hf_to_gguf.py \\
        --python /path/to/lcpp-venv/bin/python --workdir /scratch [--capture tests/data/gguf_llama4_llamacpp.json]

Set-up of llama.cpp's converter: COMPAT_LLAMACPP.md. Exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import compat_gguf  # noqa: E402  (read_gguf, compare, NAMING_KEYS)
import compat_llamacpp  # noqa: E402  (versions)

OUTTYPES = ("bf16", "f16", "q8_0")


def run_llamacpp(args: argparse.Namespace, hf: Path, out: Path, outtype: str, *, mmproj: bool) -> int:
    argv = [str(args.python), str(args.converter), str(hf), "--outfile", str(out), "--outtype", outtype]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    with (out.parent / (out.name + ".log")).open("w") as log:
        proc = subprocess.run([*argv, *(["--mmproj"] if mmproj else [])], stdout=log, stderr=subprocess.STDOUT,
                              env=env, check=False, timeout=3600)  # fmt: skip
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--converter", type=Path, required=True)
    parser.add_argument("--python", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cases", default="scout,maverick")
    parser.add_argument("--outtypes", default=",".join(OUTTYPES))
    parser.add_argument("--capture", type=Path, help="write llama.cpp's metadata/tensor table as JSON")
    parser.add_argument("--ours", action=argparse.BooleanOptionalAction, default=True, help="compare ours too")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compat_llama4_gguf.md")
    args = parser.parse_args(argv)
    args.converter, args.workdir = args.converter.resolve(), args.workdir.resolve()
    import gguf
    import llama4_fixtures as fx

    import llama_convert

    fx.init_model_parallel(args.workdir)
    fx.cpu_threads()
    captured: dict = {}
    failed = 0
    report = ["# Llama 4 → GGUF: ours vs llama.cpp's converter on our Hugging Face output", ""]
    for case in args.cases.split(","):
        work = args.workdir / case
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        src = fx.make_gguf_case(case, work)
        hf = work / "hf" / (fx.GGUF_CASES[case][3] + "-hf")
        hf.parent.mkdir()
        llama_convert.convert(src, hf)
        for outtype in args.outtypes.split(","):
            theirs = {}
            for part, mmproj in (("text", False), ("mmproj", True)):
                path = work / f"llamacpp-{part}.{outtype}.gguf"
                rc = run_llamacpp(args, hf, path, outtype, mmproj=mmproj)
                if rc != 0:
                    print(f"{case} {outtype} {part}: llama.cpp's converter exited {rc} (log: {path}.log)")
                    return 1
                theirs[part] = compat_gguf.read_gguf(path, gguf)
                captured.setdefault(case, {}).setdefault(outtype, {})[part] = {
                    "metadata": theirs[part][0],
                    "tensors": theirs[part][1],
                }
            if not args.ours:
                continue
            for label, source in (("Meta", src), ("HF", hf)):
                ours = work / f"ours-{label}.{outtype}.gguf"
                llama_convert.convert(source, ours, to="gguf", outtype=outtype)
                for part, path in (("text", ours), ("mmproj", ours.with_name("mmproj-" + ours.name))):
                    diffs, _ = compat_gguf.compare(
                        theirs[part], compat_gguf.read_gguf(path, gguf), naming_too=label == "HF"
                    )
                    failed += bool(diffs)
                    state = "same" if not diffs else f"{len(diffs)} differences"
                    line = f"- {case} {outtype} {label} → GGUF {part}: {state}"
                    report += [line, *(f"  - {d}" for d in diffs[:30])]
                    print(line, flush=True)
        shutil.rmtree(work, ignore_errors=True)
    info = compat_llamacpp.versions(args)
    report += ["", "Ran with: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "."]
    if args.ours:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report) + "\n")
    if args.capture:
        captured["_source"] = {k: str(v) for k, v in info.items() if k != "llama-convert"}
        args.capture.write_text(json.dumps(captured, indent=1, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
