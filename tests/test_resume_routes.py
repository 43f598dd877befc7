"""Resume on the routes that write one long file or many side by side: Meta → GGUF, HF → GGUF, HF → Meta and
Meta → Meta. A child process kills itself (SIGKILL) right after its N-th checkpoint is on disk — a known
point, not a race — and the same command then continues from it, producing the same bytes."""

from __future__ import annotations

import filecmp
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny
from interrupted import run_interrupted

import llama_convert
from llama_convert.cli import main
from llama_convert.testing.synth import synthesize


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume-routes")
    spec = tiny("llama3.1-8b", head_dim=8, n_layers=4, fill="fast", tokenizer="small-tiktoken")
    meta = synthesize(root / "Llama3.1-8B-Instruct", spec)
    hf = root / "hf"
    llama_convert.convert(meta, hf, verify=False)
    narrow = tiny("llama3.1-8b", head_dim=16, n_layers=4, fill="fast", tokenizer="small-tiktoken")
    return {"meta": meta, "hf": hf, "meta-narrow": synthesize(root / "Llama3.1-8B", narrow)}


def _killed(args: list[str], after: int) -> None:
    proc = run_interrupted(args, after=after)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _same(a: Path, b: Path) -> None:
    if a.is_file():
        assert filecmp.cmp(a, b, shallow=False)
        return
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


CASES = {
    "meta-gguf": ("meta", "out.gguf", []),
    "hf-gguf": ("hf", "out.gguf", []),
    "meta-gguf-q4_k_m": ("meta-narrow", "out.gguf", ["--outtype", "Q4_K_M"]),  # llama-quantize's type mixture
    "hf-meta": ("hf", "meta", ["--mp", "2"]),
    "meta-meta": ("meta", "meta", ["--to", "meta", "--mp", "1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_run_continues_and_gives_the_same_bytes(case, sources, tmp_path):
    source, name, extra = CASES[case]
    reference = tmp_path / "reference" / name
    assert main(["convert", str(sources[source]), str(reference), "-q", *extra]) == 0
    dst = tmp_path / "resumed" / name
    _killed(["convert", str(sources[source]), str(dst), "-q", *extra], after=3)
    partial = dst.parent / f".{dst.name}.llama-convert-partial"
    assert partial.is_dir() and not dst.exists()
    rerun = subprocess.run(
        [sys.executable, "-m", "llama_convert", "convert", str(sources[source]), str(dst), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed an interrupted run" in rerun.stderr and "written part way" in rerun.stderr
    assert not partial.exists()
    _same(reference, dst)


def test_a_changed_option_starts_clean(sources, tmp_path):
    dst = tmp_path / "out.gguf"
    _killed(["convert", str(sources["meta"]), str(dst), "-q"], after=2)
    rerun = subprocess.run(
        [sys.executable, "-m", "llama_convert", "convert", str(sources["meta"]), str(dst), "--outtype", "f16"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" not in rerun.stderr
    reference = tmp_path / "ref.gguf"
    llama_convert.convert(sources["meta"], reference, outtype="f16")
    _same(reference, dst)


@pytest.mark.parametrize("lanes", [False, True], ids=["hashlib", "lanes"])
def test_a_killed_verification_continues_from_its_saved_md5_state(lanes, sources, tmp_path, monkeypatch):
    """The background verifier saves its running MD5 state in the journal as it goes; a rerun continues each
    source file from there instead of hashing it from the start, and still verifies every file. Both ways of
    hashing: one file per thread (OpenSSL states) and files in lockstep (md5lanes states)."""
    from llama_convert import md5lanes, md5state, verify

    if not lanes and not md5state.saveable():
        pytest.skip("this Python's OpenSSL has no MD5_Init/MD5_Update: states cannot be saved")
    if lanes and not md5lanes.available():
        pytest.skip("llama_convert._md5lanes is not built")
    settings = {"CHUNK_SIZE": 16 << 10, "STATE_EVERY": 16 << 10, "LANES": lanes}
    reference = tmp_path / "reference.gguf"
    assert main(["convert", str(sources["meta"]), str(reference), "-q", "--no-verify"]) == 0
    dst = tmp_path / "out.gguf"
    # Killed right after the verifier's 3rd saved state: a file is hashed part way, whatever the writer did.
    _killed_on = run_interrupted(
        ["convert", str(sources["meta"]), str(dst), "-q"], after=3, on=("hashing",), verify_settings=settings
    )
    assert _killed_on.returncode == -signal.SIGKILL, _killed_on.stderr
    starts: dict[str, tuple[str, tuple[int, bytes] | None]] = {}  # name → (who hashed it, where it started)
    real, real_lanes = verify.hash_file, md5lanes.hash_files

    def spy(path, **kwargs):
        starts[Path(path).name] = ("hash_file", kwargs.get("start"))
        return real(path, **kwargs)

    def spy_lanes(paths, **kwargs):
        starts.update({Path(p).name: ("lanes", kwargs["starts"].get(i)) for i, p in enumerate(paths)})
        return real_lanes(paths, **kwargs)

    for name, value in settings.items():
        monkeypatch.setattr(verify, name, value)
    monkeypatch.setattr(verify, "hash_file", spy)
    monkeypatch.setattr(md5lanes, "hash_files", spy_lanes)
    result = llama_convert.convert(sources["meta"], dst)
    assert result.verified
    continued = {name: (who, s) for name, (who, s) in starts.items() if s is not None}
    assert continued and all(offset >= 16 << 10 for _, (offset, _) in continued.values()), starts
    # saved and continued the same way: lane states in lanes, OpenSSL states in hash_file
    assert all(md5lanes.is_state(state) == lanes == (who == "lanes") for who, (_, state) in continued.values())
    _same(reference, dst)


def test_a_saved_md5_state_of_a_changed_source_is_not_used(sources, tmp_path):
    """A source changed after the kill changes the fingerprint: the rerun starts clean and hashes from byte 0,
    so a damaged shard is still caught."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sources["meta"], src)
    dst = tmp_path / "out.gguf"
    settings = {"CHUNK_SIZE": 16 << 10, "STATE_EVERY": 16 << 10}
    proc = run_interrupted(["convert", str(src), str(dst), "-q"], after=3, on=("hashing",), verify_settings=settings)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    shard = src / "consolidated.00.pth"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    rerun = subprocess.run(
        [sys.executable, "-m", "llama_convert", "convert", str(src), str(dst)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode != 0 and "consolidated.00.pth" in rerun.stderr and "md5" in rerun.stderr
    assert not dst.exists()


def _last_checkpoint(partial: Path) -> list:
    lines = (partial / ".llama-convert-journal").read_text().splitlines()
    return [e["position"] for e in map(json.loads, lines) if "checkpoint" in e][-1]


@pytest.mark.parametrize("case", ["meta-gguf", "hf-gguf", "meta-gguf-q4_k_m"])
def test_a_run_killed_part_way_into_a_tensor_continues_inside_it(case, sources, tmp_path):
    """Checkpoints fall between two pieces of a tensor too (small blocks and checkpoints here, so that the
    tiny tensors come in many pieces): the rerun continues inside that tensor, to the same bytes."""
    source, name, extra = CASES[case]
    reference = tmp_path / "reference" / name
    assert main(["convert", str(sources[source]), str(reference), "-q", *extra]) == 0
    dst = tmp_path / "resumed" / name
    small = {
        "llama_convert.execute": {"BLOCK_BYTES": 1000},
        "llama_convert.routes.gguf_plan": {"CHECKPOINT_BYTES": 3000},
    }
    proc = run_interrupted(["convert", str(sources[source]), str(dst), "-q", *extra], after=12, settings=small)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = dst.parent / f".{dst.name}.llama-convert-partial"
    _, in_tensor = _last_checkpoint(partial)
    assert in_tensor > 0, "the checkpoint should fall inside a tensor"
    # the rerun with small blocks too: whole blocks already in the file are not read again, the rest dropped
    blocks = {"llama_convert.execute": {"BLOCK_BYTES": 1000}}
    rerun = run_interrupted(["convert", str(sources[source]), str(dst), *extra], after=10**9, settings=blocks)
    assert rerun.returncode == 0, rerun.stderr
    assert "written part way" in rerun.stderr
    _same(reference, dst)
