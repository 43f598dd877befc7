"""The Llama text family in GGUF (architecture ``llama``), as llama.cpp's ``convert_hf_to_gguf.py`` writes it
for our Hugging Face output of the same checkpoint.

Tensors come from the same recipes as the Hugging Face route, renamed (``token_embd``, ``blk.N.attn_q``, …)
and without the rotary permutation: llama.cpp undoes Hugging Face's permutation of ``q_proj``/``k_proj``,
so its ``attn_q``/``attn_k`` are Meta's ``wq``/``wk`` rows as stored. Metadata is derived from the
config.json, generation_config.json and tokenizer files the family writes, key by key as llama.cpp does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFWriter, Metadata, size_label

from ...errors import InputError, UnsupportedError
from ...formats.gguf.vocab import add_bpe_vocab, add_sentencepiece_vocab
from ...plan import TensorRecipe
from .layout import recipes
from .spec import LlamaSpec

__all__ = [
    "ARCH",
    "add_hf_metadata",
    "add_metadata",
    "add_spec_metadata",
    "gguf_name",
    "gguf_recipes",
    "hf_head_dim",
    "hf_shapes",
    "hf_tensor",
    "model_id",
    "rope_freqs",
    "spec_from_hf",
]

ARCH = "llama"
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
ROPE_FREQS = "rope_freqs.weight"
CODE_LLAMA_VOCAB, CODE_LLAMA_EOT = 32016, 32010  # Code Llama 7B/13B infill vocabulary and its <EOT> id
LLAMA3_PRE_TOKENIZER = "llama-bpe"  # llama.cpp's name for Llama 3's pre-tokenizer (regex and byte-level BPE)


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight`` (llama.cpp's tensor map)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)
    return f"blk.{layer}.{_LAYER_NAMES[suffix]}"


def gguf_recipes(spec: LlamaSpec) -> list[TensorRecipe]:
    """The family's recipes with GGUF names, in the source's dtype, rotary rows left in Meta's order."""
    return [
        dataclasses.replace(r, name=gguf_name(r.name), rotary_heads=None, dtype=r.source_dtype)
        for r in recipes(spec, spec.source_dtype)
    ]


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """Rope parameters from either config.json spelling (transformers 4: rope_scaling + rope_theta; 5:
    rope_parameters)."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def hf_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the LlamaForCausalLM folder config.json describes, with its shape (lm_head.weight only
    when untied): the weights must agree before a GGUF file is written from them."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv, head_dim = config.get("num_key_value_heads") or heads, hf_head_dim(config)
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    layer = {
        "input_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv * head_dim, hidden),
        "self_attn.v_proj.weight": (kv * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "post_attention_layernorm.weight": (hidden,),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{suffix}": shape for suffix, shape in layer.items()})
    return shapes


def hf_head_dim(config: dict[str, Any]) -> int:
    """Rows per head of q/k in a config.json."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_freqs(config: dict[str, Any]) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` factors for llama3-type rope scaling (None without it), computed in
    float32 step by step as its converter does with torch scalars."""
    rope = _rope(config)
    kind = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if kind == "default":
        return None
    if kind != "llama3":
        raise UnsupportedError(f"config.json: rope type {kind!r} is not one llama.cpp's llama architecture takes.")
    f32 = np.float32
    dim = hf_head_dim(config)
    freqs = f32(1.0) / (f32(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(f32(1))
        elif wavelen > low_wavelen:
            out.append(f32(factor))
        else:
            smooth = (f32(old) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def model_id(spec: LlamaSpec) -> str:
    """The name the naming keys are derived from: the model's published-style name (``Llama-3.1-8B-Instruct``,
    ``Llama-3.2-1B``; base models carry no suffix)."""
    name = spec.name.removesuffix(" base") if not spec.instruct else spec.name
    return name.replace(" ", "-")


def _naming(writer: GGUFWriter, name: str, config: dict[str, Any], generation: dict[str, Any], params: int) -> None:
    """``general.type``, sampling defaults and naming keys, through gguf's own ``Metadata`` heuristics."""
    meta = Metadata.apply_metadata_heuristic(Metadata(), None, config, Path(name), params)
    meta.sampling_top_k = generation.get("top_k")
    meta.sampling_top_p = generation.get("top_p")
    meta.sampling_min_p = generation.get("min_p")
    meta.sampling_temp = generation.get("temperature")
    meta.name = meta.name or name
    meta.size_label = meta.size_label or size_label(params, params, 0, 0)
    writer.add_type("model")
    meta.set_gguf_meta_model(writer)


def _hparams(writer: GGUFWriter, config: dict[str, Any], file_type: int) -> None:
    """``llama.*`` keys in llama.cpp's order (``TextModel.set_gguf_parameters`` + ``LlamaModel``'s)."""
    rope = _rope(config)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(hf_head_dim(config))  # transformers' LlamaConfig always has a head_dim
    writer.add_value_length(hf_head_dim(config))
    writer.add_file_type(file_type)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(hf_head_dim(config))


def llama3_pre_tokenizer(tokenizer_json: dict[str, Any]) -> bool:
    """Whether a tokenizer.json splits text as Llama 3's does (its regex, then byte-level), which llama.cpp
    names ``llama-bpe``."""
    from ...tokenizer.tiktoken_bpe import LLAMA3_PATTERN

    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        return False  # not a pipeline of steps: not Llama 3's
    patterns = [s.get("pattern") for s in steps if s.get("type") == "Split"]
    regexes = [p.get("Regex") if isinstance(p, dict) else None for p in patterns]
    return regexes == [LLAMA3_PATTERN] and any(s.get("type") == "ByteLevel" for s in steps)


def add_metadata(
    writer: GGUFWriter,
    files: dict[str, bytes],
    *,
    name: str,
    sentencepiece: Path | None,
    file_type: int,
    n_params: int,
    where: str = "tokenizer.json",
) -> None:
    """Every metadata key llama.cpp's converter writes for a Hugging Face Llama folder holding ``files``
    (config.json, generation_config.json, tokenizer files) and named ``name``; ``sentencepiece`` is its
    SentencePiece tokenizer.model (Llama 1/2), None for Llama 3's byte-level BPE."""
    config = json.loads(files["config.json"])
    generation = json.loads(files.get("generation_config.json", b"{}"))
    _naming(writer, name, config, generation, n_params)
    _hparams(writer, config, file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    if sentencepiece is None:
        if not llama3_pre_tokenizer(json.loads(files["tokenizer.json"])):
            raise UnsupportedError(
                f"{where} does not pre-tokenize as Llama 3 does, so llama.cpp's pre-tokenizer for it is unknown; "
                "convert with llama.cpp's convert_hf_to_gguf.py instead."
            )
        add_bpe_vocab(writer, files, config["vocab_size"], pre=LLAMA3_PRE_TOKENIZER)
    else:
        add_sentencepiece_vocab(writer, files, sentencepiece, config["vocab_size"])
    if config["vocab_size"] == CODE_LLAMA_VOCAB:
        # llama.cpp sets Code Llama's infill ids; gguf's writer has a key only for eot among them
        writer.add_eot_token_id(CODE_LLAMA_EOT)


def add_spec_metadata(
    writer: GGUFWriter, spec: LlamaSpec, files: dict[str, bytes], *, entries: Any = None, **kw: int
) -> None:
    """``add_metadata`` for a Meta checkpoint: the family's own files, named after the detected model
    (``entries``, the file's tensor names and shapes, are not needed: no experts)."""
    sp = None if spec.release.tokenizer_kind == "tiktoken" else spec.folder.tokenizer
    add_metadata(writer, files, name=model_id(spec), sentencepiece=sp, **kw)  # type: ignore[arg-type]


# The Hugging Face → GGUF route: what llama.cpp's converter does with each tensor of a LlamaForCausalLM folder.
HF_METADATA_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers saved; llama.cpp skips them too
_HF_ROTARY = {"self_attn.q_proj.weight": "num_attention_heads", "self_attn.k_proj.weight": "num_key_value_heads"}


def hf_tensor(hf_name: str, config: dict[str, Any]) -> tuple[str, int | None] | None:
    """(GGUF name, heads whose rows go back from Hugging Face's rotary halves to Meta's pairs, or None) of an
    HF tensor; None for a buffer llama.cpp skips. Raises ``KeyError``/``ValueError`` for a foreign tensor."""
    if hf_name.endswith(_HF_IGNORED_SUFFIXES):
        return None
    suffix = hf_name.split(".", 3)[-1] if hf_name.startswith("model.layers.") else ""
    heads_key = _HF_ROTARY.get(suffix)
    heads = config.get(heads_key, config["num_attention_heads"]) if heads_key else None
    return gguf_name(hf_name), heads


def add_hf_metadata(writer: GGUFWriter, root: Path, *, file_type: int, n_params: int, entries: Any = None) -> None:
    """``add_metadata`` for a Hugging Face folder, from its own files, named after the folder as llama.cpp's are."""
    from ...tokenizer import detect_tokenizer_kind

    files = {n: (root / n).read_bytes() for n in HF_METADATA_FILES if (root / n).is_file()}
    model = root / "tokenizer.model"
    sp = model if model.is_file() and detect_tokenizer_kind(model) == "sentencepiece" else None
    if sp is None and "tokenizer.json" not in files:
        raise InputError(f"{root} has neither tokenizer.json nor a SentencePiece tokenizer.model; add one.")
    add_metadata(
        writer,
        files,
        name=root.resolve().name,
        sentencepiece=sp,
        file_type=file_type,
        n_params=n_params,
        where=str(root / "tokenizer.json"),
    )


def spec_from_hf(config: dict[str, Any], root: Path, dtype: Any) -> tuple[LlamaSpec, tuple[str, ...]]:
    """The spec of the model an HF folder holds (for the result), and the notes reading its config gave."""
    from .from_hf import target_from_hf_config
    from .to_meta import target_spec

    target = target_from_hf_config(config, where=str(root / "config.json"))
    for key in ("max_position_embeddings", "rms_norm_eps"):  # GGUF records them; params.json need not
        if config.get(key) is None:
            raise InputError(f"{root / 'config.json'} lacks {key}, which a GGUF file records; save the model again.")
    return target_spec(target, mp=1, dtype=dtype, root=root), tuple(target.notes)
