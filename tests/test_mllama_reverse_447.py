"""Llama 3.2 Vision back to Meta's format from folders transformers 4.47.1 wrote (its own interpreter,
``LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON``; skipped when unset):

* the official 4.47.1 converter's folder (``convert_mllama_weights_to_hf.py`` from the 4.47.1 wheel; its
  config.json holds only the keys that differ from the config classes' defaults) converts back to the
  original checkpoint's bytes;
* a model fine-tuned in 4.47.1 (weights perturbed) and saved with ``save_pretrained`` in small shards
  converts back, and Meta's reference model loaded from our shards gives 4.47.1's image + text logits within
  1e-4 relative (4.47.1, because 5.x feeds the projector other vision layers than Meta, see mllama.md).

The converter is patched as in ``benchmarks/compat_mllama.py``: only its two literals for the vision width
(1280) and the projector input (7680) are replaced by what they stand for on the shrunk checkpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mllama_fixture as fx
import numpy as np
import pytest
from conftest import assert_logits_close
from test_mllama_reverse import assert_same_meta

from llama_convert import convert

BASELINE_PYTHON = os.environ.get("LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BASELINE_PYTHON is None, reason="LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON is not set"),
]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

FINETUNE_AND_LOGITS = """
import sys, numpy as np, torch, transformers
assert transformers.__version__ == "4.47.1", transformers.__version__
from transformers import MllamaForConditionalGeneration
folder, tuned, inputs, out = sys.argv[1:5]
model = MllamaForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.bfloat16)
gen = torch.Generator().manual_seed(11)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "tile_embedding" in name or "tile_positional_embedding.embedding" in name:
            continue  # per aspect ratio: changed independently they have no Meta form
        p.add_((0.02 * torch.randn(p.shape, generator=gen)).to(p.dtype) * p.abs().mean())
model.save_pretrained(tuned, max_shard_size="1MB")
model = model.float().eval()
data = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()}
with torch.inference_mode():
    np.save(out, model(**data).logits.float().numpy())
"""


def _baseline_script(tmp_path: Path, width: int) -> Path:
    from compat_mllama import patched_baseline

    where = "import transformers.models.mllama.convert_mllama_weights_to_hf as m; print(m.__file__)"
    found = subprocess.run(
        [BASELINE_PYTHON, "-c", where],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return patched_baseline(Path(found), width, tmp_path / "convert_mllama_patched.py")


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("shape", [fx.SHAPE_11B, fx.SHAPE_90B], ids=["11B-MP1", "90B-MP2"])
def test_official_447_folder_converts_back_to_the_original(tmp_path, model_parallel, shape):
    model = fx.build_model(shape)
    src = fx.save_checkpoint(
        model, shape, tmp_path / "Llama3.2-Vision-Instruct", tokenizer=fx.default_tokenizer(), hub_single_name=True
    )  # the 4.47.1 converter reads an MP1 checkpoint as consolidated.pth
    script = _baseline_script(tmp_path, shape.vision_width)
    official = tmp_path / "official"
    _run([BASELINE_PYTHON, str(script), "--input_dir", str(src), "--output_dir", str(official),
          "--num_shards", str(shape.mp), "--instruct"])  # fmt: skip
    result = convert(official, tmp_path / "back", to="meta", mp=shape.mp)
    assert result.spec.mp == shape.mp
    assert_same_meta(src, tmp_path / "back")


def test_finetuned_in_447_image_logits_equal_metas(tmp_path, model_parallel):
    import torch
    from compat_mllama import image_inputs
    from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

    shape = fx.SHAPE_11B
    src = fx.save_checkpoint(
        fx.build_model(shape), shape, tmp_path / "Llama3.2-11B-Vision-Instruct", tokenizer=fx.default_tokenizer()
    )
    convert(src, tmp_path / "hf")
    inputs = image_inputs(tmp_path / "hf")
    np.savez(tmp_path / "inputs.npz", **inputs)
    tuned = tmp_path / "tuned"
    _run([BASELINE_PYTHON, "-c", FINETUNE_AND_LOGITS, str(tmp_path / "hf"), str(tuned),
          str(tmp_path / "inputs.npz"), str(tmp_path / "hf.npy")])  # fmt: skip
    assert len(list(tuned.glob("*.safetensors"))) > 1
    (tuned / "tokenizer.json").write_bytes((tmp_path / "hf" / "tokenizer.json").read_bytes())
    convert(tuned, tmp_path / "back", to="meta")
    meta = fx.build_model(shape)
    state = torch.load(tmp_path / "back" / "consolidated.00.pth", map_location="cpu", weights_only=True)
    _, unexpected = meta.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected
    ratio = tuple(get_all_supported_aspect_ratios(4)[int(inputs["aspect_ratio_ids"][0, 0]) - 1])
    tiles = int(inputs["aspect_ratio_mask"][0, 0].sum())
    reference = fx.meta_image_logits(meta, inputs["input_ids"], inputs["pixel_values"][0, 0], ratio, tiles)
    assert_logits_close(np.load(tmp_path / "hf.npy"), reference)
