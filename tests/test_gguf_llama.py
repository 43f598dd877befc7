"""Meta → GGUF for Llama: what llama.cpp's converter writes (a table captured from it), Meta's weights, and
llama.cpp's own quantiser.

The table (tests/data/gguf_llamacpp.json) was captured by ``benchmarks/compat_gguf.py --capture`` from
llama.cpp's ``convert_hf_to_gguf.py`` run on our Hugging Face output of the same synthesized checkpoints
(the shapes of compat_llamacpp.py: head_dim 8, 2 layers, each release's heads, KV heads, MP layout and real
tokenizer). The weights are checked against Meta's shards merged with torch, and Q8_0 against ``gguf.quants``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import merged_meta_state_dict, tiny
from gguf import GGMLQuantizationType, GGUFReader, quants

import llama_convert
from llama_convert.formats.gguf.reader import read_header
from llama_convert.testing.synth import bundled_llama3_tokenizer, synthesize, write_small_sentencepiece

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

TABLE = json.loads((Path(__file__).parent / "data" / "gguf_llamacpp.json").read_text())
# Derived by gguf's Metadata heuristics from a folder name (llama.cpp: the HF folder's; ours: the model's name).
NAMING_KEYS = {"general.name", "general.basename", "general.finetune", "general.size_label"}
CASES = {  # table key → (synth preset, Meta folder name, embedding split dim)
    "3.1-8b-instruct": ("llama3.1-8b", "Llama3.1-8B-Instruct", 0),
    "3.2-1b": ("llama3.2-1b", "Llama3.2-1B", 0),
    "3.1-70b-mp8": ("llama3.1-70b", "Llama3.1-70B", 0),
    "2-7b-chat": ("llama2-7b", "llama-2-7b-chat", 1),
}
GGUF_TO_META = {
    "attn_norm": "attention_norm.weight",
    "attn_q": "attention.wq.weight",
    "attn_k": "attention.wk.weight",
    "attn_v": "attention.wv.weight",
    "attn_output": "attention.wo.weight",
    "ffn_norm": "ffn_norm.weight",
    "ffn_gate": "feed_forward.w1.weight",
    "ffn_up": "feed_forward.w3.weight",
    "ffn_down": "feed_forward.w2.weight",
}
GLOBAL = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}

needs_llama3 = pytest.mark.skipif(bundled_llama3_tokenizer() is None, reason="needs llama-models' tokenizer.model")


def meta_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL:
        return GLOBAL[gguf_name]
    _, layer, kind, _ = gguf_name.split(".")
    return f"layers.{layer}.{GGUF_TO_META[kind]}"


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    return write_small_sentencepiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, spm_model) -> dict[str, Path]:
    """The four synthesized checkpoints, as compat_gguf.py makes them."""
    if bundled_llama3_tokenizer() is None:
        pytest.skip("needs llama-models' tokenizer.model")
    root = tmp_path_factory.mktemp("gguf-meta")
    out = {}
    for key, (preset, folder, _) in CASES.items():
        llama2 = preset.startswith("llama2")
        spec = tiny(preset, **({"tokenizer": spm_model, "vocab_size": 512} if llama2 else {"tokenizer": "llama3"}))
        out[key] = synthesize(root / folder, spec)
    return out


@pytest.fixture(scope="module")
def gguf_files(checkpoints, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Our GGUF of each checkpoint in bf16, and the Llama 2 one in f16 and q8_0 too."""
    root = tmp_path_factory.mktemp("gguf-out")
    wanted = [(k, "bf16") for k in CASES] + [("2-7b-chat", "f16"), ("2-7b-chat", "q8_0")]
    out = {}
    for key, outtype in wanted:
        out[key, outtype] = root / f"{key}.{outtype}.gguf"
        llama_convert.convert(checkpoints[key], out[key, outtype], outtype=outtype, verify=False)
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, spm_model) -> dict[str, tuple[Path, int, dict[str, Path]]]:
    """Model-parallel layouts with small vocabularies (fast to read): Llama 3.1 70B-shaped MP8 (embedding split
    on dim 0) and Llama 2 13B-shaped MP2 (split on dim 1), each in bf16, f16 and q8_0."""
    root = tmp_path_factory.mktemp("gguf-mp")
    specs = {
        "Llama3.1-70B": (tiny("llama3.1-70b", tokenizer="small-tiktoken"), 0),
        "llama-2-13b": (tiny("llama2-13b", tokenizer=spm_model, vocab_size=512), 1),
    }
    out = {}
    for folder, (spec, split) in specs.items():
        src = synthesize(root / folder, spec)
        files = {t: root / f"{folder}.{t}.gguf" for t in ("bf16", "f16", "q8_0")}
        for outtype, path in files.items():
            llama_convert.convert(src, path, outtype=outtype, verify=False)
        out[folder] = (src, split, files)
    return out


def fingerprint_like_table(value):
    import hashlib

    if isinstance(value, list):
        text = json.dumps([v if not isinstance(v, float) else float(np.float32(v)).hex() for v in value])
        return {"len": len(value), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    if isinstance(value, float):
        return {"f32": float(np.float32(value)).hex()}
    return value


@needs_llama3
@pytest.mark.parametrize(
    ("key", "outtype"), [*[(k, "bf16") for k in CASES], ("2-7b-chat", "f16"), ("2-7b-chat", "q8_0")]
)
def test_metadata_and_tensor_types_equal_llamacpp(gguf_files, key, outtype):
    # read_header parses what GGUFReader parses (checked in test_gguf_file.py), in a second instead of 20
    fields, infos = read_header(gguf_files[key, outtype])
    ours = {k: [types, fingerprint_like_table(v)] for k, (types, v) in fields.items()}
    theirs = TABLE[key][outtype]["metadata"]
    assert set(ours) - NAMING_KEYS == set(theirs) - NAMING_KEYS
    # (a changed chat template or tokenizer makes this fail until the table is captured again)
    different = {k: (ours[k], theirs[k]) for k in ours if k not in NAMING_KEYS and ours[k] != theirs[k]}
    assert different == {}
    tensors = {t.name: [t.qtype.name, list(t.shape)] for t in infos}
    expected = {n: v[:2] for n, v in TABLE[key][outtype]["tensors"].items()}
    assert tensors == expected


@needs_llama3
def test_rope_freqs_bytes_equal_llamacpp(gguf_files):
    import hashlib

    for key in ("3.1-8b-instruct", "3.2-1b", "3.1-70b-mp8"):
        info = next(t for t in read_header(gguf_files[key, "bf16"])[1] if t.name == "rope_freqs.weight")
        data = np.fromfile(gguf_files[key, "bf16"], dtype=np.uint8, count=info.nbytes, offset=info.offset)
        assert hashlib.sha256(data.tobytes()).hexdigest() == TABLE[key]["bf16"]["tensors"]["rope_freqs.weight"][2]


def as_float32(t) -> np.ndarray:
    """A GGUFReader tensor (F32, BF16 or F16) as float32."""
    if t.tensor_type == GGMLQuantizationType.BF16:
        return (np.ascontiguousarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(t.data, dtype=np.float32)


@pytest.mark.parametrize("folder", ["Llama3.1-70B", "llama-2-13b"])
def test_tensors_equal_meta_weights(sharded, folder):
    """Read back with gguf's GGUFReader: attn_q/attn_k are Meta's wq/wk rows as stored (no rotary permutation),
    merged over the shards; bf16 is a bit copy, f16 torch's bf16 → float16 rounding, norms float32, and
    every Q8_0 tensor is gguf.quants' (llama.cpp's quantiser) Q8_0 of Meta's weights."""
    src, split, files = sharded[folder]
    merged = {k: v.numpy() for k, v in merged_meta_state_dict(src, split).items()}
    for outtype, path in files.items():
        tensors = [t for t in GGUFReader(path).tensors if t.name != "rope_freqs.weight"]
        assert {meta_name(t.name) for t in tensors} == set(merged)
        for t in tensors:
            want = merged[meta_name(t.name)]
            if want.ndim == 1:
                assert t.tensor_type == GGMLQuantizationType.F32, t.name
            else:
                assert t.tensor_type.name == outtype.upper(), t.name
            if t.tensor_type == GGMLQuantizationType.Q8_0:
                expected = quants.quantize(want, GGMLQuantizationType.Q8_0)
                assert np.array_equal(np.asarray(t.data).reshape(-1), expected.reshape(-1)), t.name
                continue
            if t.tensor_type == GGMLQuantizationType.F16:
                want = want.astype(np.float16).astype(np.float32)
            got = as_float32(t)
            assert got.shape == want.shape and np.array_equal(got, want), (outtype, t.name)


def test_q8_0_falls_back_to_f16_for_rows_not_multiple_of_32(tmp_path):
    """dim 40 (5 heads of 8): every tensor whose rows hold 40 values is F16, as llama.cpp falls back; ffn_down
    (rows of the FFN width, a multiple of 32) is Q8_0."""
    import torch

    spec = tiny("llama3.1-8b", params={"n_heads": 5, "n_kv_heads": 5, "dim": 40}, tokenizer="small-tiktoken")
    src = synthesize(tmp_path / "Llama3.1-8B", spec)
    dst = tmp_path / "out.gguf"
    llama_convert.convert(src, dst, outtype="q8_0", verify=False)
    merged = merged_meta_state_dict(src, 0)
    types = {}
    for t in GGUFReader(dst).tensors:
        types[t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name] = t.tensor_type.name
        if t.tensor_type == GGMLQuantizationType.F16:
            want = merged[meta_name(t.name)].half().float()
            assert torch.equal(torch.from_numpy(np.array(t.data)).float(), want), t.name
    assert types["attn_q.weight"] == types["token_embd.weight"] == types["ffn_gate.weight"] == "F16"
    assert types["ffn_down.weight"] == "Q8_0"
    assert types["attn_norm.weight"] == types["rope_freqs.weight"] == "F32"
