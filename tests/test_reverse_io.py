"""The HF folder reader and the Meta shard writer on their own, against the safetensors library and torch."""

from __future__ import annotations

import hashlib
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from llama_convert.dtypes import DTYPES
from llama_convert.errors import InputError, MissingFileError, UnsupportedError
from llama_convert.formats.hf.reader import find_hf_folder
from llama_convert.formats.meta.torch_zip import TorchCheckpoint
from llama_convert.formats.meta.writer import MetaShardWriter, checklist_text


def _save(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture()
def hf_dir(tmp_path) -> Path:
    import torch

    torch.manual_seed(0)
    tensors = {
        "a.bf16": torch.randn(37, 5).to(torch.bfloat16),
        "b.f16": torch.randn(4, 3, 2).to(torch.float16),
        "c.f32": torch.randn(9),
    }
    _save(tmp_path / "model-00001-of-00002.safetensors", {k: tensors[k] for k in ("a.bf16", "b.f16")})
    _save(tmp_path / "model-00002-of-00002.safetensors", {"c.f32": tensors["c.f32"]})
    weight_map = {"a.bf16": "model-00001-of-00002.safetensors", "b.f16": "model-00001-of-00002.safetensors"}
    weight_map["c.f32"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp_path


def test_reader_rows_match_the_safetensors_library(hf_dir):
    import torch
    from safetensors import safe_open

    with find_hf_folder(hf_dir) as folder:
        assert sorted(folder.tensors) == ["a.bf16", "b.f16", "c.f32"]
        for name, ref in folder.tensors.items():
            with safe_open(hf_dir / folder.where[name], "pt") as f:
                expected = f.get_tensor(name)
            raw = expected.view(torch.int16).numpy().view(np.uint16) if ref.dtype == DTYPES["bfloat16"] else None
            expected_np = raw if raw is not None else expected.numpy()
            assert ref.shape == tuple(expected.shape)
            assert np.array_equal(folder.read_rows(name, 0, ref.shape[0]), expected_np)
            assert np.array_equal(folder.read_rows(name, 1, 3), expected_np[1:3])


def test_reader_refusals(tmp_path, hf_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match=r"config\.json is missing; give a folder written by save_pretrained"):
        find_hf_folder(empty)
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedError, match=r"pickled pytorch_model\*\.bin weights, which are not read"):
        find_hf_folder(empty)
    (hf_dir / "model.safetensors.index.json").unlink()
    with pytest.raises(InputError, match=r"several safetensors files .* but no model\.safetensors\.index\.json"):
        find_hf_folder(hf_dir)
    shard = hf_dir / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    for other in hf_dir.glob("model-00001*"):
        other.unlink()
    with pytest.raises(InputError, match=r"truncated or damaged \(tensor c\.f32 does not fit its byte range\)"):
        find_hf_folder(hf_dir)


def test_integer_tensors_are_refused(tmp_path):
    import torch

    _save(tmp_path / "model.safetensors", {"q": torch.zeros(4, dtype=torch.int8)})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsupportedError, match="tensor q has dtype I8; only bfloat16, float16 and float32"):
        find_hf_folder(tmp_path)


def test_shard_writer_output_loads_in_torch_and_passes_md5(tmp_path):
    import torch

    bf16, f16 = DTYPES["bfloat16"], DTYPES["float16"]
    rng = np.random.default_rng(0)
    big = rng.integers(0, 0x7F00, size=(3000, 70), dtype=np.uint16)  # written in several pieces per shard
    with ThreadPoolExecutor(1) as hasher:
        writer = MetaShardWriter(tmp_path, 2, hasher)
        sinks = writer.open_tensor("big", bf16, [(1500, 70), (1500, 70)])
        for rank, sink in enumerate(sinks):
            for start in range(0, 1500, 400):
                sink.write(big[rank * 1500 + start : rank * 1500 + min(1500, start + 400)].copy())
        writer.close_tensor()
        half = rng.standard_normal(6).astype(np.float16)
        for sink in writer.open_tensor("norm", f16, [(6,), (6,)]):
            sink.write(half)
        writer.close_tensor()
        digests = writer.finish()
    for rank in range(2):
        path = tmp_path / f"consolidated.{rank:02d}.pth"
        assert digests[path.name] == hashlib.md5(path.read_bytes()).hexdigest()
        assert zipfile.ZipFile(path).testzip() is None  # every member's CRC is right
        for mmap in (True, False):
            state = torch.load(path, weights_only=True, mmap=mmap)
            assert list(state) == ["big", "norm"]
            assert torch.equal(
                state["big"].view(torch.int16), torch.from_numpy(big[rank * 1500 : (rank + 1) * 1500].view(np.int16))
            )
            assert torch.equal(state["norm"], torch.from_numpy(half))
        with TorchCheckpoint(path) as ckpt:
            assert all(ref.storage.file_offset % 64 == 0 for ref in ckpt.tensors.values())
            assert ckpt.tensors["big"].storage.numel == 1500 * 70  # only this shard's bytes
    assert checklist_text(digests).splitlines()[0] == f"{digests['consolidated.00.pth']}  consolidated.00.pth"


@pytest.mark.parametrize("bad", ["\u00ad", "\u2581a"])  # a byte outside GPT-2's map; SentencePiece's ▁
def test_tokenizer_json_that_is_not_byte_level_is_refused(tmp_path, bad):
    from llama_convert.tokenizer.tiktoken_ranks import tiktoken_model_from_tokenizer_json

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, bad: 1}}, "added_tokens": []}))
    with pytest.raises(InputError, match=r"that is not a byte-level string; copy the release's tokenizer\.model"):
        tiktoken_model_from_tokenizer_json(path)
