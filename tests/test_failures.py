"""Bad input and bad luck: each case ends with one clear sentence naming the file, a documented exit
code, no traceback, the destination untouched and no temporary litter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import tiny
from interrupted import run_interrupted

from llama_convert.cli import main
from llama_convert.testing.synth import synthesize

FOLDER = "Meta-Llama-3.1-70B-Instruct"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A small valid MP8 Llama 3.1 checkpoint with checklist.chk, copied for each test."""
    root = tmp_path_factory.mktemp("pristine")
    return synthesize(root / FOLDER, tiny("llama3.1-70b", head_dim=4, tokenizer="small-tiktoken"))


@pytest.fixture
def src(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "in" / FOLDER))


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err.strip()


def assert_nothing_written(dst: Path) -> None:
    assert not dst.exists()
    litter = [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]
    assert not litter, litter


def expect_error(capsys, src: Path, dst: Path, code: int, *fragments: str, args=()) -> str:
    got, err = run(capsys, "convert", src, dst, "--quiet", *args)
    assert got == code, err
    assert err.startswith("error: ") and err.count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_shard(capsys, src, tmp_path):
    (src / "consolidated.03.pth").unlink()
    expect_error(capsys, src, tmp_path / "out", 3, "consolidated.03.pth", "missing", "download")
    assert_nothing_written(tmp_path / "out")


def test_extra_stray_shard(capsys, src, tmp_path):
    shutil.copy(src / "consolidated.07.pth", src / "consolidated.08.pth")
    expect_error(capsys, src, tmp_path / "out", 3, "9 shards", "has 8", "consolidated.08.pth", "remove")
    assert_nothing_written(tmp_path / "out")


def test_truncated_shard(capsys, src, tmp_path):
    shard = src / "consolidated.05.pth"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    expect_error(capsys, src, tmp_path / "out", 3, "consolidated.05.pth", "truncated", "download it again")
    assert_nothing_written(tmp_path / "out")


def test_flipped_byte_fails_the_checksum(capsys, src, tmp_path):
    shard = src / "consolidated.02.pth"
    with open(shard, "r+b") as f:  # a byte inside tensor data: the file still parses
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    err = expect_error(capsys, src, tmp_path / "out", 5, "consolidated.02.pth")
    assert "md5" in err.lower() or "checksum" in err.lower()
    assert_nothing_written(tmp_path / "out")
    # The same folder converts when the user explicitly skips verification.
    code, _ = run(capsys, "convert", src, tmp_path / "out", "--quiet", "--no-verify")
    assert code == 0


def test_params_missing(capsys, src, tmp_path):
    (src / "params.json").unlink()
    expect_error(capsys, src, tmp_path / "out", 3, "params.json is missing")
    assert_nothing_written(tmp_path / "out")


def test_params_invalid_json(capsys, src, tmp_path):
    (src / "params.json").write_text('{"dim": 256, "n_layers": ')
    expect_error(capsys, src, tmp_path / "out", 3, "params.json is not valid JSON")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"dim": 512}, "says dim 512"),
        ({"multiple_of": 256}, "params.json implies"),
        ({"n_layers": 3}, "lacks layers.2"),
        ({"vocab_size": 1000}, "says vocab_size 1000"),
        ({"n_heads": "many"}, "'n_heads' is 'many'"),
    ],
)
def test_params_inconsistent_with_shapes(capsys, src, tmp_path, change, fragment):
    params = json.loads((src / "params.json").read_text())
    (src / "params.json").write_text(json.dumps({**params, **change}))
    expect_error(capsys, src, tmp_path / "out", 3, fragment)
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_missing(capsys, src, tmp_path):
    (src / "tokenizer.model").unlink()
    expect_error(capsys, src, tmp_path / "out", 3, "no tokenizer.model", "copy Meta's tokenizer.model")
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_of_the_wrong_kind(capsys, src, tmp_path, sentencepiece_model):
    shutil.copy(sentencepiece_model, src / "tokenizer.model")
    expect_error(capsys, src, tmp_path / "out", 3, "SentencePiece tokenizer", "describes Llama 3")
    (src / "tokenizer.model").write_bytes(b"\x00garbage" * 100)
    expect_error(capsys, src, tmp_path / "out", 3, "tokenizer.model is neither")
    assert_nothing_written(tmp_path / "out")


def test_empty_and_foreign_folders(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(capsys, empty, tmp_path / "out", 3, "not a Meta Llama checkpoint folder")
    (empty / "notes.txt").write_text("hi")
    expect_error(capsys, empty, tmp_path / "out", 3, "not a Meta Llama checkpoint folder")
    expect_error(capsys, tmp_path / "nowhere", tmp_path / "out", 3, "does not exist")
    assert_nothing_written(tmp_path / "out")


def test_existing_destination_is_kept_without_force(capsys, src, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    expect_error(capsys, src, dst, 6, "already exists", "--force")
    assert [p.name for p in dst.iterdir()] == ["precious.txt"]
    code, _ = run(capsys, "convert", src, dst, "--quiet", "--force")
    assert code == 0
    assert not (dst / "precious.txt").exists() and (dst / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_hostile_shard_is_refused_and_never_runs(capsys, src, tmp_path):
    import pickle
    import zipfile

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    shard = src / "consolidated.04.pth"
    with zipfile.ZipFile(shard) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(shard, "w") as zf:
        for info, content in members:
            zf.writestr(info, pickle.dumps(Exploit(), protocol=2) if info.filename.endswith("data.pkl") else content)
    expect_error(
        capsys, src, tmp_path / "out", 3, "consolidated.04.pth", "system", "nothing from the file was executed"
    )
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    size = 12 << 20
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_disk_too_small_is_refused_before_writing(capsys, small_tmpfs):
    big = tiny("llama3.1-8b", head_dim=64, tokenizer="small-tiktoken")  # ~200 MB of weights
    src = synthesize(small_tmpfs.parent / "Llama3.1-8B", big)
    dst = small_tmpfs / "out"
    expect_error(capsys, src, dst, 7, "GB free", "needs", "free some space")
    assert_nothing_written(dst)


@pytest.mark.slow
def test_disk_filling_up_mid_way(capsys, small_tmpfs, monkeypatch):
    """Another writer fills the disk after the free-space check: ENOSPC mid-write is caught and cleaned."""
    import llama_convert.routes.common as common

    monkeypatch.setattr(common, "check_free_space", lambda dst, needed: None)
    src = synthesize(small_tmpfs.parent / "Llama3.1-8B", tiny("llama3.1-8b", head_dim=64, tokenizer="small-tiktoken"))
    dst = small_tmpfs / "out"
    expect_error(capsys, src, dst, 7, "ran out of space", "nothing was left behind")
    assert_nothing_written(dst)
    assert not [t for t in threading.enumerate() if t.name == "llama-convert-verify"]  # hashing was cancelled
    assert shutil.disk_usage(small_tmpfs).used < (1 << 20)


# --- interruptions in a real subprocess --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    """~8 MB, written as ~8 files: the child stops itself once the first is complete (tests/interrupted.py)."""
    root = tmp_path_factory.mktemp("interrupted")
    spec = tiny("llama3.1-8b", head_dim=8, n_layers=4, fill="fast", tokenizer="small-tiktoken")
    return synthesize(root / "Llama3.1-8B", spec)


def _convert(src: Path, dst: Path) -> list:
    return ["convert", src, dst, "--quiet", "--no-verify", "--max-shard-size", "1MB"]


def test_sigint_mid_conversion_leaves_nothing(tmp_path, small_source):
    dst = tmp_path / "out"
    proc = run_interrupted(_convert(small_source, dst), after=1, signum=signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_written(dst)


def test_sigkill_mid_conversion_then_rerun_succeeds(tmp_path, small_source):
    dst = tmp_path / "out"
    proc = run_interrupted(_convert(small_source, dst), after=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not dst.exists()
    temp = tmp_path / ".out.llama-convert-partial"
    assert temp.is_dir()  # a hidden temporary, never the destination name
    rerun = subprocess.run(
        [sys.executable, "-m", "llama_convert", *map(str, _convert(small_source, dst))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert not temp.exists()  # the stale temporary was cleared
    assert (dst / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
