"""Meta → Meta at another model-parallel degree: bit-exact against the split rules and the original."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import META_SPLIT, tiny
from test_reverse_roundtrip import assert_same_meta

from llama_convert import convert
from llama_convert.errors import ChecksumError, UnsupportedError
from llama_convert.testing.synth import synthesize


def split_rule_shards(src: Path, mp: int, embed_split: int, kv_repeat: int = 1) -> list[dict]:
    """The target shards by Meta's split rules, computed with torch alone: merge, repeat KV heads, chunk."""
    import torch
    from conftest import merged_meta_state_dict

    params = json.loads((src / "params.json").read_text())
    head_dim = params["dim"] // params["n_heads"]
    merged = merged_meta_state_dict(src, embed_split)
    shards: list[dict] = [{} for _ in range(mp)]
    for name, tensor in merged.items():
        suffix = ".".join(name.split(".")[-2:])
        dim = embed_split if name == "tok_embeddings.weight" else META_SPLIT.get(suffix)
        if kv_repeat > 1 and suffix in ("wk.weight", "wv.weight"):
            tensor = (
                tensor.view(-1, head_dim, tensor.shape[1]).repeat_interleave(kv_repeat, 0).reshape(-1, tensor.shape[1])
            )
        parts = [tensor] * mp if dim is None else torch.chunk(tensor, mp, dim=dim)
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part
    return shards


def assert_matches_split_rules(dst: Path, expected: list[dict]) -> None:
    import torch

    for rank, shard in enumerate(expected):
        got = torch.load(dst / f"consolidated.{rank:02d}.pth", weights_only=True, mmap=True)
        assert set(got) == set(shard)
        for name, tensor in shard.items():
            assert got[name].dtype == torch.bfloat16
            assert torch.equal(got[name].float(), tensor), (rank, name)
    subprocess.run(["md5sum", "--check", "--strict", "--quiet", "checklist.chk"], cwd=dst, check=True)


def test_1_to_2_to_4_to_1(tmp_path):
    spec = tiny("llama3.1-8b", tokenizer="small-tiktoken")
    src = synthesize(tmp_path / "Llama3.1-8B", spec)
    convert(src, tmp_path / "mp2", to="meta", mp=2)
    assert_matches_split_rules(tmp_path / "mp2", split_rule_shards(src, 2, 0))
    convert(tmp_path / "mp2", tmp_path / "mp4", to="meta", mp=4)
    assert_matches_split_rules(tmp_path / "mp4", split_rule_shards(src, 4, 0))
    convert(tmp_path / "mp4", tmp_path / "mp1" / "Llama3.1-8B", to="meta", mp=1)
    assert_same_meta(src, tmp_path / "mp1" / "Llama3.1-8B")


def test_llama2_8_to_1_splits_the_embedding_along_dim_1(tmp_path, sentencepiece_model):
    spec = tiny("llama2-70b", tokenizer=sentencepiece_model, vocab_size=512)
    src = synthesize(tmp_path / "llama-2-70b", spec)
    convert(src, tmp_path / "mp1", to="meta", mp=1)
    assert_matches_split_rules(tmp_path / "mp1", split_rule_shards(src, 1, 1))
    convert(tmp_path / "mp1", tmp_path / "back" / "llama-2-70b", to="meta", mp=8)
    assert_same_meta(src, tmp_path / "back" / "llama-2-70b")


def test_405b_mp8_to_mp16_repeats_kv_heads_and_back(tmp_path):
    spec = tiny("llama3.1-405b-mp8", tokenizer="small-tiktoken", n_layers=1)
    src = synthesize(tmp_path / "Llama3.1-405B-MP8", spec)
    result = convert(src, tmp_path / "mp16", to="meta", mp=16)
    assert json.loads((tmp_path / "mp16" / "params.json").read_text())["n_kv_heads"] == 16
    assert any("repeated 2×" in n for n in result.notes)
    assert_matches_split_rules(tmp_path / "mp16", split_rule_shards(src, 16, 0, kv_repeat=2))
    back = convert(tmp_path / "mp16", tmp_path / "mp8" / "Llama3.1-405B-MP8", to="meta", mp=8)
    assert any("folded back to 8" in n for n in back.notes)
    assert_same_meta(src, tmp_path / "mp8" / "Llama3.1-405B-MP8")


def test_405b_mp16_release_to_mp8_and_back(tmp_path):
    spec = tiny("llama3.1-405b-mp16", tokenizer="small-tiktoken", n_layers=1)
    src = synthesize(tmp_path / "Llama3.1-405B-MP16", spec)
    convert(src, tmp_path / "mp8", to="meta", mp=8)
    assert json.loads((tmp_path / "mp8" / "params.json").read_text())["n_kv_heads"] == 8
    convert(tmp_path / "mp8", tmp_path / "again" / "Llama3.1-405B-MP16", to="meta", mp=16)
    assert_same_meta(src, tmp_path / "again" / "Llama3.1-405B-MP16")


def test_indivisible_degree_is_refused_before_writing(tmp_path):
    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    with pytest.raises(UnsupportedError, match=r"8 shards cannot share .*|cannot write 3 model-parallel shards"):
        convert(src, tmp_path / "mp3", to="meta", mp=3)
    assert not (tmp_path / "mp3").exists()


def test_corrupt_source_is_refused_and_nothing_is_left(tmp_path):
    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    with open(src / "consolidated.00.pth", "r+b") as f:
        f.seek(-200, 2)
        byte = f.read(1)
        f.seek(-200, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChecksumError):
        convert(src, tmp_path / "out", to="meta", mp=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Llama3.1-8B"]


@pytest.mark.parametrize(
    ("folder", "preset", "changes"),
    [
        ("Llama3.2-1B", "llama3.2-1b", {"tokenizer": "small-tiktoken"}),  # tied: output.weight is kept
        ("llama-7b", "llama1-7b", {"spm": True}),  # float16, rope.freqs carried over
    ],
)
def test_there_and_back_keeps_every_tensor(tmp_path, sentencepiece_model, folder, preset, changes):
    changes = dict(changes)
    if changes.pop("spm", False):
        changes.update(tokenizer=sentencepiece_model, vocab_size=512)
    src = synthesize(tmp_path / "a" / folder, tiny(preset, **changes))
    convert(src, tmp_path / "mp2", to="meta", mp=2)
    convert(tmp_path / "mp2", tmp_path / "b" / folder, to="meta", mp=1)
    assert_same_meta(src, tmp_path / "b" / folder)
