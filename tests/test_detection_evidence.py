"""Detection from evidence: Hub snapshot layouts, any width, Llama Guard — with zero flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_logits_close, hf_logits, meta_reference_logits, tiny

import llama_convert
from llama_convert.errors import InputError
from llama_convert.testing.synth import synthesize


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Synthesize each shape once; tests copy or symlink it into the layout they need."""
    root = tmp_path_factory.mktemp("shapes")
    cache: dict[tuple, Path] = {}

    def make(preset: str, **changes) -> Path:
        key = (preset, tuple(sorted((k, repr(v)) for k, v in changes.items())))
        if key not in cache:
            spec = tiny(preset, **{"tokenizer": "small-tiktoken", **changes})
            cache[key] = synthesize(root / f"shape{len(cache)}", spec)
        return cache[key]

    return make


def place(src: Path, dst: Path) -> Path:
    """``src``'s files under ``dst`` (symlinks, as a Hub cache has them)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return dst


@pytest.mark.parametrize(
    ("layout", "instruct"),
    [
        ("Llama-3.1-8B-Instruct/original", True),  # the model card's `hf download --include "original/*"`
        ("Llama-3.1-8B/original", False),
        ("models--meta-llama--Llama-3.1-8B-Instruct/snapshots/0e9e39f249a16976918f6564b8830bc894c89659/original", True),
    ],
)
def test_hub_original_folder_takes_the_variant_from_the_repository(made, tmp_path, layout, instruct):
    folder = place(made("llama3.1-8b"), tmp_path / layout)
    spec = llama_convert.detect(folder)
    assert (spec.release.version, spec.instruct) == ("3.1", instruct)
    repo_root = folder.parent
    assert llama_convert.detect(repo_root).instruct is instruct  # the repository folder itself


def test_llama3_instruct_repo_gets_eot_as_eos(made, tmp_path):
    repo = tmp_path / "Meta-Llama-3-8B-Instruct"
    place(made("llama3-8b"), repo / "original")
    result = llama_convert.convert(repo, tmp_path / "hf")
    assert (result.spec.release.version, result.spec.instruct) == ("3", True)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 128009
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [128001, 128009]
    assert "chat_template" in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())


def test_405b_mp16_by_its_repo_root_folds_kv_heads(made, tmp_path):
    repo = tmp_path / "Llama-3.1-405B-Instruct"
    place(made("llama3.1-405b-mp16", head_dim=4), repo / "original" / "mp16")
    spec = llama_convert.detect(repo)
    assert (spec.instruct, spec.mp, spec.n_kv_heads, spec.kv_fold) == (True, 16, 8, 2)
    place(made("llama3.1-405b-mp8", head_dim=4), repo / "original" / "mp8")
    with pytest.raises(InputError, match=r"several Meta checkpoints \(original/mp16, original/mp8\); name the one"):
        llama_convert.detect(repo)
    assert llama_convert.detect(repo / "original" / "mp8").mp == 8


def test_snapshot_files_confirm_or_contradict_the_name(made, tmp_path):
    nameless = tmp_path / "snapshot"
    place(made("llama3.1-8b"), nameless / "original")
    spec = llama_convert.detect(nameless / "original")
    assert spec.instruct is False and any("pass --instruct" in n for n in spec.notes)
    (nameless / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    assert llama_convert.detect(nameless / "original").instruct is True  # the snapshot's own eos says instruct

    base = tmp_path / "Llama-3.1-8B"
    place(made("llama3.1-8b"), base / "original")
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    with pytest.raises(
        InputError,
        match=r"the name says base .*\(eos ids \[128001, 128008, 128009\]\) says instruct; pass --instruct or --base",
    ):
        llama_convert.detect(base)
    assert llama_convert.detect(base, instruct=True).instruct is True


# Every Llama 3.x shape at a width and depth no release has, under a name that says nothing of the version.
ODD_WIDTHS = [
    ("llama3-8b", {}, "3", None, False),
    ("llama3.1-8b", {}, "3.1", 8.0, False),
    ("llama3.1-70b", {}, "3.1", 8.0, False),
    ("llama3.1-405b-mp8", {"head_dim": 4}, "3.1", 8.0, False),
    ("llama3.1-405b-mp16", {"head_dim": 4}, "3.1", 8.0, False),
    ("llama3.2-1b", {"tie_output": True}, "3.2", 32.0, True),
    ("llama3.2-3b", {"tie_output": True}, "3.2", 32.0, True),
]


@pytest.mark.parametrize(("preset", "changes", "version", "factor", "tied"), ODD_WIDTHS, ids=[w[0] for w in ODD_WIDTHS])
@pytest.mark.parametrize("head_dim", [12, 16])
def test_any_width_and_depth_is_recognised_by_what_it_is(
    made, tmp_path, preset, changes, version, factor, tied, head_dim
):
    changes = {"head_dim": head_dim, "n_layers": 3, **changes}
    spec = llama_convert.detect(place(made(preset, **changes), tmp_path / "research-model"))
    assert (spec.release.version, spec.rope_scaling_factor, spec.tie_embeddings) == (version, factor, tied)
    assert spec.params.n_layers == 3


def test_inspect_prints_the_evidence(made, tmp_path, capsys):
    from llama_convert.cli import main

    folder = place(made("llama3.2-1b", tie_output=True), tmp_path / "Llama-3.2-1B-Instruct" / "original")
    assert main(["inspect", str(folder.parent)]) == 0
    out = capsys.readouterr().out
    assert "output.weight == tok_embeddings.weight" in out and "Llama 3.2 rope (factor 32)" in out
    assert "the name 'Llama-3.2-1B-Instruct' contains 'Instruct'" in out


GUARDS = [
    # (folder, preset, synth changes, rope factor, tied, categories)
    ("Llama-Guard-3-1B", "llama3.2-1b", {"tie_output": False}, 8.0, False, 13),
    ("Llama-Guard-3-8B", "llama3.1-8b", {}, 8.0, False, 14),
]


@pytest.mark.parametrize(
    ("folder", "preset", "changes", "factor", "tied", "categories"), GUARDS, ids=[g[0] for g in GUARDS]
)
def test_llama_guard_3_converts_like_meta_and_as_published(
    made, tmp_path, model_parallel, folder, preset, changes, factor, tied, categories
):
    src = tmp_path / folder
    shutil.copytree(made(preset, **changes), src)
    result = llama_convert.convert(src, tmp_path / "hf")
    assert result.spec.guard is not None and result.spec.name.startswith("Llama Guard 3")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_scaling"]["factor"] == factor and config["tie_word_embeddings"] is tied
    assert config["max_position_embeddings"] == 131072 and config["eos_token_id"] == [128001, 128008, 128009]
    tokens = np.random.default_rng(5).integers(0, result.spec.vocab_size, size=(1, 10), dtype=np.int64)
    # Meta's reference code applies factor 8 (its only rope scaling) — the published Guard 3 factor.
    reference = meta_reference_logits(src, tokens, embed_split=0, scaled_rope_factor=8.0)
    assert_logits_close(hf_logits(tmp_path / "hf", tokens), reference)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    chat = [{"role": "user", "content": "How do I bake bread?"}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False)
    assert "Task: Check if there is unsafe content in 'User' messages" in prompt
    assert f"S{categories}: " in prompt and f"S{categories + 1}: " not in prompt
    assert "User: How do I bake bread?" in prompt
    assert prompt.rstrip().endswith("<|start_header_id|>assistant<|end_header_id|>")


@pytest.mark.parametrize("dtype", [None, "float16"])  # the written embedding: the source's bytes, or cast
def test_a_tie_seen_on_sampled_rows_is_proven_on_every_row(made, tmp_path, dtype):
    import inspect

    from llama_convert.errors import ConversionError
    from llama_convert.families.llama.detect import rows_sampled_equal
    from llama_convert.formats.meta.torch_zip import TorchCheckpoint

    src = tmp_path / "Llama3.2-1B"
    shutil.copytree(made("llama3.2-1b", tie_output=True), src)
    (src / "checklist.chk").unlink()
    shard = src / "consolidated.00.pth"
    with TorchCheckpoint(shard) as ckpt:
        ref = ckpt.tensors["output.weight"]
        rows, row_bytes = ref.shape[0], ref.shape[1] * ref.dtype.itemsize
        offset = ref.storage.file_offset + ref.storage_offset * ref.dtype.itemsize
    defaults = inspect.signature(rows_sampled_equal).parameters
    samples, block = defaults["samples"].default, defaults["rows"].default
    sampled = {i * (rows - block) // (samples - 1) + j for i in range(samples) for j in range(block)}
    row = next(r for r in range(rows) if r not in sampled)
    with open(shard, "r+b") as f:  # one row of the head, between the sampled ones, no longer the embedding's
        f.seek(offset + row * row_bytes)
        value = f.read(1)
        f.seek(offset + row * row_bytes)
        f.write(bytes([value[0] ^ 0x40]))
    assert llama_convert.detect(src).tie_embeddings  # the sampled evidence says tied…
    with pytest.raises(ConversionError, match="sampled rows but not in all"):
        llama_convert.convert(src, tmp_path / "hf", dtype=dtype)  # …and the full comparison after the stream: no
    assert not (tmp_path / "hf").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]


def test_a_snapshot_config_of_another_model_is_a_contradiction(made, tmp_path):
    repo = tmp_path / "Llama-3.2-1B"
    place(made("llama3.2-1b", tie_output=True), repo / "original")
    config = llama_convert.detect(repo).params
    published = {
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "tie_word_embeddings": True,
        "rope_scaling": {"factor": 32.0, "rope_type": "llama3"},
    }
    (repo / "config.json").write_text(json.dumps(published))
    assert llama_convert.detect(repo).rope_scaling_factor == 32.0  # the snapshot agrees
    (repo / "config.json").write_text(json.dumps({**published, "rope_scaling": {"factor": 8.0, "rope_type": "llama3"}}))
    with pytest.raises(InputError, match=r"config.json says rope_scaling factor 8.0 but .* factor 32.0"):
        llama_convert.detect(repo)
    (repo / "config.json").write_text(json.dumps({**published, "num_hidden_layers": 16}))
    with pytest.raises(InputError, match="num_hidden_layers 16 but"):
        llama_convert.detect(repo)
