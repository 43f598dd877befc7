"""Detection from the files alone: params variants, folder-name hints, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny

from llama_convert import detect
from llama_convert.errors import InputError
from llama_convert.formats.meta.folder import parse_params
from llama_convert.testing.synth import synthesize


@pytest.fixture(scope="module")
def llama31(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("spec") / "checkpoint", tiny("llama3.1-8b", tokenizer="small-tiktoken"))


def renamed(src: Path, tmp_path: Path, name: str) -> Path:
    """The same files under another folder name (symlinks: no copy)."""
    folder = tmp_path / name
    folder.mkdir()
    for f in src.iterdir():
        (folder / f.name).symlink_to(f)
    return folder


@pytest.mark.parametrize(
    ("name", "version", "instruct"),
    [
        ("Meta-Llama-3.1-8B-Instruct", "3.1", True),
        ("Llama3.1-8B", "3.1", False),
        ("Llama3.3-70B-Instruct", "3.3", True),
        ("llama3_2-1b", "3.2", False),
    ],
)
def test_version_and_kind_from_folder_name(llama31, tmp_path, name, version, instruct):
    spec = detect(renamed(llama31, tmp_path, name))
    assert (spec.release.version, spec.instruct) == (version, instruct)
    assert name in spec.instruct_reason


def test_a_name_that_says_nothing_converts_as_base_and_says_so(llama31, tmp_path):
    spec = detect(renamed(llama31, tmp_path, "my-model"))
    assert (spec.release.version, spec.instruct) == ("3.1", False)  # scaled rope, untied → 3.1 (3.3 looks the same)
    assert any("pass --instruct" in note for note in spec.notes)


def test_overrides(llama31):
    spec = detect(llama31, llama_version="3.3", instruct=True)
    assert (spec.release.version, spec.instruct, spec.version_reason, spec.instruct_reason) == (
        "3.3",
        True,
        "--llama-version",
        "--instruct",
    )


def test_a_llama3_name_on_unscaled_params_is_refused(llama31, tmp_path):
    folder = renamed(llama31, tmp_path, "Llama3.2-1B")
    params = json.loads((llama31 / "params.json").read_text())
    params.pop("use_scaled_rope")
    (folder / "params.json").unlink()
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(InputError, match=r"no use_scaled_rope, which Llama 3\.2 always sets"):
        detect(folder)


def test_params_variants():
    nested = parse_params({"model": {"dim": 4096, "n_layers": 32, "n_heads": 32, "norm_eps": 1e-6}}, Path("p"))
    assert (nested.dim, nested.n_kv_heads, nested.vocab_size, nested.rope_theta) == (4096, 32, None, None)
    llama2 = parse_params({"dim": 8, "n_layers": 1, "n_heads": 2, "vocab_size": -1, "multiple_of": 4}, Path("p"))
    assert llama2.vocab_size is None and llama2.multiple_of == 4
    with pytest.raises(InputError, match="lacks the key 'n_layers'"):
        parse_params({"dim": 8, "n_heads": 2}, Path("p"))
    with pytest.raises(InputError, match="do not divide evenly"):
        parse_params({"dim": 10, "n_layers": 1, "n_heads": 4}, Path("p"))
    with pytest.raises(InputError, match="'use_scaled_rope' is 'yes'"):
        parse_params({"dim": 8, "n_layers": 1, "n_heads": 2, "use_scaled_rope": "yes"}, Path("p"))
