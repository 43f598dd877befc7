"""The way back from the command line: --to meta, --mp, exit codes of refusals."""

from __future__ import annotations

import json

from conftest import tiny

from llama_convert.cli import main
from llama_convert.testing.synth import synthesize


def test_hf_to_meta_and_reshard_from_the_command_line(capsys, tmp_path):
    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    assert main(["convert", str(src), str(tmp_path / "hf"), "-q"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "meta"), "--mp", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
        "tokenizer.model",
        "checklist.chk",
    ]
    assert result["kv_heads"] == 8 and result["release"] == "Llama 3.1"
    assert main(["convert", str(tmp_path / "meta"), str(tmp_path / "mp1"), "--to", "meta", "--mp", "1", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "mp1").iterdir()) == [
        "checklist.chk",
        "consolidated.00.pth",
        "params.json",
        "tokenizer.model",
    ]
    assert (tmp_path / "mp1" / "consolidated.00.pth").stat().st_size > 0


def test_refusals_exit_with_their_codes(capsys, tmp_path):
    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    assert main(["convert", str(src), str(tmp_path / "hf"), "-q"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "meta")]) == 4
    err = capsys.readouterr().err
    assert "sets attention_bias; Meta's Llama has no bias terms, so it cannot be expressed." in err
    assert main(["convert", str(src), str(tmp_path / "again"), "--to", "meta"]) == 3  # Meta → Meta needs --mp
    assert "is already in Meta's format; pass --mp N" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "typo"), str(tmp_path / "again"), "--to", "meta"]) == 3
    assert "typo does not exist" in capsys.readouterr().err  # not "already in Meta's format"
    assert not (tmp_path / "meta").exists() and not (tmp_path / "again").exists()


NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
from pathlib import Path
from llama_convert.cli import main

root = Path(sys.argv[1])
assert main(["convert", str(root / "hf"), str(root / "meta"), "--mp", "2", "-q"]) == 0
assert main(["convert", str(root / "meta"), str(root / "mp1"), "--to", "meta", "--mp", "1", "-q"]) == 0
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
"""


def test_the_way_back_never_imports_torch(tmp_path):
    import subprocess
    import sys

    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    assert main(["convert", str(src), str(tmp_path / "hf"), "-q"]) == 0
    subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path)], check=True)
    assert (tmp_path / "mp1" / "consolidated.00.pth").exists()


def test_dry_run_into_meta_lists_the_shards_and_writes_nothing(capsys, tmp_path):
    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    assert main(["convert", str(src), str(tmp_path / "hf"), "-q"]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "meta"), "--mp", "16", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "Would write Llama 3.1 in Meta's format, MP16." in captured.err
    assert "each of the 8 KV heads repeated 2× over 16 shards" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("consolidated.00.pth … consolidated.15.pth")
    assert (
        "  layers.0.attention.wk.weight [8, 256] bfloat16, split on dim 0 ← "
        "model.layers.0.self_attn.k_proj.weight (halves → pairs) (each head ×2)" in lines
    )
    assert [line.split()[0] for line in lines[-3:]] == ["tokenizer.model", "params.json", "checklist.chk"]
    assert not (tmp_path / "meta").exists()
