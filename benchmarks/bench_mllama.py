"""Benchmark the Llama 3.2 Vision conversion on an 11B-shaped checkpoint at realistic per-tensor sizes.

The checkpoint has the 11B release's shapes everywhere — text width 4096 with 32 heads / 8 KV heads, the
128256-row embedding and output, the full vision encoder (32 + 8 layers of width 1280, tiles of 560 px)
and the projector — but only ``--layers`` self-attention layers and ``--cross`` cross-attention layers
(the release has 32 and 8). Tensor names and shapes come from Meta's reference model built on the meta
device (no memory), the model-parallel split from fairscale's layer types (``tests/mllama_fixture.py``);
the weights are random bfloat16 bit patterns written with llama-convert's torch-free writer.

Rows, each a separate process with a cold page cache when run as root (see ``bench.py``):
``cp -r SRC DST && sync`` (the disk limit), ``llama-convert`` (verification on) and ``--no-verify``.

    python benchmarks/bench_mllama.py --workdir /big/scratch [--layers 4] [--cross 1] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import mllama_fixture as fx  # noqa: E402
from bench import drop_page_cache, run_measured, tree_bytes  # noqa: E402

from llama_convert.dtypes import dtype_by_name  # noqa: E402
from llama_convert.formats.meta.torch_zip_writer import TorchZipWriter  # noqa: E402
from llama_convert.formats.meta.writer import write_checklist  # noqa: E402

BF16 = dtype_by_name("bfloat16")
CHUNK = 16 << 20  # elements per generated block


def meta_layout(shape: fx.VisionShape) -> list[tuple[str, tuple[int, ...], int | None]]:
    """(name, full shape, model-parallel axis) of every tensor of Meta's model, in its state-dict order."""
    import torch
    from llama_models.llama3.args import ModelArgs

    meta = fx._meta_multimodal()
    args = ModelArgs(**shape.params(), max_seq_len=64, max_batch_size=1)
    original = meta.CrossAttentionTransformerVision
    meta.CrossAttentionTransformerVision = fx._vision_class(meta, shape.vision_width)
    torch.set_default_device("meta")  # names and shapes only: nothing is allocated
    try:
        model = meta.CrossAttentionTransformer(args)
    finally:
        torch.set_default_device("cpu")
        meta.CrossAttentionTransformerVision = original
    axes = fx._split_axes(model)
    return [(name, tuple(p.shape), axes[name]) for name, p in model.named_parameters()]


def synthesize(shape: fx.VisionShape, dst: Path, seed: int = 0) -> Path:
    """Write the checkpoint: one shard per rank, params.json, Meta's tokenizer.model, checklist.chk."""
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Random bit patterns in a tame range (|x| in [2^-7, 1), random sign), reused block by block.
    pool = rng.integers(0x3C00, 0x3F80, size=CHUNK, dtype=np.uint16) | (rng.integers(0, 2, CHUNK, np.uint16) << 15)
    layout = meta_layout(shape)
    for rank in range(shape.mp):
        with TorchZipWriter(dst / f"consolidated.{rank:02d}.pth") as writer:
            for name, full, axis in layout:
                local = list(full)
                if axis is not None:
                    local[axis] //= shape.mp
                n = int(np.prod(local))
                chunks = (pool[: min(CHUNK, n - s)] for s in range(0, n, CHUNK))
                key = writer.add_storage(BF16, n, chunks)
                writer.add_view(name, key, tuple(local))
    (dst / "params.json").write_text(json.dumps(shape.params(), indent=4))
    shutil.copyfile(fx.default_tokenizer(), dst / "tokenizer.model")
    write_checklist(dst)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--cross", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the synthesized checkpoint")
    parser.add_argument("--out", type=Path, help="save the raw numbers as JSON here")
    args = parser.parse_args()
    fx.init_model_parallel(Path(tempfile.mkdtemp()) / "rendezvous")
    shape = fx.VisionShape(
        f"11B-Vision-{args.layers}+{args.cross}layers",
        mp=1,
        dim=4096,
        n_heads=32,
        n_kv_heads=8,
        n_layers=args.layers,
        n_cross=args.cross,
        vision_width=1280,
        chunk=560,
        multiple_of=1024,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / "Llama3.2-11B-Vision-Instruct"
    start = time.perf_counter()
    if not (src / "checklist.chk").exists():
        synthesize(shape, src)
    os.sync()
    synth_s = time.perf_counter() - start
    size = tree_bytes(src)
    rows = {
        "cp": lambda d: ["sh", "-c", 'cp -r "$0" "$1" && sync', str(src), str(d)],
        "ours": lambda d: [sys.executable, "-m", "llama_convert", "convert", str(src), str(d), "--json"],
        "ours-noverify": lambda d: [
            *[sys.executable, "-m", "llama_convert", "convert", str(src), str(d)],
            *["--json", "--no-verify"],
        ],
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in rows}
    cold = os.geteuid() == 0
    for _ in range(args.repeat):
        for key, argv in rows.items():
            dst = args.workdir / f"out-{key}"
            shutil.rmtree(dst, ignore_errors=True)
            if cold:
                drop_page_cache()
            m = run_measured(argv(dst), log=args.workdir / f"log-{key}.txt")
            if m.exit_code:
                log = (args.workdir / f"log-{key}.txt").read_text()[-2000:]
                raise SystemExit(f"{key} failed (exit {m.exit_code}): {log}")
            results[key].append({"wall_s": m.wall_s, "cpu_s": m.cpu_s, "max_rss_mib": m.max_rss_bytes / 2**20})
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
    if not args.keep:
        shutil.rmtree(src, ignore_errors=True)
    cp = statistics.median(r["wall_s"] for r in results["cp"])
    print(f"{shape.name}: {size / 1e9:.2f} GB in Meta's layout (synthesized in {synth_s:.0f} s); "
          f"{'cold' if cold else 'warm'} page cache, median of {args.repeat}")  # fmt: skip
    print()
    print("| row | wall s | × cp | CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for key, runs in results.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        rss = max(r["max_rss_mib"] for r in runs)
        print(f"| {key} | {wall:.1f} | {wall / cp:.2f} | {cpu:.1f} | {rss:.0f} |")
    if args.out:
        report = {"shape": shape.name, "bytes": size, "cold": cold, "runs": results}
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
