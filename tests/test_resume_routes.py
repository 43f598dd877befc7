"""Resume on the routes that write one long file or many side by side: Meta → GGUF, HF → GGUF, HF → Meta and
Meta → Meta. A child process kills itself (SIGKILL) right after its N-th checkpoint is on disk — a known
point, not a race — and the same command then continues from it, producing the same bytes."""

from __future__ import annotations

import filecmp
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
