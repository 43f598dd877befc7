"""LoRA adapters made by PEFT itself, merged while converting, against PEFT's own float32 merge.

A tiny Llama 3.1 (our conversion of a synthesized Meta checkpoint) gets real PEFT adapters with random,
non-zero B (``init_lora_weights=False``). The reference is ``merge_and_unload`` on the float32 model,
rounded once to bfloat16; Meta's reference code on the merged Meta output is compared with transformers
on PEFT's merged model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_logits_close, meta_reference_logits, tiny

from llama_convert import convert
from llama_convert import plan as plan_of
from llama_convert.cli import main
from llama_convert.errors import UnsupportedError
from llama_convert.formats.meta.torch_zip import TorchCheckpoint
from llama_convert.testing.synth import synthesize

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NAME = "Meta-Llama-3.1-8B"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A Meta checkpoint (MP2: merged shards) and our Hugging Face conversion of it."""
    root = tmp_path_factory.mktemp("lora")
    spec = tiny("llama3.1-8b", tokenizer="small-tiktoken", mp=2)
    meta = synthesize(root / "meta" / NAME, spec)
    hf = root / "hf" / NAME
    convert(meta, hf)
    return {"root": root, "meta": meta, "hf": hf}


def load_hf(folder: Path):
    return transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)


def make_adapter(
    hf: Path, dst: Path, *, seed: int = 0, safe: bool = True, embedding: bool | str = "auto", **config
) -> Path:
    """A LoRA adapter trained on nothing: PEFT's random init of A and B, saved by PEFT."""
    config = {"r": 4, "lora_alpha": 8, "target_modules": LINEAR, "init_lora_weights": False, **config}
    torch.manual_seed(seed)
    model = peft.get_peft_model(load_hf(hf), peft.LoraConfig(**config))
    model.save_pretrained(dst, safe_serialization=safe, save_embedding_layers=embedding)
    return dst


def peft_merged(hf: Path, adapters: list[Path]):
    """PEFT's merge of ``adapters`` one after the other, in float32 (the model stays float32)."""
    model = load_hf(hf)
    for adapter in adapters:
        model = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def bf16_bits(t) -> np.ndarray:
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype(np.int32)


def assert_within_one_ulp(folder: Path, reference) -> int:
    """Every tensor of the HF ``folder`` equals ``reference``'s, rounded to bf16, within 1 ulp; returns how
    many values differ at all."""
    from safetensors.torch import load_file

    got = {}
    for f in folder.glob("*.safetensors"):
        got.update(load_file(f))
    want = reference.state_dict()
    assert set(got) <= set(want), sorted(set(got) - set(want))
    differing = 0
    for name, tensor in got.items():
        diff = np.abs(bf16_bits(tensor) - bf16_bits(want[name]))
        assert diff.max() <= 1, f"{name}: {diff.max()} ulp"
        differing += int((diff > 0).sum())
    return differing


def test_meta_plus_adapter_to_hf_is_peft_float32_merge(base, tmp_path):
    adapter = make_adapter(base["hf"], tmp_path / "lora")
    out = tmp_path / "out"
    result = convert(base["meta"], out, adapters=[adapter])
    assert any("merged 1 LoRA adapter" in n for n in result.notes)
    assert assert_within_one_ulp(out, peft_merged(base["hf"], [adapter])) == 0  # bit-identical here
    # the plan shows the step, and q/k deltas join after the rotary permutation
    steps = {
        t["name"]: t["steps"]
        for f in plan_of(base["meta"], tmp_path / "p", adapters=[adapter]).to_json()["files"]
        for t in f["tensors"]
    }
    assert any("LoRA rank 4" in s for s in steps["model.layers.0.self_attn.q_proj.weight"])
    assert not any("LoRA" in s for s in steps["model.layers.0.input_layernorm.weight"])


def test_hf_plus_adapter_to_meta_to_hf_and_reference_logits(base, tmp_path, model_parallel):
    adapter = make_adapter(base["hf"], tmp_path / "lora", seed=1)
    meta = tmp_path / "meta" / NAME
    convert(base["hf"], meta, to="meta", mp=2, adapters=[adapter])
    back = tmp_path / "hf"
    convert(meta, back)
    merged = peft_merged(base["hf"], [adapter])
    assert assert_within_one_ulp(back, merged) == 0
    # Meta's reference code on the merged Meta shards = transformers on PEFT's merged model (saved as bf16)
    tokens = np.random.default_rng(0).integers(0, merged.config.vocab_size, size=(2, 9), dtype=np.int64)
    reference = meta_reference_logits(meta, tokens, embed_split=0, scaled_rope_factor=8.0)
    merged = merged.to(torch.bfloat16).to(torch.float32).eval()
    with torch.inference_mode():
        ours = merged(torch.from_numpy(tokens)).logits.numpy()
    assert_logits_close(ours, reference, rel=1e-3)
    # Meta + adapter → Meta (same MP) writes the same shards as HF + adapter → Meta
    again = tmp_path / "again" / NAME
    convert(base["meta"], again, to="meta", adapters=[adapter])
    for shard in sorted(p.name for p in meta.glob("consolidated.*.pth")):
        with TorchCheckpoint(meta / shard) as a, TorchCheckpoint(again / shard) as b:
            assert sorted(a.tensors) == sorted(b.tensors)
            for t in a.tensors:
                assert np.array_equal(a.read(t), b.read(t)), (shard, t)


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.array(t.data).view(np.uint16).astype(np.int32) for t in GGUFReader(path).tensors}


def test_gguf_plus_adapter_equals_gguf_of_peft_merged_folder(base, tmp_path):
    adapter = make_adapter(base["hf"], tmp_path / "lora", seed=2, target_modules=[*LINEAR, "lm_head"], embedding=False)
    merged_dir = tmp_path / "merged" / NAME
    merged = peft_merged(base["hf"], [adapter]).to(torch.bfloat16)
    merged.save_pretrained(merged_dir)
    for f in base["hf"].iterdir():  # the tokenizer files
        if not (merged_dir / f.name).exists():
            (merged_dir / f.name).write_bytes(f.read_bytes())
    reference = tmp_path / "reference.gguf"
    convert(merged_dir, reference, outtype="bf16")
    want = gguf_tensors(reference)
    planned = {
        t["name"]: t["steps"]
        for t in plan_of(base["meta"], tmp_path / "p.gguf", adapters=[adapter]).to_json()["tensors"]
    }
    assert any("B's rows halves → pairs" in s for s in planned["blk.0.attn_k.weight"])  # Meta's rotary order
    assert not any("pairs" in s for s in planned["blk.0.attn_v.weight"])
    assert any("LoRA" in s for s in planned["output.weight"])
    for src in (base["meta"], base["hf"]):
        out = tmp_path / f"{src.parent.name}.gguf"
        convert(src, out, outtype="bf16", adapters=[adapter])
        got = gguf_tensors(out)
        assert set(got) == set(want)
        for name in want:
            assert np.abs(got[name] - want[name]).max() <= 1, name
            assert np.array_equal(got[name], want[name]), name  # in practice bit-identical


def test_rslora_patterns_two_adapters_and_bin(base, tmp_path):
    rs = make_adapter(base["hf"], tmp_path / "rs", seed=3, r=8, lora_alpha=4, use_rslora=True)
    patterned = make_adapter(
        base["hf"],
        tmp_path / "pat",
        seed=4,
        rank_pattern={"q_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
        alpha_pattern={"v_proj": 32},
        safe=False,  # adapter_model.bin, read with the allow-listed pickle reader
    )
    assert (patterned / "adapter_model.bin").is_file()
    out = tmp_path / "out"
    convert(base["meta"], out, adapters=[rs, patterned])
    assert assert_within_one_ulp(out, peft_merged(base["hf"], [rs, patterned])) <= 8


def test_changed_adapter_changes_the_plan_identity(base, tmp_path):
    adapter = make_adapter(base["hf"], tmp_path / "lora", seed=5)
    first = plan_of(base["meta"], tmp_path / "out", adapters=[adapter]).to_json()
    make_adapter(base["hf"], adapter, seed=6)  # same folder, other matrices
    assert plan_of(base["meta"], tmp_path / "out", adapters=[adapter]).to_json() != first


def _refused(capsys, src: Path, dst: Path, adapter: Path, *extra: str) -> str:
    dst = dst.with_suffix(".gguf") if "gguf" in extra else dst
    capsys.readouterr()  # transformers' progress bars while the adapter was made
    code = main([str(src), str(dst), "--adapter", str(adapter), "-q", *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert not dst.exists() and not list(dst.parent.glob(f".{dst.name}*"))
    assert err.count("\n") == 0 and err.endswith("."), err
    return err


def test_bad_adapters_are_refused_in_one_sentence(base, tmp_path, capsys):
    hf = base["hf"]
    dst = tmp_path / "out"
    dora = make_adapter(hf, tmp_path / "dora", use_dora=True)
    assert "DoRA (use_dora)" in _refused(capsys, base["meta"], dst, dora)
    saved = make_adapter(hf, tmp_path / "saved", modules_to_save=["lm_head"])
    assert "modules_to_save" in _refused(capsys, base["meta"], dst, saved)
    biased = make_adapter(hf, tmp_path / "biased", bias="all")
    assert "bias='all'" in _refused(capsys, base["meta"], dst, biased)
    embed = make_adapter(hf, tmp_path / "embed", target_modules=["embed_tokens"])
    assert "embedding adapter" in _refused(capsys, base["meta"], dst, embed)
    assert "does not exist" in _refused(capsys, base["meta"], dst, tmp_path / "nowhere")
    missing = make_adapter(hf, tmp_path / "missing")
    (missing / "adapter_model.safetensors").unlink()
    assert "has no adapter_model.safetensors" in _refused(capsys, base["meta"], dst, missing)
    wrong = make_adapter(hf, tmp_path / "wrong")
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "meta-llama/Llama-3.2-1B"})
    )
    for src, to in ((base["meta"], ()), (hf, ("--to", "meta")), (hf, ("--to", "gguf"))):
        assert "trained on meta-llama/Llama-3.2-1B" in _refused(capsys, src, dst, wrong, *to)
    # an adapter of a wider model with the same name: shapes do not match
    other = tmp_path / "other" / NAME
    convert(synthesize(tmp_path / "wide" / NAME, tiny("llama3.1-8b", tokenizer="small-tiktoken", head_dim=16)), other)
    wide = make_adapter(other, tmp_path / "wide-lora")
    message = _refused(capsys, base["meta"], dst, wide)
    assert "makes a delta of shape" in message and "adapter_model.safetensors" in message
    for to in (("--to", "meta"), ("--to", "gguf")):
        assert "makes a delta of shape" in _refused(capsys, hf, dst, wide, *to)


def test_mp16_duplicated_kv_heads(tmp_path):
    """KV heads folded on the way to Hugging Face and repeated on the way back, the delta in between."""
    name = "Llama-3.1-405B-Instruct-MP16"
    spec = tiny("llama3.1-405b-mp16", tokenizer="small-tiktoken", n_layers=1)
    meta = synthesize(tmp_path / "meta" / name, spec)
    hf = tmp_path / "hf" / name
    convert(meta, hf)
    adapter = make_adapter(hf, tmp_path / "lora", seed=7)
    out = tmp_path / "out"
    convert(meta, out, adapters=[adapter])
    merged = peft_merged(hf, [adapter])
    assert assert_within_one_ulp(out, merged) == 0
    back = tmp_path / "back" / name
    convert(meta, back, to="meta", adapters=[adapter])  # MP16 again, KV heads repeated after the merge
    again = tmp_path / "again"
    convert(back, again)
    assert assert_within_one_ulp(again, merged) == 0


def test_tied_lm_head_and_other_families_are_refused(tmp_path):
    name = "Llama3.2-1B"
    meta = synthesize(tmp_path / "meta" / name, tiny("llama3.2-1b", tokenizer="small-tiktoken"))
    hf = tmp_path / "hf" / name
    convert(meta, hf)
    adapter = make_adapter(hf, tmp_path / "lora", target_modules=["q_proj", "lm_head"], embedding=False)
    with pytest.raises(UnsupportedError, match=r"adapts lm_head, but Llama 3.2 .* is tied to the embedding"):
        convert(meta, tmp_path / "out", adapters=[adapter])
    # Llama 4 and Llama 3.2 Vision do not declare adapters: refused in one sentence before anything is read
    from llama_convert.families import FAMILIES
    from llama_convert.formats.peft import read_adapter
    from llama_convert.routes.adapters import check_family

    for family in FAMILIES:
        if family.name != "llama":
            with pytest.raises(UnsupportedError, match=re.escape(f"into {family.title} is not supported yet")):
                check_family(family, [read_adapter(adapter)], tmp_path)


@pytest.mark.slow
def test_resume_keeps_the_same_adapter_and_starts_clean_for_a_changed_one(base, tmp_path):
    from test_resume_routes import _killed

    adapter = make_adapter(base["hf"], tmp_path / "lora", seed=8)
    args = ["--adapter", str(adapter), "--outtype", "bf16"]

    def rerun(dst: Path) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "llama_convert", "convert", str(base["meta"]), str(dst), *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    reference = tmp_path / "reference.gguf"
    convert(base["meta"], reference, outtype="bf16", adapters=[adapter])
    same = tmp_path / "same.gguf"
    _killed(["convert", str(base["meta"]), str(same), "-q", *args], after=3)
    assert "resumed an interrupted run" in rerun(same)
    assert same.read_bytes() == reference.read_bytes()
    changed = tmp_path / "changed.gguf"
    _killed(["convert", str(base["meta"]), str(changed), "-q", *args], after=3)
    make_adapter(base["hf"], adapter, seed=9)  # the same folder, other matrices
    assert "resumed" not in rerun(changed)
    other = tmp_path / "other.gguf"
    convert(base["meta"], other, outtype="bf16", adapters=[adapter])
    assert changed.read_bytes() == other.read_bytes() != reference.read_bytes()


def test_llama2_mp2_embedding_split_on_dim_1(tmp_path, sentencepiece_model):
    name = "llama-2-13b"
    spec = tiny("llama2-13b", tokenizer=sentencepiece_model, vocab_size=512)
    meta = synthesize(tmp_path / "meta" / name, spec)
    hf = tmp_path / "hf" / name
    convert(meta, hf)
    adapter = make_adapter(hf, tmp_path / "lora", seed=10, target_modules=[*LINEAR, "lm_head"], embedding=False)
    out = tmp_path / "out"
    convert(meta, out, adapters=[adapter])
    assert assert_within_one_ulp(out, peft_merged(hf, [adapter])) == 0
