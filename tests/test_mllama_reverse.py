"""Llama 3.2 Vision back to Meta's format: Meta → HF → Meta round trips (11B as the Hub's single
``consolidated.pth``, 90B at MP8), resharding MP8 → MP1 bit-exact, and a model fine-tuned and saved by
transformers whose Meta checkpoint gives Meta's reference model transformers' text logits.

The per-tile tables (``gated_positional_embedding``, ``pre/post_tile_pos_embed.embedding``, Meta's
``[tiles, tiles, …]``) hold cells no supported aspect ratio uses; Meta's code never reads them
(``embedding[:h, :w]``) and Hugging Face has no place for them, so they come back as zeros: those cells
are compared for zeros, every cell Meta's code reads bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import mllama_fixture as fx
import numpy as np
import pytest
from conftest import assert_logits_close

from llama_convert import convert
from llama_convert.errors import ConversionError, UnsupportedError
from llama_convert.families.mllama.params import supported_aspect_ratios
from llama_convert.formats.meta.torch_zip import TorchCheckpoint

TOKENS = np.array([[128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13, 128009]])
_TABLES = tuple(
    f"vision_model.vision_encoder.{t}"
    for t in ("gated_positional_embedding", "pre_tile_pos_embed.embedding", "post_tile_pos_embed.embedding")
)


def _used_cells(tiles: int) -> np.ndarray:
    used = np.zeros((tiles, tiles), dtype=bool)
    for a, b in supported_aspect_ratios(tiles):
        used[:a, :b] = True
    return used


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("consolidated*.pth"))


def assert_same_meta(expected: Path, ours: Path, *, tables_whole: bool = False) -> None:
    a_names, b_names = _shards(expected), _shards(ours)
    assert len(a_names) == len(b_names)
    for x, y in zip(a_names, b_names, strict=True):
        assert zipfile.ZipFile(ours / y).testzip() is None  # every member's CRC-32
        with TorchCheckpoint(expected / x) as a, TorchCheckpoint(ours / y) as b:
            assert set(a.tensors) == set(b.tensors)
            for t in a.tensors:
                assert (a.tensors[t].shape, a.tensors[t].dtype) == (b.tensors[t].shape, b.tensors[t].dtype), t
                assert b.tensors[t].storage.numel == b.tensors[t].numel
                va, vb = a.read(t), b.read(t)
                if t in _TABLES and not tables_whole:
                    used = _used_cells(va.shape[0])
                    assert np.array_equal(va[used], vb[used]), t
                    assert not vb[~used].view(np.uint16).any(), t
                else:
                    assert np.array_equal(va, vb), f"{y}: {t}"
    assert json.loads((expected / "params.json").read_text()) == json.loads((ours / "params.json").read_text())
    assert (expected / "tokenizer.model").read_bytes() == (ours / "tokenizer.model").read_bytes()
    subprocess.run(["md5sum", "--check", "--strict", "--quiet", "checklist.chk"], cwd=ours, check=True)
    listed = sorted(line.split()[1] for line in (ours / "checklist.chk").read_text().splitlines())
    assert listed == sorted(p.name for p in ours.iterdir() if p.name != "checklist.chk")


def test_11b_hub_single_file_round_trip(tmp_path, model_parallel):
    shape = fx.SHAPE_11B
    model = fx.build_model(shape)
    src = fx.save_checkpoint(
        model, shape, tmp_path / "Llama-3.2-11B-Vision-Instruct" / "original", tokenizer=fx.default_tokenizer(),
        hub_single_name=True,
    )  # fmt: skip
    convert(src.parent, tmp_path / "hf")
    result = convert(tmp_path / "hf", tmp_path / "back", to="meta")
    assert result.spec.mp == 1 and any("written as zeros" in n for n in result.notes)
    assert _shards(tmp_path / "back") == ["consolidated.00.pth"]
    assert_same_meta(src, tmp_path / "back")


@pytest.mark.slow
def test_90b_mp8_round_trip_and_reshard_to_mp1(tmp_path, model_parallel):
    mp8 = fx.SHAPE_90B_MP8
    model = fx.build_model(mp8)
    src = fx.save_checkpoint(model, mp8, tmp_path / "Llama3.2-90B-Vision", tokenizer=fx.default_tokenizer())
    convert(src, tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "back", to="meta", mp=8)
    assert_same_meta(src, tmp_path / "back")
    # resharding: the same model written by Meta's layout at MP1, every tensor bit-exact (all tile cells too)
    mp1 = fx.VisionShape(**{**mp8.__dict__, "mp": 1, "name": "90B-MP1"})
    expected = fx.save_checkpoint(
        model, mp1, tmp_path / "expected" / "Llama3.2-90B-Vision", tokenizer=fx.default_tokenizer()
    )
    result = convert(src, tmp_path / "mp1", to="meta", mp=1)
    assert result.spec.mp == 1
    assert_same_meta(expected, tmp_path / "mp1", tables_whole=True)
    with pytest.raises(UnsupportedError, match="choose another --mp"):
        convert(src, tmp_path / "mp16", to="meta", mp=16)
    assert not (tmp_path / "mp16").exists()


def _perturb(model, seed: int) -> None:
    """A stand-in for fine-tuning: every weight changes except the per-aspect-ratio tile embeddings (changed
    independently per aspect ratio they would have no Meta form; that refusal is tested below)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "tile_embedding" in name or "tile_positional_embedding.embedding" in name:
                continue
            p.add_((0.02 * torch.randn(p.shape, generator=gen)).to(p.dtype) * p.abs().mean())


@pytest.mark.slow
def test_finetuned_save_pretrained_back_to_meta_text_logits(tmp_path, model_parallel):
    import torch
    from transformers import MllamaForConditionalGeneration

    shape = fx.SHAPE_11B
    src = fx.save_checkpoint(
        fx.build_model(shape), shape, tmp_path / "Llama3.2-11B-Vision", tokenizer=fx.default_tokenizer()
    )
    convert(src, tmp_path / "hf")
    hf = MllamaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    _perturb(hf, 7)
    tuned = tmp_path / "tuned"
    hf.save_pretrained(tuned, max_shard_size="1MB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tuned / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    assert len(list(tuned.glob("*.safetensors"))) > 1
    convert(tuned, tmp_path / "back", to="meta")
    meta = fx.build_model(shape)
    state = torch.load(tmp_path / "back" / "consolidated.00.pth", map_location="cpu", weights_only=True)
    missing, unexpected = meta.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and all("cache" in k or "freqs" in k for k in missing), (missing, unexpected)
    reference = fx.meta_text_logits(meta, TOKENS)
    hf = hf.float().eval()
    with torch.inference_mode():
        ours = hf(input_ids=torch.from_numpy(TOKENS)).logits.float().numpy()
    assert_logits_close(ours, reference)


def test_tile_embeddings_that_differ_per_aspect_ratio_are_refused(tmp_path, model_parallel):
    import torch
    from safetensors.torch import load_file, save_file

    shape = fx.SHAPE_11B
    src = fx.save_checkpoint(
        fx.build_model(shape), shape, tmp_path / "Llama3.2-11B-Vision", tokenizer=fx.default_tokenizer()
    )
    convert(src, tmp_path / "hf")
    [weights] = list((tmp_path / "hf").glob("*.safetensors"))
    tensors = load_file(weights)
    name = "vision_model.pre_tile_positional_embedding.embedding.weight"
    tensors[name][2] += torch.tensor(0.5, dtype=tensors[name].dtype)  # aspect ratio id 2 only: cell (0, 0) differs
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="aspect ratio"):
        convert(tmp_path / "hf", tmp_path / "back", to="meta")
    assert not (tmp_path / "back").exists()
