"""Run our GGUF in llama.cpp (llama-cpp-python) and compare its logits with transformers on our HF folder.

For a small synthesized Llama 3.1-shaped checkpoint (small tiktoken vocabulary, scaled rope; width and depth
given below) and a Llama 2-shaped one (SentencePiece), it converts the checkpoint to a Hugging Face folder
and, directly, to GGUF (bf16 and f16), runs the same token ids through transformers (float32 weights) and
through llama.cpp (``logits_all``), and reports the largest absolute logit difference and whether the
argmax agrees at every position. llama.cpp computes in its own precision (weights in bf16/f16,
activations in f32), so small differences are expected; a wrong rotary layout or rope scaling shows up
as differences of the order of the logits themselves: a control row writes ``attn_q``/``attn_k`` in
Hugging Face's rotary order (what a converter that forgot llama.cpp's un-permutation would write) to show it.

Needs llama-cpp-python built from source in the venv given by ``--python`` (``pip install
llama-cpp-python``; it compiles llama.cpp) and torch + transformers in the running one.

    python benchmarks/logits_gguf.py --python /path/to/llamacpp-venv/bin/python --workdir /scratch
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNNER = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, ids = sys.argv[1], json.loads(sys.argv[2])
llm = Llama(model_path=path, logits_all=True, n_ctx=256, n_threads=2, verbose=False)
llm.eval(ids)
np.save(sys.argv[3], np.array(llm.scores[: len(ids)], dtype=np.float32))
"""


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def to_hf_rotary_order(path: Path) -> None:
    """Rewrite a GGUF's attn_q/attn_k rows in place from Meta's interleaved rotary pairs to HF's halves."""
    from gguf import GGUFReader

    from llama_convert.execute import rotary_to_halves

    reader = GGUFReader(path)
    head_dim = int(reader.get_field("llama.rope.dimension_count").contents())
    spans = [(t.data_offset, tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name) for t in reader.tensors
             if t.name.endswith((".attn_q.weight", ".attn_k.weight"))]  # fmt: skip
    del reader
    for offset, shape, kind in spans:
        assert kind == "F16", kind
        data = np.memmap(path, dtype=np.float16, mode="r+", offset=offset, shape=shape)
        data[:] = rotary_to_halves(np.array(data), head_dim)
        data.flush()
        del data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, required=True, help="python of a venv with llama-cpp-python")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "logits_gguf.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import tiny

    import llama_convert
    from llama_convert.testing.synth import synthesize, write_small_sentencepiece

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    spm = write_small_sentencepiece(work / "spm")
    cases = {
        "Llama3.1-8B-Instruct": tiny("llama3.1-8b", head_dim=64, n_layers=2, tokenizer="small-tiktoken"),
        "llama-2-7b": tiny("llama2-7b", head_dim=64, n_layers=2, tokenizer=spm, vocab_size=512),
    }
    rng = np.random.default_rng(0)
    lines = [
        "# llama.cpp logits of our GGUF vs transformers on our Hugging Face folder",
        "",
        "`benchmarks/logits_gguf.py`: 2 layers, head_dim 64, each release's head counts; 200 random token ids.",
        "",
        "| model | GGUF | max abs logit diff | max abs logit | positions whose argmax agrees |",
        "|---|---|---:|---:|---:|",
    ]
    ok = True
    for folder, spec in cases.items():
        src = synthesize(work / folder, spec)
        hf = work / f"{folder}-hf"
        if not hf.exists():
            llama_convert.convert(src, hf, verify=False)
        vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
        ids = [int(i) for i in rng.integers(3, min(vocab, 128000), size=200)]
        want = hf_logits(hf, ids)
        for outtype in ("bf16", "f16", "control"):
            gguf = work / f"{folder}.{outtype}.gguf"
            llama_convert.convert(
                src, gguf, outtype="f16" if outtype == "control" else outtype, verify=False, force=True
            )
            if outtype == "control":
                to_hf_rotary_order(gguf)
            npy = work / f"{folder}.{outtype}.npy"
            subprocess.run([str(args.python), "-c", RUNNER, str(gguf), json.dumps(ids), str(npy)], check=True)
            got = np.load(npy)
            diff = float(np.abs(got - want).max())
            agree = int((got.argmax(-1) == want.argmax(-1)).sum())
            if outtype != "control":
                ok &= diff < 0.05 * float(np.abs(want).max())
            label = "f16, attn_q/attn_k in HF order (control)" if outtype == "control" else outtype
            lines.append(f"| {folder} | {label} | {diff:.4f} | {float(np.abs(want).max()):.3f} | {agree}/{len(ids)} |")
            print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
