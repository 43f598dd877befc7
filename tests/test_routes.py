"""The route table: the support matrix agrees with what ``convert`` does in every cell, every route's
``--dry-run`` prints that route's plan and writes nothing, and the README shows the generated matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny

import llama_convert
from llama_convert.cli import format_matrix, main
from llama_convert.errors import LlamaConvertError, UnsupportedError
from llama_convert.routes import ROUTES, support_matrix
from llama_convert.testing.synth import synthesize

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def sources(tmp_path_factory, model_parallel) -> dict[str, dict[str, Path]]:
    """A tiny Meta checkpoint of every family, and the Hugging Face folder we convert it to."""
    import llama4_fixtures
    import mllama_fixture

    root = tmp_path_factory.mktemp("routes")
    llama4_fixtures.cpu_threads()
    meta = {
        "llama": synthesize(root / "Llama3.1-8B-Instruct", tiny("llama3.1-8b", tokenizer="small-tiktoken")),
        "llama4": llama4_fixtures.make_checkpoint(root / "Llama-4-Scout-17B-16E-Instruct", "scout", mp=1),
        "mllama": mllama_fixture.save_checkpoint(
            mllama_fixture.build_model(mllama_fixture.SHAPE_11B),
            mllama_fixture.SHAPE_11B,
            root / "Llama3.2-11B-Vision",
            tokenizer=mllama_fixture.default_tokenizer(),
        ),
    }
    hf = {}
    for family, src in meta.items():
        hf[family] = root / f"{family}-hf"
        llama_convert.convert(src, hf[family])
    return {"meta": meta, "hf": hf}


def test_the_matrix_has_one_row_per_family_and_route(capsys):
    assert main(["formats", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["routes"]
    assert rows == support_matrix()
    cells = {(r["family"], r["from"], r["to"]) for r in rows}
    assert cells == {(f, a, b) for f in ("llama", "llama4", "mllama") for a, b in ROUTES}
    for r in rows:
        assert r["status"] in ("supported", "refused")
        assert (r["why"] == "") == (r["status"] == "supported"), r
        if r["to"] == "gguf" and r["status"] == "supported":
            assert {"bf16", "f16", "q8_0"} <= set(r["outtypes"])
    refused = {(r["family"], r["from"], r["to"]): r["why"] for r in rows if r["status"] == "refused"}
    assert "llama.cpp has no Llama 3.2 Vision (mllama) support" in refused["mllama", "meta", "gguf"]


def _cell_arguments(row: dict, sources: dict, tmp_path: Path) -> tuple[Path, Path, dict]:
    src = sources[row["from"]][row["family"]]
    if row["to"] == "gguf":
        return src, tmp_path / "out.gguf", {}
    return src, tmp_path / "out", {"to": row["to"], **({"mp": 1} if row["from"] == "meta" else {})}


@pytest.mark.parametrize("row", support_matrix(), ids=lambda r: f"{r['family']}-{r['from']}-{r['to']}")
def test_every_cell_does_what_the_matrix_says(row, sources, tmp_path):
    src, dst, options = _cell_arguments(row, sources, tmp_path)
    if row["status"] == "supported":
        result = llama_convert.convert(src, dst, **options)
        assert result.files and dst.exists()
        if row["family"] == "llama4" and row["to"] == "gguf":  # the vision projector beside the text model
            assert result.files == ("out.gguf", "mmproj-out.gguf") and (tmp_path / "mmproj-out.gguf").is_file()
        return
    with pytest.raises(UnsupportedError) as caught:
        llama_convert.convert(src, dst, **options)
    message = str(caught.value)
    assert row["why"] in message and message.count("\n") == 0
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize(
    ("source", "target", "expect"),
    [
        ("meta", "hf", "model.safetensors"),
        ("meta", "gguf", "  blk.0.attn_q.weight"),
        ("meta", "meta", "consolidated.00.pth … consolidated.01.pth"),
        ("hf", "meta", "consolidated.00.pth … consolidated.01.pth"),
        ("hf", "gguf", "  blk.0.attn_q.weight"),
    ],
)
def test_dry_run_prints_the_routes_plan_and_writes_nothing(source, target, expect, sources, tmp_path, capsys):
    src = sources[source]["llama"]
    dst = tmp_path / ("out.gguf" if target == "gguf" else "out")
    args = ["convert", str(src), str(dst), "--dry-run"]
    if target != "gguf":
        args += ["--to", target]
    if target == "meta":
        args += ["--mp", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert any(line.startswith(expect) for line in captured.out.splitlines()), captured.out[:500]
    assert "Would write" in captured.err
    if target == "gguf":
        assert "token_embd.weight" in captured.out and "model.embed_tokens" not in captured.out.split("←")[0]
    assert list(tmp_path.iterdir()) == []
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"] and plan["total_bytes"] > 0


def test_dry_run_of_a_refused_cell_refuses(sources, tmp_path, capsys):
    assert main(["convert", str(sources["meta"]["mllama"]), str(tmp_path / "v.gguf"), "--dry-run"]) == 4
    assert "llama.cpp has no Llama 3.2 Vision" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_readme_shows_the_generated_matrix():
    # Regenerate with: llama-convert formats > table (between the markers in README.md)
    text = README.read_text()
    start, end = "<!-- formats:start -->\n", "<!-- formats:end -->"
    assert start in text and end in text, "README lacks the support-matrix markers"
    shown = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert shown == format_matrix(support_matrix()), "README's matrix is stale: paste `llama-convert formats`"


def test_an_unknown_target_format_is_one_sentence(sources, tmp_path):
    with pytest.raises(LlamaConvertError, match=r"--to 'onnx' is not a format; use meta, hf, gguf\."):
        llama_convert.convert(sources["meta"]["llama"], tmp_path / "x", to="onnx")
