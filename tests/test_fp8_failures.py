"""FP8 checkpoints that cannot be converted: one sentence naming the file, nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint, tiny
from fp8_fixtures import make_fp8_llama3

from llama_convert import convert
from llama_convert.errors import InputError, MissingFileError, ShapeMismatchError, UnsupportedError


@pytest.fixture(scope="module")
def fp8_mp2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fp8fail")
    bf16 = make_checkpoint(root, "bf16", tiny("llama3.1-8b", head_dim=2, n_layers=3, mp=2))
    make_fp8_llama3(bf16, root / "fp8", root / "twin")
    return root


def _copy(root: Path, tmp_path: Path, which: str = "fp8") -> Path:
    dst = tmp_path / "Llama-3.1-8B-Instruct"
    shutil.copytree(root / which, dst)
    (dst / "checklist.chk").unlink()
    return dst


def _edit_scales(folder: Path, rank: int, edit) -> None:
    path = folder / f"fp8_scales_{rank}.pt"
    scales = torch.load(path, weights_only=True)
    edit(scales)
    torch.save(scales, path)


def _refused(src: Path, tmp_path: Path, error: type[Exception]) -> str:
    with pytest.raises(error) as info:
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))
    return str(info.value)


def test_a_missing_scale_file(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    (src / "fp8_scales_1.pt").unlink()
    assert _refused(src, tmp_path, MissingFileError) == (
        f"{src} has 1 fp8_scales_N.pt file(s) for 2 consolidated shard(s) and lacks fp8_scales_1.pt; every shard "
        "needs its own scale file — download the FP8 release again."
    )


def test_an_extra_scale_file(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    shutil.copy(src / "fp8_scales_1.pt", src / "fp8_scales_2.pt")
    assert "holds fp8_scales_2.pt beyond its 2 shard(s)" in _refused(src, tmp_path, MissingFileError)


def test_no_scale_files(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    for p in src.glob("fp8_scales_*.pt"):
        p.unlink()
    assert "stores float8 weights but has no fp8_scales_N.pt" in _refused(src, tmp_path, MissingFileError)


def test_scale_files_beside_a_bf16_checkpoint(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path, "twin")
    for p in (fp8_mp2 / "fp8").glob("fp8_scales_*.pt"):
        shutil.copy(p, src / p.name)
    assert "stores no float8 weights" in _refused(src, tmp_path, UnsupportedError)


def test_a_missing_scale_key(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    _edit_scales(src, 1, lambda s: s.pop("1_feed_forward.w2_1"))
    assert _refused(src, tmp_path, ShapeMismatchError) == (
        f"{src / 'fp8_scales_1.pt'} lacks the scale '1_feed_forward.w2_1'; it does not belong to these shards — "
        "download the FP8 release again."
    )


def test_an_extra_scale_key(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    _edit_scales(src, 0, lambda s: s.update({"7_feed_forward.w1_0": torch.ones(3)}))
    assert "holds the scale '7_feed_forward.w1_0', which names no float8 weight" in _refused(src, tmp_path, InputError)


def test_a_scale_of_the_wrong_shape(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    _edit_scales(src, 0, lambda s: s.update({"1_feed_forward.w1_0": s["1_feed_forward.w1_0"][:-1].clone()}))
    message = _refused(src, tmp_path, ShapeMismatchError)
    assert "scale '1_feed_forward.w1_0' is float32 [" in message and "but its weight needs float32 [" in message


def test_float8_outside_the_ffn(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    path = src / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    state = {k: v.clone() for k, v in state.items()}
    state["layers.1.attention.wq.weight"] = state["layers.1.attention.wq.weight"].to(torch.float8_e4m3fn)
    torch.save(state, path)
    message = _refused(src, tmp_path, UnsupportedError)
    assert message == (
        f"{path}: layers.1.attention.wq.weight is float8, but Meta's FP8 release quantizes exactly the FFN weights "
        "of layers 1…1; this mixture cannot be dequantized as Meta's loader does."
    )


def test_the_cli_says_one_sentence(fp8_mp2, tmp_path):
    src = _copy(fp8_mp2, tmp_path)
    (src / "fp8_scales_0.pt").unlink()
    run = subprocess.run(
        [sys.executable, "-m", "llama_convert", "convert", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and not (tmp_path / "out").exists()
    assert run.stderr.strip().count("\n") == 0 and "lacks fp8_scales_0.pt" in run.stderr
