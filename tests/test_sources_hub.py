"""Hub repository ids as sources: the snapshot in a huggingface_hub cache laid out as the library writes it
(blobs/, snapshots/<rev>/ symlinks into them, refs/main), offline; a repo id not in the cache is one
sentence with the download command."""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_checkpoint, tiny

from llama_convert import convert
from llama_convert.cli import main as cli_main
from llama_convert.errors import MissingFileError
from llama_convert.formats.storage import resolve_source
from llama_convert.formats.storage.hub import parse_repo_id

REVISION = "0cb88a4f764b7a12671c53f0838cd831a0843b95"


def hub_cache(cache: Path, repo: str, files: Path, *, under: str = "original") -> Path:
    """Lay ``files`` out as ``hf download REPO --include "original/*"`` leaves them: content-addressed blobs,
    a snapshot folder of relative symlinks and refs/main naming the revision. Returns the snapshot folder."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / REVISION
    (storage / "blobs").mkdir(parents=True)
    (snapshot / under).mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(REVISION)  # no newline, as the library writes it
    for path in sorted(files.iterdir()):
        blob = storage / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / under / path.name).symlink_to(os.path.relpath(blob, snapshot / under))
    return snapshot


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # A folder whose name says nothing: the repository's name has to tell instruct from base.
    synth = tiny("llama3.2-1b", tokenizer="small-tiktoken")
    return make_checkpoint(tmp_path_factory.mktemp("src"), "download", synth)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors


def test_repo_id_offline_converts_like_the_snapshot_path(cache, checkpoint, tmp_path):
    snapshot = hub_cache(cache, "meta-llama/Llama-3.2-1B-Instruct", checkpoint)
    by_path = convert(snapshot, tmp_path / "by-path")
    by_id = convert("meta-llama/Llama-3.2-1B-Instruct", tmp_path / "by-id")
    _same_tree(tmp_path / "by-path", tmp_path / "by-id")
    assert by_id.verified and by_path.verified
    assert by_id.spec.instruct  # from the repository's name: the checkpoint folder is named "original"
    pinned = convert(f"meta-llama/Llama-3.2-1B-Instruct@{REVISION}", tmp_path / "pinned")
    assert pinned.spec.instruct
    _same_tree(tmp_path / "by-path", tmp_path / "pinned")


def test_a_checkpoint_at_the_snapshot_root_is_named_by_the_repository(cache, checkpoint, tmp_path):
    hub_cache(cache, "someone/Llama-3.2-1B-Instruct-meta", checkpoint, under="")
    result = convert("someone/Llama-3.2-1B-Instruct-meta", tmp_path / "out")
    assert result.spec.instruct
    assert any(e.topic == "variant" and "Llama-3.2-1B-Instruct-meta" in e.because for e in result.spec.evidence)


def test_repo_id_cache_from_hf_hub_cache(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache(tmp_path / "elsewhere", "meta-llama/Llama-3.2-1B", checkpoint)
    assert cli_main(["meta-llama/Llama-3.2-1B", str(tmp_path / "out"), "-q"]) == 0
    assert (tmp_path / "out" / "config.json").is_file()


def test_missing_repo_id_is_one_sentence_with_the_download_command(cache, tmp_path, capsys):
    with pytest.raises(MissingFileError) as caught:
        convert("meta-llama/Llama-3.1-8B-Instruct", tmp_path / "out")
    assert str(caught.value) == (
        f"meta-llama/Llama-3.1-8B-Instruct is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
        'download it with hf download meta-llama/Llama-3.1-8B-Instruct --include "original/*".'
    )
    assert cli_main(["meta-llama/Llama-3.1-8B@v1.0", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith('hf download meta-llama/Llama-3.1-8B --revision v1.0 --include "original/*".')
    assert not (tmp_path / "out").exists()


def test_an_existing_local_path_wins_over_a_repo_id(cache, checkpoint, tmp_path, monkeypatch):
    hub_cache(cache, "meta-llama/Llama-3.2-1B-Instruct", checkpoint)
    hub_cache(cache, "meta-llama/Llama-3.2-1B", checkpoint)
    local = tmp_path / "meta-llama" / "Llama-3.2-1B-Instruct"
    shutil.copytree(checkpoint, local)
    monkeypatch.chdir(tmp_path)
    assert resolve_source("meta-llama/Llama-3.2-1B-Instruct") == Path("meta-llama/Llama-3.2-1B-Instruct")
    assert str(resolve_source("meta-llama/Llama-3.2-1B")).startswith(str(cache))  # no such folder: the cache
    monkeypatch.chdir(tmp_path / "meta-llama")
    assert resolve_source("./Llama-3.2-1B-Instruct") == Path("Llama-3.2-1B-Instruct")


@pytest.mark.parametrize(
    ("text", "repo"),
    [
        ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("meta-llama/Llama-3.1-8B@main", "meta-llama/Llama-3.1-8B@main"),
        ("./meta-llama/Llama-3.1-8B", None),
        ("/models/Llama", None),
        ("a/b/c", None),
        ("s3://bucket/key", None),
        ("Llama-3.1-8B", None),
        ("../x", None),
    ],
)
def test_what_counts_as_a_repo_id(text, repo):
    parsed = parse_repo_id(text)
    assert (None if parsed is None else str(parsed)) == repo
