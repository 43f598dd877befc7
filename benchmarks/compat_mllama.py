"""Llama 3.2 Vision: llama-convert against transformers 4.47.1's ``convert_mllama_weights_to_hf.py``, and
image+text logits of the converted model (run by transformers 4.47.1) against Meta's reference model.

For an 11B-shaped (MP1) and a 90B-shaped (MP2) checkpoint made with Meta's reference model at a shrunk size
(``tests/mllama_fixture.py``), the script

1. converts it with transformers 4.47.1's converter (its own interpreter, as a subprocess) and with
   llama-convert, and compares every tensor of both outputs: names, shapes, dtypes and bytes;
2. runs the converted model in transformers 4.47.1 (fp32) on a prompt with an image and compares the logits
   with Meta's reference model given the same pixel tensor (transformers 5.x feeds the vision projector the
   outputs of layers 3, 7, 15, 23, 30 where Meta and 4.47.1 feed their inputs, so only 4.47.1 can match).

The 4.47.1 converter hard-codes the vision width (``vision_dim = 1280``) and leaves ``vision_output_dim`` at
its config default 7680 (= 6 × 1280); on the shrunk checkpoints exactly those two literals are replaced by
what they stand for (the width, and 6 × the width). It never passes ``num_key_value_heads``, so it assumes
8 KV heads: the checkpoints keep 8. It reads an MP1 checkpoint from ``consolidated.pth`` (the Hub's
``original/`` name), which the 11B-shaped checkpoint uses. Nothing else is changed.

    python benchmarks/compat_mllama.py --baseline-python PY --baseline-script convert_mllama_weights_to_hf.py \
        [--workdir DIR] [--out benchmarks/results]

``PY`` is an interpreter with torch and transformers 4.47.1 (+ accelerate, psutil, tiktoken); the script is
``transformers/models/mllama/convert_mllama_weights_to_hf.py`` from the transformers 4.47.1 wheel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import mllama_fixture as fx  # noqa: E402
from compat_baseline import load_tensors  # noqa: E402

PATCHES = (
    ("vision_dim = 1280", "vision_dim = {width}"),
    (
        "        hidden_size=vision_dim,\n",
        "        hidden_size=vision_dim,\n        vision_output_dim={output_dim},\n",
    ),
)
# The image comes first so that every text row attends to it: for rows before the first image Meta zeroes the
# cross-attention output while transformers lets them attend to every tile (an implementation difference).
PROMPT = "<|image|>If I had to write a haiku for this one, it would be:"

# Runs in the baseline interpreter: transformers 4.47.1's model on the converted folder, fp32.
LOGITS_SCRIPT = """
import sys, numpy as np, torch
from transformers import MllamaForConditionalGeneration
folder, inputs, out = sys.argv[1:4]
model = MllamaForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).eval()
data = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()}
with torch.inference_mode():
    logits = model(**data).logits
np.save(out, logits.float().numpy())
"""


def patched_baseline(script: Path, width: int, dst: Path) -> Path:
    text = script.read_text()
    for old, new in PATCHES:
        if text.count(old) != 1:
            raise SystemExit(f"{script}: expected exactly one {old.strip()!r}; is it transformers 4.47.1's converter?")
        text = text.replace(old, new.format(width=width, output_dim=6 * width))
    dst.write_text(text)
    return dst


def run(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:4])} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def compare_tensors(ours: Path, theirs: Path) -> dict[str, object]:
    a, b = load_tensors(ours), load_tensors(theirs)
    differing = sorted(n for n in set(a) & set(b) if a[n] != b[n])
    return {
        "tensors": len(a),
        "only_ours": sorted(set(a) - set(b)),
        "only_baseline": sorted(set(b) - set(a)),
        "differing": differing,
        "identical": not differing and set(a) == set(b),
    }


def image_inputs(folder: Path) -> dict[str, np.ndarray]:
    """Processor inputs for one image and the prompt, from the converted folder's own processor called with its
    defaults, as users call it (it puts the BOS after the leading image token; the tokenizer adds none)."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((20, 50, 3)) * 255).astype("uint8"))  # 1 tile high, 2 wide
    inputs = processor(images=image, text=PROMPT, return_tensors="np")
    assert inputs["input_ids"][0][:2].tolist() == [128256, 128000], inputs["input_ids"][0][:4]
    return {k: np.asarray(v) for k, v in inputs.items()}


def compare_image_logits(model, folder: Path, baseline_python: str, work: Path) -> dict[str, object]:
    inputs = image_inputs(folder)
    np.savez(work / "inputs.npz", **inputs)
    run(
        [baseline_python, "-c", LOGITS_SCRIPT, str(folder), str(work / "inputs.npz"), str(work / "hf.npy")],
        work / "hf.log",
    )
    theirs = np.load(work / "hf.npy")
    # the processor's own id → grid table (its torchvision-free module)
    from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

    ratio = tuple(get_all_supported_aspect_ratios(4)[int(inputs["aspect_ratio_ids"][0, 0]) - 1])
    tiles = int(inputs["aspect_ratio_mask"][0, 0].sum())
    meta = fx.meta_image_logits(model, inputs["input_ids"], inputs["pixel_values"][0, 0], ratio, tiles)
    scale = float(np.abs(meta).max())
    error = float(np.abs(theirs - meta).max())
    return {"aspect_ratio": ratio, "max_abs_diff": error, "max_abs_logit": scale, "relative": error / scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-python", required=True)
    parser.add_argument("--baseline-script", required=True, type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="compat-mllama-"))
    work.mkdir(parents=True, exist_ok=True)
    fx.init_model_parallel(work / "rendezvous")
    results = []
    for shape in (fx.SHAPE_11B, fx.SHAPE_90B):
        case = work / shape.name
        model = fx.build_model(shape)
        src = fx.save_checkpoint(
            model, shape, case / "Llama3.2-Vision-Instruct", tokenizer=fx.default_tokenizer(), hub_single_name=True
        )
        script = patched_baseline(args.baseline_script, shape.vision_width, case / "convert_mllama_patched.py")
        baseline_s = run(
            [args.baseline_python, str(script), "--input_dir", str(src), "--output_dir", str(case / "baseline"),
             "--num_shards", str(shape.mp), "--instruct"],
            case / "baseline.log",
        )  # fmt: skip
        ours_s = run(
            [sys.executable, "-m", "llama_convert", "convert", str(src), str(case / "ours")], case / "ours.log"
        )
        row = {
            "shape": shape.name,
            "mp": shape.mp,
            "seconds": {"baseline": round(baseline_s, 1), "ours": round(ours_s, 1)},
            **compare_tensors(case / "ours", case / "baseline"),
            "image_logits_vs_meta": compare_image_logits(model, case / "ours", args.baseline_python, case),
        }
        results.append(row)
        print(json.dumps(row, indent=2, default=list))
    print()
    print("| checkpoint | MP | tensors | bit-identical to 4.47.1 | image logits vs Meta (4.47.1, fp32) |")
    print("|---|---:|---:|---|---|")
    for r in results:
        logit = r["image_logits_vs_meta"]
        same = "yes" if r["identical"] else f"no: {len(r['differing'])} differ"
        print(f"| {r['shape']} | {r['mp']} | {r['tensors']} | {same} | max rel. error {logit['relative']:.2e} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compat_mllama.json").write_text(json.dumps(results, indent=2, default=list) + "\n")


if __name__ == "__main__":
    main()
