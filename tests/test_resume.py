"""Automatic resume: a conversion killed mid-run continues from the files it proved complete."""

from __future__ import annotations

import errno
import filecmp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny
from interrupted import run_interrupted

import llama_convert
from llama_convert.errors import DiskFullError
from llama_convert.testing.synth import synthesize

SHARD = "1MB"  # ~8 output files for the ~8 MB source


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    spec = tiny("llama3.1-8b", head_dim=8, n_layers=4, fill="fast", tokenizer="small-tiktoken")
    return synthesize(root / "Llama3.1-8B-Instruct", spec)


def _args(src: Path, dst: Path, *extra: str) -> list[str]:
    return ["convert", str(src), str(dst), "--max-shard-size", SHARD, *extra]


def _cli(src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llama_convert", *_args(src, dst, *extra)]


def _journal_entries(dst: Path) -> int:
    journal = dst.parent / f".{dst.name}.llama-convert-partial" / ".llama-convert-journal"
    try:
        return sum('"file"' in line for line in journal.read_text().splitlines()[1:])
    except OSError:
        return 0


def _kill_after(src: Path, dst: Path, files: int) -> None:
    """SIGKILL right after the ``files``-th output file is recorded: nothing runs, the staging folder and its
    journal stay."""
    proc = run_interrupted(_args(src, dst), after=files)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _journal_entries(dst) == files


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.fixture(scope="module")
def uninterrupted(source, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("clean") / "out"
    llama_convert.convert(source, dst, max_shard_size=SHARD)
    return dst


def test_kill_9_then_the_same_command_resumes(source, uninterrupted, tmp_path):
    dst = tmp_path / "out"
    _kill_after(source, dst, files=3)
    assert not dst.exists()
    kept = _journal_entries(dst)
    rerun = subprocess.run(_cli(source, dst), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed an interrupted run: kept {kept} of " in rerun.stderr
    _same_tree(dst, uninterrupted)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging, journal or lock left


def test_changed_source_or_no_resume_starts_over(source, uninterrupted, tmp_path):
    dst = tmp_path / "out"
    _kill_after(source, dst, files=2)
    result = llama_convert.convert(source, dst, max_shard_size=SHARD, resume=False)
    assert result.resumed_bytes == 0 and not any("resumed" in n for n in result.notes)
    _same_tree(dst, uninterrupted)

    other = tmp_path / "other"
    _kill_after(source, other, files=2)
    result = llama_convert.convert(source, other, max_shard_size="700KB")  # other options: other plan
    assert result.resumed_bytes == 0


def test_full_disk_keeps_completed_files_and_the_rerun_continues(source, uninterrupted, tmp_path, monkeypatch):
    from llama_convert.formats.hf import safetensors_writer

    real_init = safetensors_writer.SafetensorsWriter.__init__

    def full_at_the_fifth_file(self, path, *args, **kwargs):
        if Path(path).name.startswith("model-00005-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_init(self, path, *args, **kwargs)

    dst = tmp_path / "out"
    monkeypatch.setattr(safetensors_writer.SafetensorsWriter, "__init__", full_at_the_fifth_file)
    with pytest.raises(DiskFullError, match="4 completed file"):
        llama_convert.convert(source, dst, max_shard_size=SHARD)
    monkeypatch.setattr(safetensors_writer.SafetensorsWriter, "__init__", real_init)
    assert not dst.exists()
    result = llama_convert.convert(source, dst, max_shard_size=SHARD)
    assert result.resumed_bytes > 0
    _same_tree(dst, uninterrupted)


def test_the_journal_keeps_the_last_md5_state_of_each_file(tmp_path):
    from llama_convert.resume import Journal

    journal = Journal(tmp_path, "fp")
    journal.start()
    journal.hashing("consolidated.00.pth", 256, b"\x01" * 92)
    journal.hashing("consolidated.01.pth", 256, b"\x02" * 92)
    journal.hashing("consolidated.00.pth", 512, b"\x03" * 92)
    with open(journal.path, "a", encoding="utf-8") as f:  # a torn or foreign line is ignored
        f.write('{"hashing": "consolidated.01.pth", "offset": 768, "md5_state": "zz"}\n{"hashing": 3}\n')
    assert journal.partial_hashes() == {
        "consolidated.00.pth": (512, b"\x03" * 92),
        "consolidated.01.pth": (256, b"\x02" * 92),
    }
    assert Journal(tmp_path, "another fingerprint").partial_hashes() == {}


def test_a_torn_journal_line_is_skipped_and_the_lines_before_it_are_kept(tmp_path):
    """Journal lines are not fsync'd: after a power loss the last one may be cut short or hold garbage. The
    complete files recorded before it are kept, the torn line is not trusted."""
    from llama_convert.resume import Journal

    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / name).write_bytes(os.urandom(3000))
    journal = Journal(tmp_path, "fp")
    journal.start()
    journal.record("a.safetensors")
    journal.record("b.safetensors")
    lines = journal.path.read_bytes().splitlines(keepends=True)
    journal.path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2] + b"\x00\xff\x00")
    assert set(journal.completed()) == {"a.safetensors"}
    journal.path.write_bytes(lines[0][:-5])  # the fingerprint line itself torn: nothing is kept
    assert journal.completed() == {}


def test_hash_file_continues_from_any_saved_state(tmp_path):
    import hashlib

    from llama_convert import md5state, verify

    if not md5state.saveable():
        pytest.skip("this Python's OpenSSL has no MD5_Init/MD5_Update: states cannot be saved")
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(300_001))
    want = hashlib.md5(path.read_bytes()).hexdigest()
    states: list[tuple[int, bytes]] = []
    old = verify.STATE_EVERY
    verify.STATE_EVERY = 50_000
    try:
        assert verify.hash_file(path, chunk_size=30_000, on_state=lambda o, s: states.append((o, s))) == want
    finally:
        verify.STATE_EVERY = old
    assert [o for o, _ in states] == [60_000, 120_000, 180_000, 240_000, 300_000]
    for offset, state in states:
        hashed = []
        assert verify.hash_file(path, chunk_size=30_000, start=(offset, state), progress=hashed.append) == want
        assert sum(hashed) == 300_001 - offset
