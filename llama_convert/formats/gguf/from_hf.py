"""A Hugging Face Llama folder → GGUF, as llama.cpp's ``convert_hf_to_gguf.py`` converts it, streamed.

The folder's own config.json, generation_config.json and tokenizer files give the metadata (the files
llama.cpp reads; the naming keys come from the folder's name, as llama.cpp's do). Tensors are read by
rows with our safetensors reader; ``q_proj``/``k_proj`` rows go back from Hugging Face's rotary halves to
Meta's interleaved pairs, as llama.cpp's ``LlamaModel.permute`` does, then every block is encoded to the
tensor's GGUF type. Verbatim BF16 tensors are copied in the kernel.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ...errors import InputError, UnsupportedError
from ...execute import BLOCK_BYTES, rotary_to_pairs
from ...families.llama import gguf as llama_gguf
from ...tokenizer import detect_tokenizer_kind
from ..hf.reader import HFFolder, find_hf_folder
from .encode import OUTTYPES, encode, file_type, tensor_nbytes, tensor_type
from .writer import GGUFStreamWriter, TensorEntry, atomic_output_file, check_gguf_destination

__all__ = ["hf_to_gguf"]

_METADATA_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers saved; llama.cpp skips them too
_ARCHITECTURES = ("LlamaForCausalLM",)


def _outtype(hf: HFFolder, outtype: str | None) -> str:
    chosen = outtype or ("bf16" if any(r.dtype.torch_name == "bfloat16" for r in hf.tensors.values()) else "f16")
    if chosen not in OUTTYPES:
        raise UnsupportedError(f"GGUF output type {chosen!r} is not supported; choose bf16, f16 or q8_0.")
    return chosen


def _plan(hf: HFFolder, config: dict[str, Any], outtype: str) -> list[tuple[TensorEntry, str | None, Any]]:
    """(entry, HF tensor or None, rope factors or rotary heads) in write order: rope_freqs, then file order."""
    heads = config["num_attention_heads"]
    rotary = {"self_attn.q_proj.weight": heads, "self_attn.k_proj.weight": config.get("num_key_value_heads", heads)}
    out: list[tuple[TensorEntry, str | None, Any]] = []
    freqs = llama_gguf.rope_freqs(config)
    if freqs is not None:
        entry = TensorEntry(llama_gguf.ROPE_FREQS, freqs.shape, GGMLQuantizationType.F32, freqs.nbytes)
        out.append((entry, None, freqs))
    for name, ref in hf.tensors.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        try:
            gguf_name = llama_gguf.gguf_name(name)
        except (KeyError, ValueError):
            raise UnsupportedError(
                f"{hf.root} holds {name}, which a Llama text model has no place for; merge adapters or remove it."
            ) from None
        qtype = tensor_type(gguf_name, ref.shape, outtype)  # type: ignore[arg-type]
        entry = TensorEntry(gguf_name, ref.shape, qtype, tensor_nbytes(ref.shape, qtype))
        out.append((entry, name, rotary.get(name.split(".", 3)[-1]) if name.startswith("model.layers.") else None))
    return out


def _write(stream: GGUFStreamWriter, hf: HFFolder, plan: list, head_dim: int, advance: Any) -> None:
    for entry, name, extra in plan:
        if name is None:
            advance(stream.write(extra))
            stream.end_tensor()
            continue
        ref = hf.tensors[name]
        if extra is None and entry.qtype == GGMLQuantizationType.BF16 and ref.dtype.torch_name == "bfloat16":
            stream.copy_from(hf.file_of(name).fileno(), ref.file_offset, ref.nbytes, advance)
            stream.end_tensor()
            continue
        rows = ref.shape[0]
        row_bytes = math.prod(ref.shape[1:]) * 4
        unit = head_dim if extra else 1
        step = max(unit, BLOCK_BYTES // max(row_bytes, 1) // unit * unit)
        for start in range(0, rows, step):
            block = hf.read_rows(name, start, min(rows, start + step))
            if extra:
                block = rotary_to_pairs(block.reshape(block.shape[0], -1), head_dim)
            advance(stream.write(encode(np.ascontiguousarray(block), ref.dtype, entry.qtype)))
        stream.end_tensor()


def hf_to_gguf(src: Path, dst: Path, opts: Any, *, progress: Any) -> Any:
    """A Hugging Face ``LlamaForCausalLM`` folder → one GGUF file at ``dst``."""
    from ...families.llama.from_hf import target_from_hf_config
    from ...families.llama.to_meta import target_spec
    from ...pipeline import ConversionResult

    started = time.perf_counter()
    check_gguf_destination(dst.absolute(), force=opts.force)
    with find_hf_folder(src) as hf:
        config = hf.config
        arch = (config.get("architectures") or ["?"])[0]
        if arch not in _ARCHITECTURES:
            raise UnsupportedError(
                f"{hf.root / 'config.json'} describes {arch}; only Llama text models ({', '.join(_ARCHITECTURES)}) "
                "are written as GGUF by this version."
            )
        target = target_from_hf_config(config, where=str(hf.root / "config.json"))
        files = {n: (hf.root / n).read_bytes() for n in _METADATA_FILES if (hf.root / n).is_file()}
        model = hf.root / "tokenizer.model"
        sp = model if model.is_file() and detect_tokenizer_kind(model) == "sentencepiece" else None
        if sp is None and "tokenizer.json" not in files:
            raise InputError(f"{hf.root} has neither tokenizer.json nor a SentencePiece tokenizer.model; add one.")
        outtype = _outtype(hf, opts.outtype)
        plan = _plan(hf, config, outtype)
        writer = GGUFWriter(None, llama_gguf.ARCH)
        n_params = sum(math.prod(e.shape) for e, _, _ in plan)
        llama_gguf.add_metadata(
            writer,
            files,
            name=hf.root.resolve().name,
            sentencepiece=sp,
            file_type=file_type(outtype),  # type: ignore[arg-type]
            n_params=n_params,
            where=str(hf.root / "tokenizer.json"),
        )
        spec = target_spec(target, mp=1, dtype=next(iter(hf.tensors.values())).dtype, root=hf.root)
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        total = sum(e.nbytes for e, _, _ in plan)
        with atomic_output_file(dst, force=opts.force) as tmp:
            stream = GGUFStreamWriter(tmp, writer, [e for e, _, _ in plan])
            progress.start(total, f"Converting {hf.root.name} to GGUF {outtype}")
            try:
                _write(stream, hf, plan, head_dim, progress.advance)
            except BaseException:
                stream.abort()
                raise
            finally:
                progress.finish()
            stream.close()
    return ConversionResult(
        spec=spec,
        destination=dst,
        files=(dst.name,),
        bytes_written=dst.stat().st_size,
        seconds=time.perf_counter() - started,
        verified=False,
        notes=tuple(target.notes),
    )
