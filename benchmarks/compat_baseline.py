"""Check that llama-convert writes the same tensors as transformers' own converter (4.47.1).

For each Llama 3.x shape that transformers' ``convert_llama_weights_to_hf.py`` supports, synthesize a
small checkpoint (real layout, names, model-parallel split and tokenizer; small width and depth),
convert it with transformers' script (in its own venv, as a subprocess: it needs torch) and with
llama-convert, load every tensor of both outputs with the ``safetensors`` library and compare names,
shapes, dtypes and bytes. All must be identical except one documented difference: MP16 checkpoints
(405B-MP16) repeat every KV head twice; transformers keeps 16 KV heads, llama-convert folds them back
to the 8 of the published model; there the script checks that ours are exactly the baseline's even heads.

Not part of the test suite: the baseline (torch + transformers 4.47.1) cannot be a test dependency.

    python benchmarks/compat_baseline.py --baseline-python /path/to/venv/bin/python [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors


@dataclass(frozen=True)
class Shape:
    key: str
    preset: str  # llama_convert.testing.synth.PRESETS name: real release shape and layout
    folder: str  # Meta's download folder name (llama-convert reads the release from it)
    llama_version: str  # transformers' --llama_version (it has no "3.3": 3.3 70B is 3.1 70B's architecture)


SHAPES = (
    Shape("3-8b", "llama3-8b", "Meta-Llama-3-8B", "3"),
    Shape("3-70b-mp8", "llama3-70b", "Meta-Llama-3-70B", "3"),
    Shape("3.1-8b", "llama3.1-8b", "Llama3.1-8B", "3.1"),
    Shape("3.1-70b-mp8", "llama3.1-70b", "Llama3.1-70B", "3.1"),
    Shape("3.1-405b-mp8", "llama3.1-405b-mp8", "Llama3.1-405B-MP8", "3.1"),
    Shape("3.1-405b-mp16", "llama3.1-405b-mp16", "Llama3.1-405B-MP16", "3.1"),
    Shape("3.2-1b", "llama3.2-1b", "Llama3.2-1B", "3.2"),
    Shape("3.2-3b", "llama3.2-3b", "Llama3.2-3B", "3.2"),
    Shape("3.3-70b-mp8", "llama3.3-70b", "Llama3.3-70B", "3.1"),
)
# Small width and depth; the vocabulary stays 128256 because the real tokenizer is used (transformers'
# converter takes the vocabulary size from it). 16 heads so that every shard of MP16 holds whole heads.
SMALL = {"dim": 256, "n_layers": 2, "n_heads": 16}


def synthesize_small(shape: Shape, dst: Path) -> tuple[Path, int]:
    from llama_convert.testing.synth import PRESETS, synthesize

    spec = PRESETS[shape.preset]
    spec = spec.with_(params={**spec.params, **SMALL}, seed=zlib.crc32(shape.key.encode()) & 0xFFFF)
    return synthesize(dst / shape.folder, spec), spec.mp


def run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed (exit {proc.returncode}):\n{tail}")


def load_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name → (safetensors dtype, shape, raw bytes) over every .safetensors file of ``folder``.

    ``safetensors.deserialize`` gives the raw bytes for every dtype (numpy itself has no bfloat16).
    """
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for name, t in safetensors.deserialize(path.read_bytes()):
            if name in tensors:
                raise AssertionError(f"{folder.name}: tensor {name} appears in two files")
            tensors[name] = (t["dtype"], tuple(t["shape"]), bytes(t["data"]))
    return tensors


def as_array(dtype: str, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    item = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32}[dtype]  # compare bit patterns
    return np.frombuffer(data, dtype=item).reshape(shape)


def compare(ours: Path, theirs: Path, shape: Shape) -> dict[str, Any]:
    a, b = load_tensors(ours), load_tensors(theirs)
    if set(a) != set(b):
        raise AssertionError(
            f"{shape.key}: tensor names differ; only ours: {sorted(set(a) - set(b))[:5]}, "
            f"only transformers': {sorted(set(b) - set(a))[:5]}"
        )
    identical, expected = 0, []
    for name in sorted(a):
        (dt_a, sh_a, data_a), (dt_b, sh_b, data_b) = a[name], b[name]
        if dt_a != dt_b:
            raise AssertionError(f"{shape.key}: {name} is {dt_a} in ours, {dt_b} in transformers'")
        if (sh_a, data_a) == (sh_b, data_b):
            identical += 1
            continue
        kv = name.endswith(("k_proj.weight", "v_proj.weight"))
        if shape.preset.endswith("mp16") and kv and sh_b[0] == 2 * sh_a[0] and sh_a[1:] == sh_b[1:]:
            # transformers keeps the 16 duplicated KV heads; ours must be its heads 0, 2, 4, ...
            head_dim = SMALL["dim"] // SMALL["n_heads"]
            heads_b = as_array(dt_b, sh_b, data_b).reshape(-1, 2, head_dim, sh_b[1])
            if not np.array_equal(heads_b[:, 0], heads_b[:, 1]):
                raise AssertionError(f"{shape.key}: {name}: transformers' KV head copies differ")
            if not np.array_equal(heads_b[:, 0].reshape(sh_a), as_array(dt_a, sh_a, data_a)):
                raise AssertionError(f"{shape.key}: {name}: our folded KV heads are not transformers' even heads")
            expected.append(name)
            continue
        why = f"shape {sh_a} vs {sh_b}" if sh_a != sh_b else "bytes differ"
        raise AssertionError(f"{shape.key}: {name} differs ({why})")
    return {"tensors": len(a), "identical": identical, "expected_differences": expected}


def config_differences(ours: Path, theirs: Path) -> dict[str, Any]:
    """Keys of config.json whose values differ: reported, not asserted (the baseline has known config bugs)."""
    a = json.loads((ours / "config.json").read_text())
    b = json.loads((theirs / "config.json").read_text())
    skip = {"transformers_version"}
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)}


def check_shape(shape: Shape, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    src, mp = synthesize_small(shape, work / "src")
    ours, theirs = work / "ours" / shape.folder, work / "theirs" / shape.folder
    ours.parent.mkdir(exist_ok=True)
    theirs.parent.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(work)}
    flags = ["--llama_version", shape.llama_version, "--num_shards", str(mp)]
    run(
        [
            args.baseline_python,
            "-m",
            "transformers.models.llama.convert_llama_weights_to_hf",
            "--input_dir",
            str(src),
            "--output_dir",
            str(theirs),
            *flags,
        ],
        work / f"{shape.key}-transformers.log",
        env,
    )
    run([args.python, "-m", "llama_convert", "convert", str(src), str(ours), "--quiet"], work / f"{shape.key}-ours.log")
    result = compare(ours, theirs, shape)
    result.update(
        shape=shape.key, mp=mp, baseline_flags=" ".join(flags), config_differences=config_differences(ours, theirs)
    )
    for path in (src, ours, theirs):
        shutil.rmtree(path, ignore_errors=True)
    return result


def markdown(results: list[dict[str, Any]], version: str) -> str:
    lines = [
        f"# Tensor compatibility with transformers {version}'s convert_llama_weights_to_hf.py",
        "",
        f"Small synthesized base checkpoints ({', '.join(f'{k} {v}' for k, v in SMALL.items())}, "
        "vocab 128256, real tokenizer); every tensor of both outputs read with `safetensors` and compared "
        "by name, shape, dtype and bytes.",
        "",
        "| shape | MP | transformers flags | tensors | identical | expected differences | result |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | – | – | – | – | – | FAILED: {r['error'].splitlines()[0]} |")
            continue
        exp = r["expected_differences"]
        exp_text = f"{len(exp)} KV projections: 16 heads kept vs folded to 8 (ours = its even heads)" if exp else "–"
        verdict = "identical apart from the expected difference" if exp else "identical"
        lines.append(
            f"| {r['shape']} | {r['mp']} | `{r['baseline_flags']}` | {r['tensors']} | {r['identical']} | {exp_text} "
            f"| {verdict} |"
        )
    diffs = any(r.get("config_differences") for r in results)
    if diffs:
        lines += ["", "config.json keys that differ in at least one shape (ours, transformers'; not asserted):", ""]
        for r in results:
            if r.get("config_differences"):
                shown = ", ".join(f"`{k}`: {v[0]!r} vs {v[1]!r}" for k, v in r["config_differences"].items())
                lines.append(f"- {r['shape']}: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-python", required=True, help="python of a venv with torch + transformers 4.47.1")
    parser.add_argument("--python", default=sys.executable, help="python that has llama_convert installed")
    parser.add_argument("--shapes", help="comma-separated subset of: " + ", ".join(s.key for s in SHAPES))
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also save compat.md and compat.json here")
    args = parser.parse_args(argv)
    wanted = set(args.shapes.split(",")) if args.shapes else None
    shapes = [s for s in SHAPES if wanted is None or s.key in wanted]
    version = subprocess.run(
        [args.baseline_python, "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for shape in shapes:
            try:
                result = check_shape(shape, Path(tmp), args)
            except (AssertionError, RuntimeError) as exc:
                result = {"shape": shape.key, "error": str(exc).replace(tmp, "TMP")}
            results.append(result)
            status = "FAILED" if "error" in result else f"{result['identical']}/{result['tensors']} identical"
            print(f"{shape.key:14s} {status}", file=sys.stderr)
    text = markdown(results, version)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compat.md").write_text(text)
        (args.out / "compat.json").write_text(
            json.dumps({"transformers": version, "results": results}, indent=2) + "\n"
        )
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
