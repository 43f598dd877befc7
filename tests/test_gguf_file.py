"""GGUF files as files: rope factors at published sizes, inspect/verify, refusals, atomic output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import tiny
from gguf import GGUFReader, GGUFValueType

import llama_convert
from llama_convert.cli import main
from llama_convert.errors import DestinationExistsError, UnsupportedError, VerificationError
from llama_convert.families.llama.gguf import rope_freqs
from llama_convert.formats.gguf.reader import describe_gguf, read_header, verify_gguf
from llama_convert.options import Progress
from llama_convert.testing.synth import synthesize


def llamacpp_rope_factors(config: dict) -> np.ndarray:
    """llama.cpp's ``LlamaModel.generate_extra_tensors`` (conversion/llama.py), verbatim but for the names."""
    import torch

    rope_params = config["rope_scaling"]
    base = config["rope_theta"]
    dim = config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope_params.get("factor", 8.0)
    low_freq_factor = rope_params.get("low_freq_factor", 1.0)
    high_freq_factor = rope_params.get("high_freq_factor", 4.0)
    old_context_len = rope_params.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32).numpy()


@pytest.mark.parametrize(
    ("hidden", "heads", "factor"), [(4096, 32, 8.0), (8192, 64, 8.0), (2048, 32, 32.0), (3072, 24, 32.0)]
)
def test_rope_freqs_bit_equal_to_llamacpp_at_published_sizes(hidden, heads, factor):
    config = {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "rope_theta": 500000.0,
        "rope_scaling": {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }  # fmt: skip
    ours = rope_freqs(config)
    assert ours is not None and ours.dtype == np.float32
    assert ours.tobytes() == llamacpp_rope_factors(config).tobytes()
    assert rope_freqs({**config, "rope_scaling": None}) is None


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small Llama 3.1 checkpoint (small tiktoken vocabulary) and its bf16 GGUF."""
    root = tmp_path_factory.mktemp("gguf-small")
    src = synthesize(root / "Llama3.1-8B-Instruct", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    dst = root / "out.gguf"
    llama_convert.convert(src, dst, verify=False)
    return src, dst


def test_default_outtype_is_the_checkpoints_precision_and_file_reads_back(small):
    _, dst = small
    report = describe_gguf(dst)
    assert report.problems == ()
    assert report.metadata["general.file_type"] == 32  # bf16
    assert report.types == {"F32": 6, "BF16": 16}  # 2 norms × 2 layers + output_norm + rope_freqs
    assert report.tensor_count == 22 and report.arch == "llama"
    reader = GGUFReader(dst)
    data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    assert dst.stat().st_size - data_end < 32  # nothing but alignment padding after the last tensor
    assert not list(dst.parent.glob(".out.gguf*"))  # no temporary left


def test_cli_inspect_and_verify_a_gguf(small, capsys):
    _, dst = small
    assert main(["verify", str(dst)]) == 0
    assert "structure OK" in capsys.readouterr().err
    assert main(["inspect", str(dst), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "gguf" and data["tensor_count"] == 22 and data["metadata"]["llama.block_count"] == 2


def test_verify_finds_overlapping_tensors(small, tmp_path):
    """Rewrite one tensor info's offset so that two tensors share bytes: verify must refuse the file."""
    _, dst = small
    reader = GGUFReader(dst)
    first, second = sorted(reader.tensors, key=lambda t: t.data_offset)[:2]
    offset_field = second.field.parts[-1]  # the tensor info's data offset (relative to the data section)
    position = int(np.asarray(offset_field).ctypes.data - np.asarray(reader.data).ctypes.data)
    broken = tmp_path / "broken.gguf"
    data = bytearray(dst.read_bytes())
    data[position : position + 8] = (first.data_offset - reader.data_offset).to_bytes(8, "little")
    broken.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"overlap; the file is damaged"):
        verify_gguf(broken)
    assert main(["verify", str(broken)]) == 5


def test_refusals(small, tmp_path):
    src, dst = small
    with pytest.raises(DestinationExistsError, match="already exists"):
        llama_convert.convert(src, dst)
    with pytest.raises(UnsupportedError, match="GGUF output type 'q9_9' is not supported; choose bf16, f16, "):
        llama_convert.convert(src, tmp_path / "x.gguf", outtype="q9_9")
    hf = tmp_path / "hf"
    llama_convert.convert(src, hf, verify=False)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(UnsupportedError, match="describes MistralForCausalLM; this version converts Hugging Face"):
        llama_convert.convert(hf, tmp_path / "y.gguf")
    assert not (tmp_path / "y.gguf").exists()


def test_interrupted_conversion_leaves_nothing(small, tmp_path):
    src, _ = small

    class Interrupt(Progress):
        def advance(self, n: int) -> None:
            raise KeyboardInterrupt

    dst = tmp_path / "never.gguf"
    with pytest.raises(KeyboardInterrupt):
        llama_convert.convert(src, dst, progress=Interrupt(), verify=False)
    assert list(tmp_path.iterdir()) == []


def test_read_header_equals_gguf_reader(small):
    """Our header parser (used by inspect/verify and the table test) reads what gguf's GGUFReader reads."""
    _, dst = small
    fields, tensors = read_header(dst)
    reader = GGUFReader(dst)
    theirs = {f.name: f for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    assert list(fields) == list(theirs)
    for key, (types, value) in fields.items():
        assert types == [GGUFValueType(t).name for t in theirs[key].types], key
        assert value == theirs[key].contents(), key
    assert [(t.name, t.shape, t.qtype, t.offset) for t in tensors] == [
        (t.name, tuple(int(s) for s in reversed(t.shape)), t.tensor_type, t.data_offset) for t in reader.tensors
    ]


@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_hf_folder_to_gguf_equals_meta_to_gguf(small, tmp_path, outtype):
    """Our HF folder → GGUF (q_proj/k_proj rows back from halves to pairs, metadata from the folder's files)
    holds the same tensors and metadata as the direct Meta → GGUF file; only the naming keys differ (derived
    from the folder's name, as llama.cpp does)."""
    src, _ = small
    hf = tmp_path / "Llama-3.1-8B-Instruct"
    llama_convert.convert(src, hf, verify=False)
    direct, via_hf = tmp_path / "direct.gguf", tmp_path / "via-hf.gguf"
    llama_convert.convert(src, direct, outtype=outtype, verify=False)
    llama_convert.convert(hf, via_hf, outtype=outtype)
    (m1, t1), (m2, t2) = read_header(direct), read_header(via_hf)
    naming = {"general.name", "general.basename", "general.finetune", "general.size_label"}
    assert {k: v for k, v in m1.items() if k not in naming} == {k: v for k, v in m2.items() if k not in naming}
    assert m2["general.name"][1] == "Llama 3.1 8B Instruct"  # gguf's heuristics on the folder name
    assert [(t.name, t.shape, t.qtype) for t in t1] != [] and {t.name for t in t1} == {t.name for t in t2}
    by_name = {t.name: t for t in t2}
    for a in t1:
        b = by_name[a.name]
        assert (a.shape, a.qtype) == (b.shape, b.qtype), a.name
        data_a = np.fromfile(direct, np.uint8, a.nbytes, offset=a.offset)
        assert np.array_equal(data_a, np.fromfile(via_hf, np.uint8, b.nbytes, offset=b.offset)), a.name


def test_a_dense_llama4_checkpoint_is_refused_with_a_clear_sentence(tmp_path, tmp_path_factory):
    """Llama 4 converts to GGUF (tests/test_gguf_llama4.py); without expert layers (Llama Guard 4's shape) it
    would not load in llama.cpp's llama4, so it is refused before anything is written."""
    llama4_fixtures = pytest.importorskip("llama4_fixtures")
    pytest.importorskip("llama_models")
    llama4_fixtures.init_model_parallel(tmp_path_factory.mktemp("gloo"))
    params = llama4_fixtures.PARAMS["scout"]
    dense = {**params, "moe_args": {**params["moe_args"], "interleave_moe_layer_step": params["n_layers"] + 1}}
    src = llama4_fixtures.make_checkpoint(tmp_path / "Llama-4-Dense", "scout", mp=1, params=dense)
    with pytest.raises(UnsupportedError, match=r"dense Llama 4 .* llama\.cpp's llama4 architecture does not load"):
        llama_convert.convert(src, tmp_path / "dense.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Llama-4-Dense"]
