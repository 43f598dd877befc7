"""Meta → HF → Meta → HF for the release shapes: the Meta shards come back bit-identical, the HF folder too."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny

from llama_convert import convert
from llama_convert.formats.meta.torch_zip import TorchCheckpoint
from llama_convert.testing.synth import PRESETS, synthesize


def release_shape(preset: str, **changes):
    """A release shrunk in width and depth, keeping its own multiple_of / ffn_dim_multiplier."""
    own = {k: PRESETS[preset].params[k] for k in ("multiple_of", "ffn_dim_multiplier") if k in PRESETS[preset].params}
    return tiny(preset, params=own, **changes)


def assert_same_meta(a: Path, b: Path) -> None:
    """Same shard files, same tensors (names, shapes, dtypes, bits), same params.json, valid checklist."""
    shards = sorted(p.name for p in a.glob("consolidated.*.pth"))
    assert sorted(p.name for p in b.glob("consolidated.*.pth")) == shards
    for name in shards:
        assert zipfile.ZipFile(b / name).testzip() is None  # every member's CRC-32
        with TorchCheckpoint(a / name) as x, TorchCheckpoint(b / name) as y:
            assert sorted(x.tensors) == sorted(y.tensors)
            for t in x.tensors:
                assert (x.tensors[t].shape, x.tensors[t].dtype) == (y.tensors[t].shape, y.tensors[t].dtype), t
                assert np.array_equal(x.read(t), y.read(t)), f"{name}: {t}"
                # each shard holds only its own bytes: a storage per tensor, exactly the tensor's size
                assert y.tensors[t].storage.numel == y.tensors[t].numel
    assert json.loads((a / "params.json").read_text()) == json.loads((b / "params.json").read_text())
    assert (a / "tokenizer.model").read_bytes() == (b / "tokenizer.model").read_bytes()
    subprocess.run(["md5sum", "--check", "--strict", "--quiet", "checklist.chk"], cwd=b, check=True)
    listed = sorted(line.split()[1] for line in (b / "checklist.chk").read_text().splitlines())
    assert listed == sorted(p.name for p in b.iterdir() if p.name != "checklist.chk")


def assert_same_hf(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        if p.suffix == ".json":
            assert json.loads(p.read_text()) == json.loads((b / p.name).read_text()), p.name
        else:
            assert p.read_bytes() == (b / p.name).read_bytes(), p.name


CASES = {
    "Meta-Llama-3.1-70B-Instruct": dict(preset="llama3.1-70b", tokenizer="small-tiktoken"),  # MP8, shared storages
    "Llama3.2-1B": dict(preset="llama3.2-1b", tokenizer="small-tiktoken"),  # tied
    "Meta-Llama-3-8B": dict(preset="llama3-8b", tokenizer="small-tiktoken"),
    "Llama3.2-3B-Instruct": dict(preset="llama3.2-3b", tokenizer="small-tiktoken"),
    "Llama3.3-70B-Instruct": dict(preset="llama3.3-70b", tokenizer="small-tiktoken", n_layers=1),
    "Llama-3.1-405B-Instruct-MP16": dict(preset="llama3.1-405b-mp16", tokenizer="small-tiktoken", n_layers=1),
    "llama-2-13b-chat": dict(preset="llama2-13b", spm=True, rope_freqs=True),  # MP2, embedding split on dim 1
    "llama-7b": dict(preset="llama1-7b", spm=True),  # float16, rope.freqs
    "CodeLlama-34b": dict(preset="codellama-34b", spm=True),  # MP4
}


@pytest.mark.parametrize("folder", sorted(CASES))
def test_meta_hf_meta_hf_round_trip(tmp_path, folder, sentencepiece_model):
    case = dict(CASES[folder])
    preset = case.pop("preset")
    if case.pop("spm", False):
        case.update(tokenizer=sentencepiece_model, vocab_size=512)
    spec = release_shape(preset, **case)
    original = synthesize(tmp_path / "a" / folder, spec)
    hf = tmp_path / "hf" / folder
    convert(original, hf)
    back = tmp_path / "b" / folder  # same folder name: the same release and variant are detected again
    result = convert(hf, back, to="meta", mp=spec.mp)
    assert result.spec.mp == spec.mp
    assert_same_meta(original, back)
    hf_again = tmp_path / "hf2" / folder
    convert(back, hf_again)
    assert_same_hf(hf, hf_again)
