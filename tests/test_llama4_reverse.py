"""Llama 4 back to Meta's format: Meta → HF → Meta round trips, resharding, and a model fine-tuned and saved by
transformers, checked against checkpoints written by Meta's reference model in the shipped layout
(``llama4_fixtures``) and against Meta's own loader (its resharder + load hooks).

Not written back (documented): the expert-load statistics ``*_gate_stats_3E`` and TransformerEngine
``_extra_state``; Meta's model loads without them (``reference_from_folder`` asserts nothing is missing).
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import llama4_fixtures as fx
import numpy as np
import pytest

from llama_convert import convert
from llama_convert.errors import UnsupportedError
from llama_convert.families.llama4.layout import DROPPED
from llama_convert.formats.meta.torch_zip import TorchCheckpoint

REL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _model_parallel(tmp_path_factory) -> None:
    fx.init_model_parallel(tmp_path_factory.mktemp("gloo"))
    fx.cpu_threads()


@pytest.fixture(scope="module")
def models():
    return fx.reference_models(first_seed=20)


def _write(root: Path, kind: str, mp: int, models, **options) -> Path:
    params = fx.PARAMS[kind]
    folder = root / f"Llama-4-{kind.title()}-tiny-MP{mp}"
    return fx.write_checkpoint(folder, params, fx.shipped_shards(models[kind], params, mp), **options)


def assert_same_meta(expected: Path, ours: Path) -> None:
    """Every tensor Meta's loader uses bit-identical (names, shapes, dtypes), nothing else written, each
    shard holding only its own bytes; params.json and tokenizer.model identical; checklist.chk valid."""
    shards = sorted(p.name for p in expected.glob("consolidated.*.pth"))
    assert sorted(p.name for p in ours.glob("consolidated.*.pth")) == shards
    for name in shards:
        assert zipfile.ZipFile(ours / name).testzip() is None  # every member's CRC-32
        with TorchCheckpoint(expected / name) as a, TorchCheckpoint(ours / name) as b:
            used = {n for n in a.tensors if not DROPPED.match(n)}
            assert set(b.tensors) == used
            for t in used:
                assert (a.tensors[t].shape, a.tensors[t].dtype) == (b.tensors[t].shape, b.tensors[t].dtype), t
                assert np.array_equal(a.read(t), b.read(t)), f"{name}: {t}"
                assert b.tensors[t].storage.numel == b.tensors[t].numel
    assert json.loads((expected / "params.json").read_text()) == json.loads((ours / "params.json").read_text())
    assert (expected / "tokenizer.model").read_bytes() == (ours / "tokenizer.model").read_bytes()
    subprocess.run(["md5sum", "--check", "--strict", "--quiet", "checklist.chk"], cwd=ours, check=True)
    listed = sorted(line.split()[1] for line in (ours / "checklist.chk").read_text().splitlines())
    assert listed == sorted(p.name for p in ours.iterdir() if p.name != "checklist.chk")


@pytest.mark.parametrize(("kind", "mp"), [("scout", 1), ("scout", 2), ("maverick", 2)])
def test_meta_hf_meta_round_trip(tmp_path, models, kind, mp):
    src = _write(tmp_path, kind, mp, models, extra_state=True)
    convert(src, tmp_path / "hf")  # with tokenizer files; tokenizer.model is rebuilt from tokenizer.json
    assert not (tmp_path / "hf" / "tokenizer.model").exists()
    result = convert(tmp_path / "hf", tmp_path / "back", to="meta", mp=mp)
    assert result.spec.mp == mp
    assert_same_meta(src, tmp_path / "back")
    if (kind, mp) == ("scout", 2):  # Meta's own loader reads our shards and computes the original's logits
        tokens = fx.sample_tokens(8)
        theirs = fx.reference_logits(fx.reference_from_folder(src), tokens)
        ours = fx.reference_logits(fx.reference_from_folder(tmp_path / "back"), tokens)
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(("source_mp", "target_mp"), [(2, 1), (1, 2)])
def test_scout_reshard_bit_exact(tmp_path, models, source_mp, target_mp):
    src = _write(tmp_path / "src", "scout", source_mp, models)
    expected = _write(tmp_path / "expected", "scout", target_mp, models)
    result = convert(src, tmp_path / "out", to="meta", mp=target_mp)
    assert result.spec.mp == target_mp
    assert_same_meta(expected, tmp_path / "out")


def test_impossible_mp_refused_in_one_sentence(tmp_path, models):
    src = _write(tmp_path, "scout", 1, models)
    with pytest.raises(UnsupportedError, match="choose another --mp") as info:
        convert(src, tmp_path / "out", to="meta", mp=3)
    assert str(info.value).count(". ") == 0 and not (tmp_path / "out").exists()
    convert(src, tmp_path / "hf", tokenizer=False)
    with pytest.raises(UnsupportedError, match="choose another --mp"):
        convert(tmp_path / "hf", tmp_path / "back", to="meta", mp=4, tokenizer=False)  # 2 KV heads
    assert not (tmp_path / "back").exists()


@pytest.mark.slow
def test_finetuned_save_pretrained_back_to_meta_logits(tmp_path, models):
    """transformers loads our HF folder, the weights change (a stand-in for fine-tuning), save_pretrained
    writes sharded safetensors under its own names; back in Meta's format, Meta's reference model (loaded
    through its resharder and load hooks from MP2 shards) gives transformers' logits."""
    import torch
    from transformers import Llama4ForConditionalGeneration

    src = _write(tmp_path, "maverick", 2, models)
    convert(src, tmp_path / "hf")
    model = Llama4ForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.02 * torch.randn(p.shape, generator=gen)).to(p.dtype) * p.abs().mean())
    tuned = tmp_path / "tuned"
    model.save_pretrained(tuned, max_shard_size="2MB")
    (tuned / "tokenizer.json").write_bytes((tmp_path / "hf" / "tokenizer.json").read_bytes())
    assert len(list(tuned.glob("*.safetensors"))) > 1
    convert(tuned, tmp_path / "back", to="meta", mp=2)
    tokens = fx.sample_tokens(10, seed=3)
    reference = fx.reference_logits(fx.reference_from_folder(tmp_path / "back"), tokens)
    model = model.float().eval()
    with torch.inference_mode():
        ours = model.language_model(input_ids=torch.from_numpy(tokens)).logits.float().numpy()
    err, scale = float(np.abs(ours - reference).max()), float(np.abs(reference).max())
    assert err <= REL * scale, f"max |Δlogit| {err:.3g} > {REL} × {scale:.3g}"


@pytest.mark.slow
def test_a_killed_hf_to_meta_run_resumes_to_the_same_bytes(tmp_path, models):
    """Killed right after its first checkpoint (shards fsync'd, tensors done recorded), the same command
    continues and writes the bytes of an uninterrupted run."""
    import sys

    from test_resume_routes import _killed, _same

    src = _write(tmp_path, "maverick", 2, models)
    hf = tmp_path / "hf"
    convert(src, hf)
    reference = tmp_path / "reference"
    convert(hf, reference, to="meta", mp=2)
    dst = tmp_path / "resumed" / "meta"
    _killed(["convert", str(hf), str(dst), "-q", "--mp", "2"], after=1)
    assert (dst.parent / f".{dst.name}.llama-convert-partial").is_dir() and not dst.exists()
    rerun = subprocess.run(
        [sys.executable, "-m", "llama_convert", "convert", str(hf), str(dst), "--mp", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed an interrupted run" in rerun.stderr
    _same(reference, dst)
