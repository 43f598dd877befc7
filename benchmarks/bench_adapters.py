"""What merging a LoRA adapter costs: a full-size model shape converted with and without ``--adapter``.

Synthesizes a Meta checkpoint of the shape (random weights, real layout) and a rank-``r`` adapter on every
Linear of every layer (random A and B, PEFT's key names and config), then runs ``llama-convert`` as a whole
process for each route, without and with the adapter, and reports wall time and peak RSS (page cache warm:
the comparison is the merge's CPU cost, not the disk's). ``python benchmarks/bench_adapters.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llama_convert.testing.synth import PRESETS, synthesize


def write_adapter(folder: Path, meta: Path, rank: int) -> Path:
    """A PEFT-layout LoRA adapter on every attention and MLP Linear of the checkpoint's layers."""
    from safetensors.numpy import save_file

    from llama_convert.formats.meta.torch_zip import TorchCheckpoint

    with TorchCheckpoint(meta / "consolidated.00.pth") as ckpt:
        shapes = {name: ref.shape for name, ref in ckpt.tensors.items()}
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj"}
    names |= {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj"}
    names |= {"feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj"}
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        if parts[0] != "layers" or ".".join(parts[2:4]) not in names:
            continue
        module = f"base_model.model.model.layers.{parts[1]}.{names['.'.join(parts[2:4])]}"
        out, inp = shape  # MP1: the shard is the whole tensor
        tensors[f"{module}.lora_A.weight"] = rng.standard_normal((rank, inp), dtype=np.float32) * 0.01
        tensors[f"{module}.lora_B.weight"] = rng.standard_normal((out, rank), dtype=np.float32) * 0.01
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "bias": "none",
        "target_modules": sorted(names.values()),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def run(args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MiB) of one llama-convert process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llama_convert", "convert", *args, "-q"])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"llama-convert {' '.join(args)} failed ({proc.returncode})")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="llama3.2-1b")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=opts.work))
    try:
        spec = PRESETS[opts.preset].with_(fill="fast", mp=1)
        meta = synthesize(work / "Llama3.2-1B", spec)
        adapter = write_adapter(work / "lora", meta, opts.rank)
        rows = []
        for route, dst in (("meta → hf", "hf"), ("meta → gguf", "out.gguf"), ("meta → meta", "meta")):
            extra = ["--to", "meta"] if dst == "meta" else []
            plain = run([str(meta), str(work / f"plain-{dst}"), *extra, *(["--mp", "1"] if extra else [])])
            shutil.rmtree(work / f"plain-{dst}", ignore_errors=True)
            (work / f"plain-{dst}").unlink(missing_ok=True)
            merged = run([str(meta), str(work / f"lora-{dst}"), *extra, "--adapter", str(adapter)])
            rows.append((route, plain, merged))
            shutil.rmtree(work / f"lora-{dst}", ignore_errors=True)  # the disk holds two model sizes at most
            (work / f"lora-{dst}").unlink(missing_ok=True)
        size = sum(p.stat().st_size for p in meta.glob("consolidated.*.pth")) / 1e9
        print(f"{opts.preset} ({size:.2f} GB), adapter rank {opts.rank} on every Linear of every layer\n")
        print("| route | without adapter (wall, CPU, peak RSS) | with adapter | CPU ratio |")
        print("|---|---|---|---|")
        for route, (w0, c0, r0), (w1, c1, r1) in rows:
            print(
                f"| {route} | {w0:.1f} s, {c0:.1f} CPU-s, {r0:.0f} MiB | {w1:.1f} s, {c1:.1f} CPU-s, {r1:.0f} MiB "
                f"| {c1 / c0:.2f}× |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
