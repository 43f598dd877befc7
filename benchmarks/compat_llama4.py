"""Check that llama-convert writes the same Llama 4 tensors as transformers' official Llama 4 converter.

The official converter (``src/transformers/models/llama4/convert_llama4_weights_to_hf.py``; it is in
neither the transformers wheel nor its sdist) hard-codes the release widths and 8 shards in its expert
reshapes (``reshape(num_experts, -1, 8, 1024)``, ``reshape(8, -1, 5120)``), the MoE/dense widths in its
config (8192 / 16384), the head width (the config default 128) and the vision widths (config defaults).
Converting a release-width checkpoint would need ~6 GB of RAM per layer group and tens of GB of disk,
so this script runs it on tiny checkpoints instead, with exactly those literals replaced by the
checkpoint's values (each replacement is listed in ``patches`` and must apply the expected number of
times; nothing else in the script changes). Its tokenizer/processor step is not run (it needs
torchvision) and its post-save reload and generation step is skipped: only the saved weights are compared.

The checkpoints are made with Meta's reference model (``tests/llama4_fixtures.py``): Scout-shaped and
Maverick-shaped, 8 shards (the converter's only layout), bf16, random weights. Both outputs are read
from their safetensors headers and compared name by name: shapes, dtypes and bytes must be identical.

Not part of the test suite (the baseline needs torch and transformers):

    python benchmarks/compat_llama4.py --baseline convert_llama4_weights_to_hf.py [--out benchmarks/results]

Fetch the baseline from huggingface/transformers at commit 59d00552a08506d5748b0951e8e84d252fb893bd
(SHA-256 964fccd59c18929484c031b3e0e7c80b6b9c14d78dfc04bf02d73754b2a8cde1;
the script prints the digest of the file it ran and saves it with the results).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import llama4_fixtures as fx  # noqa: E402

import llama_convert  # noqa: E402
from llama_convert.families.llama4.params import parse_llama4_params  # noqa: E402

MP = 8

# Tiny shapes the baseline can take at MP 8: heads, KV heads, widths and vocabulary divisible by 8.
_TINY = {"dim": 128, "n_heads": 8, "n_kv_heads": 8}
CASES = {
    "scout-mp8": {**fx.PARAMS["scout"], **_TINY, "n_layers": 4},
    "maverick-mp8": {**fx.PARAMS["maverick"], **_TINY, "n_layers": 4},
}


def patches(params: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(literal in the baseline, replacement, expected count): the release widths → this checkpoint's."""
    p = parse_llama4_params(params, Path("params.json"))
    v = p.vision
    assert v is not None
    f, fd, d = p.moe_hidden_dim, p.dense_hidden_dim, p.dim
    return [
        ("intermediate_size=8192,", f"intermediate_size={f},", 1),
        ("num_attention_heads=num_heads,\n", "num_attention_heads=num_heads, head_dim=dim // num_heads,\n", 1),
        ("intermediate_size_mlp=16384,", f"intermediate_size_mlp={fd},", 1),
        ("reshape(num_experts, -1, 8, 1024)", f"reshape(num_experts, -1, {MP}, {f // MP})", 2),
        ("reshape(num_experts, -1, 1024)", f"reshape(num_experts, -1, {f // MP})", 2),
        ("for k in range(8)", f"for k in range({MP})", 1),
        ("for i in range(8):", f"for i in range({MP}):", 1),
        ("reshape(8, -1, 5120)", f"reshape({MP}, -1, {d})", 1),
        ("view(num_experts, -1, 5120)", f"view(num_experts, -1, {d})", 1),
        (
            "vision_output_dim=vision_output_dim,\n",
            f"vision_output_dim=vision_output_dim, intermediate_size={v.mlp_dim}, "
            f"projector_input_dim={v.output_dim}, projector_output_dim={v.output_dim}, "
            f"patch_size={v.patch_size},\n",
            1,
        ),
    ]


def load_baseline(path: Path, params: dict[str, Any]) -> types.ModuleType:
    source = path.read_text(encoding="utf-8")
    for old, new, count in patches(params):
        found = source.count(old)
        if found != count:
            raise SystemExit(f"{path}: expected {count} × {old!r}, found {found}; is this the pinned baseline?")
        source = source.replace(old, new)
    module = types.ModuleType("convert_llama4_weights_to_hf_patched")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)  # the patched baseline, not our code
    return module


def run_baseline(path: Path, params: dict[str, Any], src: Path, dst: Path) -> float:
    module = load_baseline(path, params)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            module.write_model(
                model_path=str(dst), input_base_path=str(src), num_shards=MP, convert_checkpoints=True, instruct=False
            )
        except Exception as exc:  # its post-save reload/generation needs tokenizer files we did not write
            if not any(dst.glob("*.safetensors")):
                raise
            print(f"  baseline: weights saved; its reload step failed as expected ({type(exc).__name__})")
    return time.perf_counter() - started


def read_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every tensor of a folder's safetensors files: dtype, shape and raw bytes (read from the format's
    header and offsets, so bf16 needs no torch)."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, stop = info["data_offsets"]
                fh.seek(8 + n + start)
                out[name] = (info["dtype"], tuple(info["shape"]), fh.read(stop - start))
    return out


def compare(ours: Path, theirs: Path) -> dict[str, Any]:
    a, b = read_tensors(ours), read_tensors(theirs)
    only_ours, only_theirs = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    differ = [n for n in sorted(set(a) & set(b)) if a[n] != b[n]]
    return {
        "tensors": len(a),
        "identical": len(set(a) & set(b)) - len(differ),
        "only_ours": only_ours,
        "only_baseline": only_theirs,
        "differ": [{"name": n, "ours": [a[n][0], list(a[n][1])], "baseline": [b[n][0], list(b[n][1])]} for n in differ],
    }


def back_to_meta(official: Path, original: Path, dst: Path) -> dict[str, Any]:
    """The official converter's folder back to Meta's format (MP 8): every tensor Meta's loader uses against the
    original shards, and the params.json keys that differ (the official config's rope values for Scout are Llama
    3.1's, so params.json states them instead of relying on Meta's defaults)."""
    from llama_convert.families.llama4.layout import DROPPED
    from llama_convert.formats.meta.torch_zip import TorchCheckpoint

    llama_convert.convert(official, dst, to="meta", mp=MP, tokenizer=False)
    same = total = 0
    for rank in range(MP):
        name = f"consolidated.{rank:02d}.pth"
        with TorchCheckpoint(original / name) as a, TorchCheckpoint(dst / name) as b:
            used = [n for n in a.tensors if not DROPPED.match(n)]
            total += len(used)
            same += sum(
                1
                for n in used
                if n in b.tensors and a.tensors[n].shape == b.tensors[n].shape and (a.read(n) == b.read(n)).all()
            )
    theirs = json.loads((original / "params.json").read_text())
    ours = json.loads((dst / "params.json").read_text())
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    return {"tensors": total, "identical": same, "params_differ": {k: [theirs.get(k), ours.get(k)] for k in keys}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="convert_llama4_weights_to_hf.py (pinned)")
    parser.add_argument("--out", type=Path, default=None, help="folder for compat_llama4.json/.md")
    args = parser.parse_args()
    digest = hashlib.sha256(args.baseline.read_bytes()).hexdigest()
    print(f"baseline {args.baseline.name} sha256 {digest}")
    fx.init_model_parallel(Path(tempfile.mkdtemp(prefix="gloo-")))
    results = {}
    for key, params in CASES.items():
        work = Path(tempfile.mkdtemp(prefix=f"compat-llama4-{key}-"))
        try:
            model = fx.build_reference(params)
            fx.randomize(model, seed=7)
            src = fx.write_checkpoint(work / "Llama-4-tiny", params, fx.shipped_shards(model, params, MP))
            del model
            started = time.perf_counter()
            llama_convert.convert(src, work / "ours", tokenizer=False)
            ours_s = time.perf_counter() - started
            theirs_s = run_baseline(args.baseline, params, src, work / "baseline")
            result = compare(work / "ours", work / "baseline")
            result.update(ours_seconds=round(ours_s, 2), baseline_seconds=round(theirs_s, 2))
            result["back_to_meta"] = back_to_meta(work / "baseline", src, work / "back")
            results[key] = result
            ok = not (result["only_ours"] or result["only_baseline"] or result["differ"])
            print(
                f"{key}: {result['identical']}/{result['tensors']} tensors bit-identical"
                + (
                    ""
                    if ok
                    else f"; differ {len(result['differ'])}, only ours {len(result['only_ours'])}, "
                    f"only baseline {len(result['only_baseline'])}"
                )
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    table = [
        "| checkpoint | tensors | bit-identical | differ | only ours | only baseline | baseline's folder → Meta |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, r in results.items():
        back = r["back_to_meta"]
        differ = ", ".join(f"{k}: {a} → {b}" for k, (a, b) in back["params_differ"].items()) or "none"
        table.append(
            f"| {key} | {r['tensors']} | {r['identical']} | {len(r['differ'])} | {len(r['only_ours'])} | "
            f"{len(r['only_baseline'])} | {back['identical']}/{back['tensors']} tensors bit-identical to the "
            f"original shards; params.json differs in: {differ} |"
        )
    print("\n".join(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compat_llama4.json").write_text(json.dumps({"baseline_sha256": digest, **results}, indent=2))
        preface = (
            f"Tensors written by llama-convert vs transformers' convert_llama4_weights_to_hf.py (sha256 {digest}),\n"
            "its release-width literals replaced by the checkpoints' widths (see compat_llama4.py); tiny\n"
            "checkpoints made with Meta's reference model, 8 shards, bf16. Last column: the baseline's folder\n"
            "converted back with `--to meta --mp 8`, against the original checkpoint.\n\n"
        )
        (args.out / "compat_llama4.md").write_text(preface + "\n".join(table) + "\n")
    return 0 if all(not (r["only_ours"] or r["only_baseline"] or r["differ"]) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
