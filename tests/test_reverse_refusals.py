"""What the way back refuses, with one sentence each, before anything appears at the destination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny

from llama_convert import convert
from llama_convert.errors import InputError, MissingFileError, UnsupportedError
from llama_convert.testing.synth import synthesize


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    src = synthesize(root / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    convert(src, root / "hf")
    return root / "hf"


def _copy(hf: Path, dst: Path, edit=None) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for p in hf.iterdir():
        if p.suffix != ".safetensors":
            (dst / p.name).write_bytes(p.read_bytes())
    tensors = load_file(hf / "model.safetensors")
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _refused(src: Path, dst: Path, error: type, text: str, **options) -> None:
    with pytest.raises(error) as info:
        convert(src, dst, to="meta", **options)
    assert text in str(info.value)
    assert not dst.exists()
    assert not any(p.name.startswith(f".{dst.name}") for p in dst.parent.iterdir())


def test_missing_tensor(hf_folder, tmp_path):
    src = _copy(hf_folder, tmp_path / "in", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    _refused(src, tmp_path / "out", InputError, "lacks model.layers.1.mlp.up_proj.weight, which config.json implies")


def test_unexpected_tensor(hf_folder, tmp_path):
    import torch

    def add_bias(t):
        t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(t["model.layers.0.self_attn.q_proj.weight"].shape[0])

    src = _copy(hf_folder, tmp_path / "in", add_bias)
    _refused(src, tmp_path / "out", UnsupportedError, "holds model.layers.0.self_attn.q_proj.bias")


def test_config_and_weights_disagree(hf_folder, tmp_path):
    src = _copy(hf_folder, tmp_path / "in")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    _refused(src, tmp_path / "out", InputError, "but config.json implies")


def test_model_parallel_degree_that_does_not_divide(hf_folder, tmp_path):
    _refused(hf_folder, tmp_path / "out", UnsupportedError, "12 shards cannot share 8 KV heads", mp=12)
    _refused(hf_folder, tmp_path / "out", UnsupportedError, "cannot write 3 model-parallel shards", mp=3)


def test_llama2_without_tokenizer_model(tmp_path, sentencepiece_model):
    src = synthesize(tmp_path / "llama-2-7b", tiny("llama2-7b", tokenizer=sentencepiece_model, vocab_size=512))
    convert(src, tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").unlink(missing_ok=True)
    _refused(tmp_path / "hf", tmp_path / "out", MissingFileError, "has no tokenizer.model; copy the release's")
    convert(tmp_path / "hf", tmp_path / "out", to="meta", tokenizer=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "checklist.chk",
        "consolidated.00.pth",
        "params.json",
    ]
