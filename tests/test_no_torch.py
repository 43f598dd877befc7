"""The conversion path never imports torch: synthesize and convert in a process where it cannot."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch could be imported")

    from pathlib import Path
    import llama_convert
    from llama_convert.cli import main
    from llama_convert.testing.synth import PRESETS, synthesize

    root = Path(sys.argv[1])
    params = {**PRESETS["llama3.1-70b"].params, "dim": 128, "n_layers": 2, "multiple_of": 32}
    synthesize(root / "Meta-Llama-3.1-70B-Instruct", PRESETS["llama3.1-70b"].with_(params=params))
    code = main(["convert", str(root / "Meta-Llama-3.1-70B-Instruct"), str(root / "out"), "--quiet"])
    assert code == 0, code
    assert (root / "out" / "model.safetensors").exists()
    assert (root / "out" / "tokenizer.json").exists()
    # Every other route too: Meta → GGUF, Hugging Face → Meta, Meta → Meta resharding.
    assert main(["convert", str(root / "Meta-Llama-3.1-70B-Instruct"), str(root / "out.gguf"), "--quiet"]) == 0
    assert main(["convert", str(root / "out"), str(root / "back"), "--mp", "2", "--quiet"]) == 0
    assert main(["convert", str(root / "back"), str(root / "back1"), "--to", "meta", "--mp", "1", "--quiet"]) == 0
    assert (root / "back1" / "consolidated.00.pth").exists() and (root / "out.gguf").stat().st_size > 0
    loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    assert not loaded, loaded
    print("converted without torch")
    """
)


def test_conversion_runs_where_torch_cannot_be_imported(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "converted without torch" in proc.stdout
