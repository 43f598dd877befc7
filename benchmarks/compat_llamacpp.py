"""Check that llama-convert's output loads unchanged in llama.cpp's converter (``convert_hf_to_gguf.py``).

For five release shapes (Llama 3 8B Instruct, Llama 3.1 8B Instruct, Llama 3.2 1B with tied embeddings,
Llama 3.1 70B in its MP8 layout, Llama 2 7B chat) the script synthesizes a small Meta checkpoint (the
release's head counts, KV heads, model-parallel layout, rope settings and real tokenizer; 8-wide heads and
2 layers), converts it with ``llama_convert.convert`` and runs llama.cpp's converter on the Hugging Face
folder, unchanged, as a subprocess in its own venv. It then reads the GGUF file with the ``gguf`` library
(``GGUFReader``) and checks, per model:

- **convert**: llama.cpp's converter exits 0.
- **tensors**: the GGUF holds exactly the expected tensors (``token_embd``, ``output_norm``, ``output``
  unless embeddings are tied, 9 per block, ``rope_freqs`` for Llama 3.1+) with the expected shapes.
- **hparams**: ``llama.*`` keys (block count, context length, widths, head counts, rope base, norm epsilon,
  vocabulary size, rope dimensions) equal our config.json, those that params.json determines also equal
  Meta's params.json, and the context length is the release's.
- **tokenizer**: ``tokenizer.ggml.model``/``pre`` are ``gpt2``/``llama-bpe`` for Llama 3 — llama.cpp
  identifies Llama 3's pre-tokenizer by hashing what our tokenizer.json produces on a fixed text —
  and ``llama``/``default`` for Llama 2 (SentencePiece).
- **vocab**: Llama 3: the base tokens equal Meta's tiktoken ranks (through GPT-2's byte-to-unicode map),
  the named special tokens sit at Meta's ids, every token equals our tokenizer.json's and the types are
  normal/control; Llama 2: pieces, scores and types equal Meta's tokenizer.model read with sentencepiece.
- **bos/eos**: ``tokenizer.ggml.bos_token_id``/``eos_token_id`` are the release's (``<|eot_id|>`` for
  Llama 3 instruct), ``add_bos_token`` is true.
- **EOG**: the end-of-generation set llama.cpp derives at load time (eos plus tokens whose text is on its
  list, ``src/llama-vocab.cpp``) covers every eos id of our generation_config.json.
- **template**: instruct models carry our chat template byte for byte as ``tokenizer.chat_template``;
  base models have none.
- **rope_freqs**: present exactly for Llama 3.1+, equal to the factors of Meta's ``apply_scaling``
  (factor 8 for 3.1, 32 for 3.2) computed here.
- **= Meta**: every GGUF tensor equals Meta's original tensor merged over the shards with torch
  (llama.cpp undoes Hugging Face's rotary permutation of ``q_proj``/``k_proj``, so ``attn_q``/``attn_k``
  must equal Meta's ``wq``/``wk``).
- **= ours**: every GGUF tensor equals our safetensors tensor (``attn_q``/``attn_k`` after applying
  transformers' permutation to llama.cpp's data).

It also reports, without failing, which built-in chat format llama.cpp picks when it does not run the
Jinja template (``src/llama-chat.cpp``: ``llm_chat_detect_template``, substring tests) and the warnings
llama.cpp's converter printed.

Not part of the test suite: llama.cpp's converter is not a normal dependency (it lives in llama.cpp's
source tree and needs torch and a pinned transformers). Set it up from the llama-cpp-python sdist, which
vendors llama.cpp, without compiling anything (see COMPAT_LLAMACPP.md), then:

    python benchmarks/compat_llamacpp.py --converter /path/to/llama.cpp/convert_hf_to_gguf.py \\
        --python /path/to/lcp-venv/bin/python --workdir /scratch/dir [--outtype f32|bf16] [--keep]

The GGUF files are read with the ``gguf`` package next to the converter (``gguf-py``), as the converter
itself does. Exit status 1 if any check failed. Results go to ``benchmarks/results/compat_llamacpp.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
NOTE_SEP = "\x1f"  # separates independent notes in one table cell


@dataclass(frozen=True)
class Case:
    key: str
    preset: str  # llama_convert.testing.synth.PRESETS name: the release's shape and layout
    folder: str  # Meta's download folder name (llama-convert reads the release from it)
    hf_name: str  # output folder, named like the published Hugging Face repo
    family: str  # "llama3" (tiktoken) or "llama2" (SentencePiece)
    instruct: bool
    context: int  # the release's context length
    eos: int  # tokenizer.ggml.eos_token_id expected: the published tokenizer's eos_token
    rope_factor: float | None  # Meta's llama3 rope scaling factor (3.1+): rope_freqs expected


CASES = (
    Case("3-8b-instruct", "llama3-8b", "Meta-Llama-3-8B-Instruct", "Meta-Llama-3-8B-Instruct", "llama3", True, 8192,
         128009, None),
    Case("3.1-8b-instruct", "llama3.1-8b", "Llama3.1-8B-Instruct", "Llama-3.1-8B-Instruct", "llama3", True, 131072,
         128009, 8.0),
    Case("3.2-1b", "llama3.2-1b", "Llama3.2-1B", "Llama-3.2-1B", "llama3", False, 131072, 128001, 32.0),
    Case("3.1-70b-mp8", "llama3.1-70b", "Llama3.1-70B", "Llama-3.1-70B", "llama3", False, 131072, 128001, 8.0),
    Case("2-7b-chat", "llama2-7b", "llama-2-7b-chat", "Llama-2-7b-chat-hf", "llama2", True, 4096, 2, None),
)  # fmt: skip
HEAD_DIM, N_LAYERS = 8, 2

# Meta tensor → model-parallel concat dim (tok_embeddings: the release's split dim, given separately).
META_SPLIT = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1, "output": 0}
# GGUF block tensor → Meta tensor (llama.cpp's names for the llama architecture).
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
GGUF_TO_HF = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Token texts llama.cpp adds to its end-of-generation set at load time (src/llama-vocab.cpp).
LLAMACPP_EOG_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
}  # fmt: skip
# The built-in format that llama.cpp picks for the published Hugging Face templates of these releases.
PUBLISHED_BUILTIN = {"llama3": "llama3", "llama2": "llama2-sys-strip"}  # Llama 2's contains "content.strip()"
BUILTIN_NOTE = (
    "llama.cpp runs the GGUF's Jinja template by default; this built-in format is its fallback without Jinja "
    "(`--no-jinja`, the C API `llama_chat_apply_template`), picked by substring tests. The published Llama 2 chat "
    "template contains `content.strip()` and gets `llama2-sys-strip` (messages trimmed); a template without that "
    "substring gets `llama2-sys` (not trimmed)."
)
GGUF_CONTROL, GGUF_NORMAL = 3, 1
# Converter warnings that are understood (reported as notes, not failures).
EXPLAINED_WARNINGS = {
    r"Unknown separator token '(<\|begin_of_text\|>|<s>)' in TemplateProcessing<pair>": (
        "gguf's SpecialVocab does not model a pair template that repeats BOS before the second sequence; the "
        "published folders have the same pair template (transformers' Llama converters write it), so they print "
        "the same warning. llama.cpp does not encode sentence pairs for Llama."
    ),
    r"with an incorrect regex pattern: .*fix_mistral_regex": (
        "transformers 4.57.3 to 4.57.6 (llama.cpp's converter pins 4.57.6) prints this Mistral-regex warning for a "
        "local tokenizer with a large vocabulary unless config.json has a transformers_version (at most 4.57.2 with "
        "a non-Mistral model_type, or at least 5), a transformers bug (huggingface/transformers#44031). Our "
        "config.json now names one, as the published ones do. Only a warning: the tokenizer is left as is "
        "(llama.cpp still recognized llama-bpe)."
    ),
}


@dataclass
class Result:
    case: Case
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)  # column → (ok | FAIL | note, text)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def set(self, column: str, ok: bool, text: str = "", *, note: bool = False) -> None:
        self.cells[column] = ("ok" if ok else ("note" if note else "FAIL"), text)

    @property
    def failed(self) -> list[str]:
        return [f"{c}: {t}" for c, (s, t) in self.cells.items() if s == "FAIL"]


COLUMNS = (
    "convert", "tensors", "hparams", "tokenizer", "vocab", "bos/eos", "EOG", "template", "rope_freqs",
    "= Meta", "= ours", "built-in format", "warnings",
)  # fmt: skip


# --- inputs ----------------------------------------------------------------------------------------------


def train_sentencepiece(root: Path) -> Path:
    """A small SentencePiece BPE tokenizer.model with Llama's trainer settings (512 pieces)."""

    from llama_convert.testing.synth import write_small_sentencepiece

    return write_small_sentencepiece(root)


def synth_spec(case: Case, spm_model: Path | None) -> Any:
    """The release's preset shrunk in width and depth, keeping head counts, KV heads and MP layout."""
    from llama_convert.testing.synth import PRESETS

    spec = PRESETS[case.preset]
    params = {**spec.params, "dim": spec.params["n_heads"] * HEAD_DIM, "n_layers": N_LAYERS, "multiple_of": 32}
    if case.family == "llama2":
        return spec.with_(params=params, tokenizer=spm_model, vocab_size=512)
    return spec.with_(params=params, tokenizer="llama3")  # Meta's real Llama 3 tokenizer.model


def merged_meta(src: Path, embed_split: int) -> dict[str, np.ndarray]:
    """Meta's shards merged with torch itself (independent of our reader), as float32 arrays."""
    import torch

    shards = [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(src.glob("consolidated.*.pth"))]
    merged = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        parts = [s[name] for s in shards]
        dim = embed_split if name == "tok_embeddings.weight" else META_SPLIT.get(name.split(".")[-2])
        merged[name] = (parts[0] if dim is None else torch.cat(parts, dim=dim)).float().numpy()
    return merged


def our_tensors(dst: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    for path in sorted(dst.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[name] = f.get_tensor(name).float().numpy()
    return out


# Special tokens that llama.cpp and chat templates find by text, at Meta's ids (Llama 3 tokenizer.model + n).
LLAMA3_NAMED = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>",
                9: "<|eot_id|>"}  # fmt: skip
LLAMA31_NAMED = {**LLAMA3_NAMED, 4: "<|finetune_right_pad_id|>", 8: "<|eom_id|>", 10: "<|python_tag|>"}


def llama3_vocab_problems(
    tokens: list[str], types: list[int], tokenizer_model: Path, ours: Path, named: dict[int, str]
) -> list[str]:
    """Token strings and types llama.cpp wrote vs Meta's tiktoken ranks (through GPT-2's byte-to-unicode map),
    Meta's named special tokens, and our tokenizer.json (which names the reserved ones)."""
    table = bytes_to_unicode()
    meta: list[str] = []
    for line in tokenizer_model.read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            if int(rank) != len(meta):
                return [f"tokenizer.model rank {rank} out of order"]
            meta.append("".join(table[b] for b in base64.b64decode(token)))
    n = len(meta)
    problems = []
    if differ := [i for i in range(n) if i >= len(tokens) or tokens[i] != meta[i]]:
        problems.append(f"{len(differ)} base tokens differ from Meta's (first ids {differ[:3]})")
    if wrong := [name for i, name in named.items() if n + i >= len(tokens) or tokens[n + i] != name]:
        problems.append(f"special tokens not at Meta's ids: {wrong}")
    doc = json.loads(ours.read_text())
    by_id = {i: t for t, i in doc["model"]["vocab"].items()} | {t["id"]: t["content"] for t in doc["added_tokens"]}
    if differ := [i for i in range(len(tokens)) if by_id.get(i) != tokens[i]]:
        problems.append(f"{len(differ)} tokens differ from our tokenizer.json (first ids {differ[:3]})")
    want_types = [GGUF_NORMAL] * n + [GGUF_CONTROL] * (len(tokens) - n)
    if len(types) != len(tokens):
        problems.append(f"{len(types)} token types for {len(tokens)} tokens")
    elif differ := [i for i, (a, b) in enumerate(zip(types, want_types, strict=True)) if a != b]:
        problems.append(f"{len(differ)} token types are not normal/control as expected (first ids {differ[:3]})")
    return problems


def sentencepiece_vocab_problems(tokens: list[str], types: list[int], scores: Any, src: Path) -> list[str]:
    """Pieces, scores and types llama.cpp wrote vs Meta's tokenizer.model read with sentencepiece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    ids = range(sp.get_piece_size())
    # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 6 byte
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in ids]
    problems = []
    if len(tokens) != len(ids) or any(tokens[i] != sp.id_to_piece(i) for i in ids):
        problems.append("pieces differ from Meta's tokenizer.model")
    if types != kinds:
        problems.append("token types differ")
    if scores is None or not np.array_equal(np.float32(scores), np.float32([sp.get_score(i) for i in ids])):
        problems.append("scores differ")
    return problems


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (what byte-level BPE vocabularies are written in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def meta_rope_factors(theta: float, head_dim: int, factor: float) -> np.ndarray:
    """freq / scaled freq for Meta's ``apply_scaling`` (llama_models; low 1, high 4, original context 8192)."""
    low_freq_factor, high_freq_factor, old_context = 1.0, 4.0, 8192
    low_freq_wavelen, high_freq_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64)[: head_dim // 2] / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            scaled = freq
        elif wavelen > low_freq_wavelen:
            scaled = freq / factor
        else:
            smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            scaled = (1 - smooth) * freq / factor + smooth * freq
        out.append(freq / scaled)
    return np.array(out)


def as_f32(x: float) -> float:
    return float(np.float32(x))  # GGUF stores these hyperparameters as float32


def hf_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta → Hugging Face rotary layout of q/k rows (transformers' convert_llama_weights_to_hf.permute)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def llamacpp_builtin_format(tmpl: str) -> str:
    """The built-in chat format llama.cpp picks when it does not run the Jinja template: a port of the
    substring tests of ``llm_chat_detect_template`` (src/llama-chat.cpp), in order, up to Llama 3's."""
    has = tmpl.__contains__
    if has("<|im_start|>"):
        return "phi4" if has("<|im_sep|>") else "smolvlm" if has("<end_of_utterance>") else "chatml"
    if tmpl.startswith("mistral") or has("[INST]"):
        if has("[SYSTEM_PROMPT]"):
            return "mistral-v7"
        if has("' [INST] ' + system_message") or has("[AVAILABLE_TOOLS]"):
            return "mistral-v1/v3"
        if has("content.strip()"):
            return "llama2-sys-strip"
        if has("bos_token + '[INST]"):
            return "llama2-sys-bos"
        return "llama2-sys" if has("<<SYS>>") else "llama2"
    ordered = [
        ("phi3", ("<|assistant|>", "<|end|>")),
        ("chatglm4", ("[gMASK]<sop>",)),
        ("glmedge/falcon3/exaone-moe", ("<|assistant|>", "<|user|>")),
        ("glmedge", ("<|{{ item['role'] }}|>", "<|begin_of_image|>")),
        ("zephyr", ("<|user|>", "<|endoftext|>")),
        ("monarch", ("bos_token + message['role']",)),
        ("gemma", ("<start_of_turn>",)),
        ("orion", ("'\\n\\nAssistant: ' + eos_token",)),
        ("openchat", ("GPT4 Correct ",)),
        ("vicuna", ("USER: ", "ASSISTANT: ")),
        ("deepseek", ("### Instruction:", "<|EOT|>")),
        ("command-r", ("<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>")),
        ("llama3", ("<|start_header_id|>", "<|end_header_id|>")),
    ]
    return next((name for name, needles in ordered if all(map(has, needles))), "other")


# --- GGUF ------------------------------------------------------------------------------------------------


def import_gguf(converter: Path) -> Any:
    """The gguf package beside the converter (as the converter itself loads it), else the installed one."""
    local = converter.parent / "gguf-py"
    if local.is_dir() and "NO_LOCAL_GGUF" not in os.environ:
        sys.path.insert(0, str(local))
    import gguf

    return gguf


def gguf_array(tensor: Any, gguf: Any) -> np.ndarray:
    """A GGUF tensor as float32 in numpy (row-major) order."""
    kind = tensor.tensor_type
    if kind == gguf.GGMLQuantizationType.F32:
        return np.asarray(tensor.data)
    if kind == gguf.GGMLQuantizationType.F16:
        return np.asarray(tensor.data, dtype=np.float32)
    if kind == gguf.GGMLQuantizationType.BF16:
        bits = np.ascontiguousarray(tensor.data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    raise ValueError(f"{tensor.name}: GGUF type {kind.name} is not compared by this script")


def kv(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


# --- one model -------------------------------------------------------------------------------------------


def expected_tensors(config: dict[str, Any], *, tied: bool, rope_freqs: bool) -> dict[str, tuple[int, ...]]:
    """GGUF tensor → numpy-order shape. ``tied`` and ``rope_freqs`` come from the release, not from config.json."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    if rope_freqs:
        shapes["rope_freqs.weight"] = (head_dim // 2,)
    for i in range(config["num_hidden_layers"]):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (heads * head_dim, hidden),
            f"blk.{i}.attn_k.weight": (n_kv * head_dim, hidden),
            f"blk.{i}.attn_v.weight": (n_kv * head_dim, hidden),
            f"blk.{i}.attn_output.weight": (hidden, heads * head_dim),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.ffn_gate.weight": (inter, hidden),
            f"blk.{i}.ffn_up.weight": (inter, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, inter),
        }
    return shapes


def source_names(gguf_name: str) -> tuple[str, str] | None:
    """GGUF tensor → (Meta name, our Hugging Face name); None for tensors llama.cpp derives (rope_freqs)."""
    fixed = {
        "token_embd.weight": ("tok_embeddings.weight", "model.embed_tokens.weight"),
        "output_norm.weight": ("norm.weight", "model.norm.weight"),
        "output.weight": ("output.weight", "lm_head.weight"),
    }
    if gguf_name in fixed:
        return fixed[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if not m or m.group(2) not in GGUF_TO_META:
        return None
    i, kind = m.groups()
    return f"layers.{i}.{GGUF_TO_META[kind]}", f"model.layers.{i}.{GGUF_TO_HF[kind]}.weight"


def run_converter(args: argparse.Namespace, hf: Path, out: Path, log: Path) -> tuple[int, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    argv = [str(args.python), str(args.converter), str(hf), "--outtype", args.outtype, "--outfile", str(out)]
    started = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, check=False, timeout=3600)
    return proc.returncode, time.perf_counter() - started


def converter_warnings(log: Path) -> list[str]:
    """WARNING lines of llama.cpp's converter and warnings that transformers printed while it ran."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(("WARNING:", "ERROR:")) or re.search(r"\b(warning|deprecated|incorrect)\b", line, re.I):
            found.append(line.strip()[:400])
    return list(dict.fromkeys(found))


def check_case(case: Case, args: argparse.Namespace, gguf: Any, spm_model: Path | None) -> Result:
    import llama_convert
    from llama_convert.testing.synth import synthesize

    res = Result(case)
    work = args.workdir / case.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = synth_spec(case, spm_model)
    src = synthesize(work / case.folder, spec)
    hf = work / "hf" / case.hf_name
    hf.parent.mkdir()
    llama_convert.convert(src, hf)
    out, log = work / f"{case.hf_name}.{args.outtype}.gguf", work / "convert_hf_to_gguf.log"

    rc, res.seconds = run_converter(args, hf, out, log)
    res.warnings = converter_warnings(log)
    unexplained = [w for w in res.warnings if not any(re.search(p, w) for p in EXPLAINED_WARNINGS)]
    explained = sorted({why for w in res.warnings for p, why in EXPLAINED_WARNINGS.items() if re.search(p, w)})
    res.set("convert", rc == 0, f"exit {rc}, {res.seconds:.0f} s")
    parts = [*explained, *(["unexplained warnings: see the list below the table"] * bool(unexplained))]
    res.set("warnings", not res.warnings, NOTE_SEP.join(parts) or "none", note=True)
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        res.warnings += ["(converter failed) " + line[:400] for line in tail]
        return res

    reader = gguf.GGUFReader(out)
    config = json.loads((hf / "config.json").read_text())
    generation = json.loads((hf / "generation_config.json").read_text())
    tok_config = json.loads((hf / "tokenizer_config.json").read_text())
    tensors = {t.name: t for t in reader.tensors}

    # tensors: names and shapes
    expected = expected_tensors(config, tied=spec.tie_output, rope_freqs=case.rope_factor is not None)
    shapes = {name: tuple(int(d) for d in reversed(t.shape.tolist())) for name, t in tensors.items()}
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [f"{n} {shapes[n]}≠{expected[n]}" for n in sorted(set(expected) & set(shapes)) if shapes[n] != expected[n]]
    problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra) + wrong[:3]
    res.set("tensors", not problems, "; ".join(problems) or f"{len(shapes)}, shapes ok")

    # hparams vs config.json (and the release's context length)
    want = {
        "general.architecture": "llama",
        "llama.block_count": config["num_hidden_layers"],
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.freq_base": as_f32(config["rope_theta"]),
        "llama.attention.layer_norm_rms_epsilon": as_f32(config["rms_norm_eps"]),
        "llama.vocab_size": config["vocab_size"],
        "llama.rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
    }
    bad = [f"{k}={kv(reader, k)!r}≠{v!r}" for k, v in want.items() if kv(reader, k) != v]
    # ... and the same keys against Meta's params.json and the release, independently of our config.json
    params = json.loads((src / "params.json").read_text())
    meta_want = {
        "llama.block_count": params["n_layers"],
        "llama.context_length": case.context,
        "llama.embedding_length": params["dim"],
        "llama.attention.head_count": params["n_heads"],
        "llama.attention.head_count_kv": params.get("n_kv_heads", params["n_heads"]),
        "llama.rope.freq_base": as_f32(params.get("rope_theta", 10000.0)),
        "llama.attention.layer_norm_rms_epsilon": as_f32(params["norm_eps"]),
        "llama.rope.dimension_count": params["dim"] // params["n_heads"],
    }
    bad += [f"{k}={kv(reader, k)!r}≠{v!r} (Meta)" for k, v in meta_want.items() if kv(reader, k) != v]
    res.set("hparams", not bad, "; ".join(bad) or f"{len(want)} keys = config, {len(meta_want)} = Meta")

    # tokenizer model / pre-tokenizer
    model, pre = kv(reader, "tokenizer.ggml.model"), kv(reader, "tokenizer.ggml.pre")
    want_model, want_pre = ("gpt2", "llama-bpe") if case.family == "llama3" else ("llama", "default")
    res.set("tokenizer", (model, pre) == (want_model, want_pre), f"{model}/{pre}")

    # vocabulary: llama.cpp's token list vs Meta's tokenizer.model (read independently) and our tokenizer files
    tokens = kv(reader, "tokenizer.ggml.tokens") or []
    types = list(kv(reader, "tokenizer.ggml.token_type") or [])
    if case.family == "llama3":
        named = LLAMA3_NAMED if case.rope_factor is None else LLAMA31_NAMED  # only Llama 3.0 has no rope scaling
        problems = llama3_vocab_problems(tokens, types, src / "tokenizer.model", hf / "tokenizer.json", named)
    else:
        problems = sentencepiece_vocab_problems(tokens, types, kv(reader, "tokenizer.ggml.scores"), src)
    if len(tokens) != config["vocab_size"]:
        problems.insert(0, f"{len(tokens)} tokens ≠ vocab_size {config['vocab_size']}")
    res.set("vocab", not problems, "; ".join(problems) or f"{len(tokens)} tokens")

    # bos / eos / add_bos
    bos, eos = kv(reader, "tokenizer.ggml.bos_token_id"), kv(reader, "tokenizer.ggml.eos_token_id")
    add_bos = kv(reader, "tokenizer.ggml.add_bos_token")
    want_bos = 128000 if case.family == "llama3" else 1
    text = f"{bos}/{eos}" + ("" if add_bos else ", add_bos_token not true")
    ok = (bos, eos, add_bos) == (want_bos, case.eos, True)
    res.set("bos/eos", ok, text if ok else f"{text} (want {want_bos}/{case.eos})")

    # end-of-generation set llama.cpp derives at load time vs generation_config.json's eos ids
    eog = {i for i, t in enumerate(tokens) if t in LLAMACPP_EOG_TEXTS} | {eos}
    gen_eos = generation.get("eos_token_id")
    gen_eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    res.set("EOG", gen_eos <= eog, f"{sorted(eog)} ⊇ {sorted(gen_eos)}" if gen_eos <= eog else
            f"{sorted(eog)} lacks {sorted(gen_eos - eog)} of generation_config")  # fmt: skip

    # chat template
    ours = tok_config.get("chat_template")
    if ours is None and (hf / "chat_template.jinja").is_file():
        ours = (hf / "chat_template.jinja").read_text()
    theirs = kv(reader, "tokenizer.chat_template")
    if case.instruct:
        if not ours:
            res.set("template", False, "our tokenizer_config.json has no chat_template")
        else:
            res.set("template", theirs == ours, f"{len(ours)} chars, identical" if theirs == ours
                    else "missing" if theirs is None else "differs from ours")  # fmt: skip
    else:
        res.set("template", theirs is None and ours is None, "none (base)" if theirs is None else "present")
    if case.instruct and theirs:
        builtin, published = llamacpp_builtin_format(theirs), PUBLISHED_BUILTIN[case.family]
        res.set("built-in format", builtin == published, builtin if builtin == published else
                f"{builtin} (published template: {published})", note=True)  # fmt: skip
    else:
        res.set("built-in format", True, "–")

    # rope_freqs: llama.cpp derives it from config.json's rope_scaling
    if case.rope_factor is None:
        res.set("rope_freqs", "rope_freqs.weight" not in tensors, "absent" if "rope_freqs.weight" not in tensors
                else "present although the release has no rope scaling")  # fmt: skip
    elif "rope_freqs.weight" not in tensors:
        res.set("rope_freqs", False, "absent")
    else:
        got = gguf_array(tensors["rope_freqs.weight"], gguf).astype(np.float64)
        want_f = meta_rope_factors(params["rope_theta"], params["dim"] // params["n_heads"], case.rope_factor)
        close = got.shape == want_f.shape and np.allclose(got, want_f, rtol=1e-5, atol=0)
        res.set("rope_freqs", close, f"= Meta ×{case.rope_factor:g}" if close else f"{got} ≠ {want_f}")

    # tensor data vs Meta's merged originals and vs our safetensors
    meta = merged_meta(src, spec.embed_split_dim)
    hf_tensors = our_tensors(hf)
    heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    n_meta = n_ours = 0
    bad_meta, bad_ours = [], []
    for name, t in sorted(tensors.items()):
        names = source_names(name)
        if names is None:
            continue
        data = gguf_array(t, gguf)
        meta_name, hf_name = names
        if meta_name not in meta:
            bad_meta.append(f"{name} (no Meta {meta_name})")
        else:
            n_meta += 1
            if data.shape != meta[meta_name].shape or not np.array_equal(data, meta[meta_name]):
                bad_meta.append(name)
        if hf_name in hf_tensors:
            n_ours += 1
            if ".attn_q." in name or ".attn_k." in name:
                data = hf_permute(data, heads if ".attn_q." in name else n_kv)
            if data.shape != hf_tensors[hf_name].shape or not np.array_equal(data, hf_tensors[hf_name]):
                bad_ours.append(name)
        else:
            bad_ours.append(f"{name} (no {hf_name})")
    res.set("= Meta", not bad_meta and n_meta > 0, f"{n_meta} tensors" if not bad_meta else f"differ: {bad_meta[:4]}")
    res.set("= ours", not bad_ours and n_ours > 0, f"{n_ours} tensors" if not bad_ours else f"differ: {bad_ours[:4]}")

    del reader
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


# --- report ----------------------------------------------------------------------------------------------


def versions(args: argparse.Namespace) -> dict[str, str]:
    """What ran: llama.cpp (commit when visible), the sdist it came from, the converter venv's packages."""
    info: dict[str, str] = {}
    tree = args.converter.resolve().parent
    git = shutil.which("git")
    if git and (tree / ".git").is_dir():
        head = subprocess.run([git, "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0:
            info["llama.cpp"] = head.stdout.strip()
    sdist = tree.parent.parent  # llama-cpp-python's sdist vendors llama.cpp as vendor/llama.cpp
    if tree.parent.name == "vendor" and (sdist / "PKG-INFO").is_file():
        pkg = dict(re.findall(r"^(Name|Version): (.+)$", (sdist / "PKG-INFO").read_text(), re.M))
        info["from"] = f"{pkg.get('Name', '?')} {pkg.get('Version', '?')} sdist (vendor/llama.cpp)"
        changelog = sdist / "CHANGELOG.md"
        if "llama.cpp" not in info and changelog.is_file():
            m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", changelog.read_text())
            if m:
                info["llama.cpp"] = f"{m.group(1)} (per the sdist's CHANGELOG)"
    probe = (
        "import importlib.metadata as m, sys\n"
        "for p in ('gguf', 'transformers', 'torch', 'tokenizers', 'sentencepiece', 'numpy'):\n"
        "    try: print(p, m.version(p))\n"
        "    except m.PackageNotFoundError: print(p, '-')\n"
        "print('python', sys.version.split()[0])\n"
    )
    out = subprocess.run([str(args.python), "-c", probe], capture_output=True, text=True, check=False)
    info |= dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    import llama_convert

    ours = f"{getattr(llama_convert, '__version__', '?')}"
    if git:
        head = subprocess.run([git, "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        ours += f" (commit {head.stdout.strip()})" if head.returncode == 0 else ""
    first = {k: info.pop(k) for k in ("llama.cpp", "from") if k in info}
    return {**first, **info, "llama-convert": ours}


def markdown(results: list[Result], info: dict[str, str], args: argparse.Namespace) -> str:
    mark = {"ok": "✓", "FAIL": "✗", "note": "⚠"}
    lines = [
        "# llama.cpp converter compatibility",
        "",
        "`benchmarks/compat_llamacpp.py`: small synthesized Meta checkpoints (real head counts, KV heads, MP layout,",
        f"rope settings and tokenizer; head_dim {HEAD_DIM}, {N_LAYERS} layers) → `llama_convert.convert` → llama.cpp's",
        f"`convert_hf_to_gguf.py --outtype {args.outtype}` on the unchanged folder → checks on the GGUF.",
        "",
        "Ran with: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "| model | " + " | ".join(COLUMNS) + " | result |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    notes: dict[tuple[str, str], list[str]] = {}  # (column, text) → models
    for r in results:
        cells = []
        for column in COLUMNS:
            status, text = r.cells.get(column, ("FAIL", "not run"))
            if status == "note":
                numbers = []
                for part in text.split(NOTE_SEP):
                    notes.setdefault((column, part), []).append(r.case.key)
                    numbers.append(str(list(notes).index((column, part)) + 1))
                text = "note " + ", ".join(numbers)
            cells.append(f"{mark[status]} {text}".strip().replace("|", "\\|"))
        lines.append(f"| {r.case.key} | " + " | ".join(cells) + f" | {'**FAIL**' if r.failed else 'pass'} |")
    lines += ["", "✓ check passed, ✗ failed, ⚠ note (reported, not a failure). What each column checks: the script's"]
    lines += ["docstring and `benchmarks/COMPAT_LLAMACPP.md`."]
    failures = [(r.case.key, f) for r in results for f in r.failed]
    if failures:
        lines += ["", "## Failures", ""] + [f"- **{k}** {f}" for k, f in failures]
    if notes:
        lines += ["", "## Notes", ""]
        for i, ((column, text), models) in enumerate(notes.items(), 1):
            lines.append(f"{i}. **{column}** ({', '.join(models)}): {text}")
            if column == "built-in format":
                lines.append(f"   {BUILTIN_NOTE}")
    lines += ["", "## Warnings printed by llama.cpp's converter", ""]
    for r in results:
        lines += [f"- **{r.case.key}**:" + ("" if r.warnings else " none")]
        lines += ["  - `" + w.replace(str(args.workdir), "<workdir>").replace("`", "'") + "`" for w in r.warnings]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--converter", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--python", type=Path, required=True, help="python of a venv that can run the converter")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (about 1 GB per model)")
    parser.add_argument("--outtype", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--models", default=",".join(c.key for c in CASES), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the converter")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compat_llamacpp.md")
    parser.add_argument("--keep", action="store_true", help="keep checkpoints, HF folders and GGUF files")
    args = parser.parse_args(argv)
    args.converter, args.workdir = args.converter.resolve(), args.workdir.resolve()
    if not args.converter.is_file():
        parser.error(f"--converter: no such file {args.converter}")
    from llama_convert.testing.synth import bundled_llama3_tokenizer

    if bundled_llama3_tokenizer() is None:
        parser.error("needs Meta's Llama 3 tokenizer.model from the llama-models package (pip install llama-models)")
    wanted = args.models.split(",")
    cases = [c for c in CASES if c.key in wanted]
    if len(cases) != len(wanted):
        parser.error(f"--models: choose from {', '.join(c.key for c in CASES)}")

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = import_gguf(args.converter)
    args.workdir.mkdir(parents=True, exist_ok=True)
    spm_model = train_sentencepiece(args.workdir / "spm") if any(c.family == "llama2" for c in cases) else None
    info = versions(args)
    print("llama.cpp converter:", ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)

    results = []
    for case in cases:
        print(f"== {case.key}", flush=True)
        r = check_case(case, args, gguf, spm_model)
        for column, (status, text) in r.cells.items():
            print(f"   {status:4} {column}: {text.replace(NOTE_SEP, '; ')}", flush=True)
        results.append(r)

    report = markdown(results, info, args)
    print()
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    failed = [r.case.key for r in results if r.failed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
