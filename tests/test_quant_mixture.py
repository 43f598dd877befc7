"""llama-quantize's per-tensor type mixture, and a quantized Meta → GGUF file read back.

The tables (tests/data/quants/mixture_*.json) were made by ``benchmarks/compat_quant.py tables``: llama.cpp's
own ``llama-quantize`` (built from the llama-cpp-python 0.3.36 sdist) run at every file type on small GGUF
files named as llama.cpp names tensors — 32 layers, 80 layers with GQA (the 70B rule), tied embeddings,
narrow rows (the fallbacks, down to F16), Llama 4-like MoE (``ffn_*_exps``, router ``ffn_gate_inp``, shared
experts ``ffn_*_shexp``; 16 experts in every layer, 128 in every other one) and an 8-expert llama.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

import llama_convert
from llama_convert.formats.gguf.mixture import FILE_TYPES, ModelFacts, choose_types, quantize_order, type_table
from llama_convert.formats.gguf.reader import describe_gguf
from llama_convert.testing.synth import synthesize, write_small_sentencepiece

T = GGMLQuantizationType
TABLES = sorted((Path(__file__).parent / "data" / "quants").glob("mixture_*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem.removeprefix("mixture_"))
def test_mixture_matches_llama_quantize(path: Path) -> None:
    table = _load(path)
    facts = ModelFacts(**table["facts"])
    tensors = [(name, tuple(shape), T[qtype]) for name, shape, qtype in table["tensors"]]
    assert table["types"], "the table holds no file type"
    for outtype, expected in table["types"].items():
        got = choose_types(tensors, outtype, facts)
        want = dict(zip([t[0] for t in tensors], expected.split(), strict=True))
        wrong = {n: (got[n].name, want[n]) for n in want if got[n].name != want[n]}
        assert not wrong, f"{outtype}: (ours, llama-quantize) {dict(list(wrong.items())[:8])}"


def test_tables_cover_the_cases() -> None:
    names = {p.stem.removeprefix("mixture_") for p in TABLES}
    assert {"dense32", "llama70b", "tied16", "narrow", "moe16", "moe128", "moe8"} <= names
    for p in TABLES:
        assert set(_load(p)["types"]) == set(FILE_TYPES) - {"bf16", "f16"}


def test_table_shows_the_rules() -> None:
    """A few of llama-quantize's rules, visible in the tables (so that the tables are what they claim)."""
    dense = _load(TABLES[0].with_name("mixture_dense32.json"))
    classes = {outtype: _classes(dense, outtype) for outtype in dense["types"]}
    assert classes["q4_k_m"]["attn_v"] == {"Q4_K": 16, "Q6_K": 16}  # use_more_bits
    assert classes["q4_k_m"]["output"] == {"Q6_K": 1} and classes["q4_k_m"]["token_embd"] == {"Q4_K": 1}
    assert classes["q3_k_m"]["attn_v"] == {"Q4_K": 30, "Q5_K": 2}
    big = _classes(_load(TABLES[0].with_name("mixture_llama70b.json")), "q4_k_m")
    assert big["attn_v"] == {"Q5_K": 40, "Q6_K": 40}  # the 70B rule: the other attn_v Q4_K → Q5_K
    tied = _classes(_load(TABLES[0].with_name("mixture_tied16.json")), "q4_k_m")
    assert tied["token_embd"] == {"Q6_K": 1}
    narrow = _classes(_load(TABLES[0].with_name("mixture_narrow.json")), "q2_k")
    assert narrow["ffn_gate"] == {"Q4_0": 8} and narrow["ffn_down"] == {"F16": 8}  # Q2_K → Q4_0; 200 → F16
    moe = _classes(_load(TABLES[0].with_name("mixture_moe16.json")), "q4_k_m")
    assert moe["ffn_down"] == {"Q4_K": 8, "Q6_K": 8}  # _exps and _shexp by layer
    assert moe["other"] == {"F32": 8 * 2 + 1}  # norms
    assert moe["ffn_gate"] == {"F32": 8, "Q4_K": 16}  # the router ffn_gate_inp stays F32; _exps and _shexp


def _classes(table: dict, outtype: str) -> dict:
    names = [t[0] for t in table["tensors"]]
    return type_table(dict(zip(names, (T[q] for q in table["types"][outtype].split()), strict=True)))


def test_order_is_llama_quantize_order() -> None:
    names = ["blk.10.attn_q.weight", "token_embd.weight", "blk.2.ffn_up.weight", "blk.2.attn_k.weight", "output.weight"]
    assert quantize_order(names) == [
        "output.weight",
        "token_embd.weight",
        "blk.2.attn_k.weight",
        "blk.2.ffn_up.weight",
        "blk.10.attn_q.weight",
    ]


# --- a quantized file, end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama2_checkpoint(tmp_path_factory) -> Path:
    from conftest import tiny

    root = tmp_path_factory.mktemp("quant")
    spm = write_small_sentencepiece(root / "spm")
    # head_dim 16: width 512 (whole super-blocks) and ffn 1376 (not: ffn_down falls back)
    spec = tiny("llama2-7b", head_dim=16, n_layers=2, tokenizer=spm, vocab_size=512)
    return synthesize(root / "llama-2-7b", spec)


@pytest.mark.parametrize("outtype", ["Q4_K_M", "q3_k_s", "Q5_0"])
def test_quantized_meta_to_gguf_reads_back(llama2_checkpoint: Path, tmp_path: Path, outtype: str) -> None:
    from conftest import merged_meta_state_dict
    from test_gguf_llama import meta_name

    dst = tmp_path / "out.gguf"
    plan = llama_convert.plan(llama2_checkpoint, dst, to="gguf", outtype=outtype)
    assert any("type mixture" in line for line in plan.lines())
    llama_convert.convert(llama2_checkpoint, dst, to="gguf", outtype=outtype)
    reader = GGUFReader(dst)
    assert int(reader.fields["general.file_type"].contents()) == int(FILE_TYPES[outtype.lower()][0])
    assert reader.fields["general.quantization_version"].contents() == 2
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert keys[-2:] == ["general.quantization_version", "general.file_type"]  # where llama-quantize puts them
    tensors = [(t.name, tuple(int(s) for s in reversed(t.shape)), t.tensor_type) for t in reader.tensors]
    assert [t[0] for t in tensors] == quantize_order([t[0] for t in tensors])
    params = json.loads((llama2_checkpoint / "params.json").read_text())
    facts = ModelFacts(params["n_layers"], params["n_heads"], params.get("n_kv_heads", params["n_heads"]))
    base = [(n, s, T.F32 if q == T.F32 else T.BF16) for n, s, q in tensors]
    assert {n: q for n, _, q in tensors} == choose_types(base, outtype, facts)
    meta = merged_meta_state_dict(llama2_checkpoint, 1)
    for t in reader.tensors:
        want = meta[meta_name(t.name)].float().numpy()
        got = dequantize(t.data, t.tensor_type).reshape(want.shape)
        err = np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2))
        assert err < {T.F32: 1e-7}.get(t.tensor_type, 0.2), (t.name, t.tensor_type.name, err)
    report = describe_gguf(dst)
    assert not report.problems and report.class_types["attn_q"]


def test_unknown_outtype_is_refused(llama2_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(llama_convert.UnsupportedError, match="q4_k_m"):
        llama_convert.plan(llama2_checkpoint, tmp_path / "x.gguf", to="gguf", outtype="IQ2_XXS")


def test_hf_route_gives_the_same_tensors(llama2_checkpoint: Path, tmp_path: Path) -> None:
    """HF folder → Q4_K_M holds the bytes Meta → Q4_K_M holds (the HF rows are un-permuted first)."""
    hf = tmp_path / "hf"
    llama_convert.convert(llama2_checkpoint, hf)
    ours, from_hf = tmp_path / "meta.gguf", tmp_path / "hf.gguf"
    llama_convert.convert(llama2_checkpoint, ours, to="gguf", outtype="q4_k_m")
    llama_convert.convert(hf, from_hf, outtype="Q4_K_M")
    a, b = GGUFReader(ours), GGUFReader(from_hf)
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)), x.name


def test_cli_dry_run_shows_the_mixture(llama2_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from llama_convert.cli import main

    assert main(["convert", str(llama2_checkpoint), str(tmp_path / "x.gguf"), "--outtype", "Q4_K_M", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "type mixture of Q4_K_M" in out and "attn_v: 1 Q4_K, 1 Q6_K" in out
    assert not (tmp_path / "x.gguf").exists()


def test_model_facts_from_config() -> None:
    from llama_convert.routes.gguf_plan import model_facts

    dense = model_facts({"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8}, "llama")
    assert dense == ModelFacts(80, 64, 8, 0, "llama") and dense.is_70b and dense.n_gqa == 8
    text = {"num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "num_local_experts": 16}
    moe = model_facts({"text_config": text}, "llama4")
    assert moe == ModelFacts(48, 40, 8, 16, "llama4") and not moe.is_70b
