"""The command line: subcommands, summaries, JSON output, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import tiny
from safetensors import safe_open

from llama_convert.cli import main
from llama_convert.testing.synth import synthesize


@pytest.fixture(scope="module")
def llama31(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return synthesize(root / "Llama3.1-8B-Instruct", tiny("llama3.1-8b", tokenizer="small-tiktoken"))


def test_short_form_converts_with_a_summary(capsys, llama31, tmp_path):
    assert main([str(llama31), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "Detected Llama 3.1" in err and "instruct (the name 'Llama3.1-8B-Instruct' contains 'Instruct')" in err
    assert "checksums verified" in err


def test_json_result(capsys, llama31, tmp_path):
    assert main(["convert", str(llama31), str(tmp_path / "out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == "3.1" and result["instruct"] is True and result["verified"] is True
    assert "model.safetensors" in result["files"]


def test_overrides_and_dtype(capsys, llama31, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "convert",
                str(llama31),
                str(out),
                "--base",
                "--llama-version",
                "3.3",
                "--dtype",
                "float32",
                "--max-shard-size",
                "100KB",
                "-q",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["eos_token_id"] == 128001 and config["head_dim"] == 8
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    total = 0
    for name in sorted(set(index["weight_map"].values())):
        with safe_open(out / name, "np") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = f.get_tensor(key)
                assert tensor.dtype.name == "float32"
                total += tensor.nbytes
    assert total == index["metadata"]["total_size"]
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|end_of_text|>" and "chat_template" not in tokenizer_config


def test_tokenizer_only(capsys, llama31, tmp_path):
    out = tmp_path / "tok"
    assert main(["convert", str(llama31), str(out), "--tokenizer-only", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, llama31, tmp_path):
    assert main(["convert", str(llama31), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj.weight" in out and "rotary pairs → halves (32 heads" in out
    assert not (tmp_path / "out").exists()


def test_inspect_meta_and_huggingface_folders(capsys, llama31, tmp_path):
    assert main(["inspect", str(llama31)]) == 0
    text = capsys.readouterr().out
    assert "Llama 3.1" in text and "MP1" in text and "tokenizer.json" in text
    assert main(["inspect", str(llama31), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "meta" and report["version"] == "3.1" and report["instruct"] is True
    assert report["config"]["num_key_value_heads"] == 8
    main([str(llama31), str(tmp_path / "hf"), "-q"])
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "a Hugging Face model folder (LlamaForCausalLM" in out and "convert it to Meta's format" in out


def test_verify_command(capsys, llama31, tmp_path):
    assert main(["verify", str(llama31), "-q"]) == 0
    assert main(["verify", str(llama31), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert"])
    assert info.value.code == 2


def test_python_dash_m_and_version():
    proc = subprocess.run([sys.executable, "-m", "llama_convert", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("llama-convert ")


@pytest.mark.slow
def test_demo_converts_loads_and_generates(capsys, tmp_path):
    assert main(["demo", str(tmp_path / "demo")]) == 0
    err = capsys.readouterr().err
    assert "Converted it with zero flags" in err and "generated 8 tokens" in err
    assert (tmp_path / "demo" / "hf" / "model.safetensors").exists()


def test_destination_inside_folders_that_do_not_exist_yet(capsys, llama31, tmp_path):
    assert main(["convert", str(llama31), str(tmp_path / "a" / "b" / "out"), "-q"]) == 0
    assert (tmp_path / "a" / "b" / "out" / "config.json").exists()


@pytest.mark.parametrize("value", ["0", "false", "No", "off", "", " 0 "])
def test_debug_variable_false_values_keep_the_sentence(value, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LLAMA_CONVERT_DEBUG", value)
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out"), "-q"]) == 3
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("value", ["1", "true", "yes", "on"])
def test_debug_variable_true_values_raise(value, monkeypatch, tmp_path):
    from llama_convert.errors import MissingFileError

    monkeypatch.setenv("LLAMA_CONVERT_DEBUG", value)
    with pytest.raises(MissingFileError):
        main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out"), "-q"])
