"""``llama-convert demo``: synthesize a tiny Llama 3.1 checkpoint in Meta's format, convert it, load it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .routes import convert
from .testing.synth import PRESETS, bundled_llama3_tokenizer, synthesize

__all__ = ["run_demo"]


def run_demo(dst: str | Path | None = None, *, say: Callable[[str], None] = print) -> Path:
    """Build ``dst/Meta-Llama-3.1-Tiny-Instruct`` (Meta format) and ``dst/hf`` (converted); return ``dst/hf``."""
    root = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="llama-convert-demo-"))
    src = root / "Meta-Llama-3.1-Tiny-Instruct"
    out = root / "hf"
    real_tokenizer = bundled_llama3_tokenizer() is not None
    params = {
        **PRESETS["llama3.1-8b"].params,
        "dim": 256,
        "n_layers": 2,
        "n_heads": 8,
        "n_kv_heads": 2,
        "multiple_of": 64,
    }
    # Two model-parallel shards and shared storages, as in the big releases.
    synthesize(src, PRESETS["llama3.1-8b"].with_(params=params, mp=2, tokenizer="llama3"))
    say(
        f"1. Synthesized a tiny Llama-3.1-shaped Meta checkpoint in {src} (2 shards, random weights, "
        + ("Meta's real Llama 3 tokenizer)." if real_tokenizer else "a small generated tokenizer).")
    )
    result = convert(src, out, force=True)
    say(
        f"2. Converted it with zero flags: detected {result.spec.name}, wrote {len(result.files)} files to {out} "
        f"in {result.seconds:.2f} s ({'checksums verified' if result.verified else 'not verified'})."
    )
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        say("3. transformers/torch are not installed, so the model was not loaded; install them to try it.")
        return out
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    messages = [{"role": "user", "content": "Say hello."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    generated = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(generated[0, ids["input_ids"].shape[1] :])
    say(
        f"3. transformers loaded it ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) and "
        f"generated 8 tokens from a chat prompt: {text!r} (random weights, so the words are random too)."
    )
    return out
