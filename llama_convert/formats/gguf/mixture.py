"""llama-quantize's type mixture: which GGUF type each tensor of a file type (Q4_K_M, Q6_K, …) gets.

A port of ``llama_tensor_get_type`` (``src/llama-quant.cpp`` of the llama.cpp in the llama-cpp-python 0.3.36
sdist) for the file types we write, without an importance matrix, ``--pure`` or per-tensor overrides:

- tensors never quantized keep the type llama.cpp's converter gave them (1-D tensors, ``*_norm.weight``, the
  MoE router ``ffn_gate_inp``, position/patch embeddings, anything not ending in ``weight``);
- ``output.weight`` (or ``token_embd.weight`` when there is no ``output.weight``: tied embeddings) → Q6_K,
  or Q8_0 when its rows are not whole blocks of the file's base type (Q8_0 files keep Q8_0);
- per-class rules: ``attn_v`` counts its tensors in file order (``use_more_bits``, the first two/four), the
  70B rule (a ``llama`` model of 80 layers with grouped-query attention: its Q3_K/Q4_K ``attn_v`` → Q5_K),
  every ``ffn_down`` (dense, ``_exps``, ``_shexp``) by layer (parsed from the name when the model has experts),
  the 8-expert rules for ``attn_k``/``attn_v``/``attn_output``;
- rows that are not whole blocks of the chosen type fall back: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
  Q6_K → Q8_0, and to F16 when even that does not fit.

Tensors are named as in GGUF (``blk.N.attn_v.weight``, ``blk.N.ffn_down_exps.weight``…), so the mixture
knows no family; the model facts it needs are a :class:`ModelFacts`. The order llama-quantize visits (and
writes) tensors in — non-``blk`` tensors first, then by layer number, each group by name — is
:func:`quantize_order`; the counters of the C code depend on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ...errors import UnsupportedError

__all__ = [
    "FILE_TYPES",
    "ModelFacts",
    "allows_quantization",
    "choose_types",
    "file_type_id",
    "nbytes",
    "normalize_outtype",
    "quantize_order",
    "tensor_class",
    "type_table",
]

T = GGMLQuantizationType
F = LlamaFileType

# file type name (lower case) → (general.file_type, the file's default tensor type)
FILE_TYPES: dict[str, tuple[F, T]] = {
    "q4_0": (F.MOSTLY_Q4_0, T.Q4_0),
    "q4_1": (F.MOSTLY_Q4_1, T.Q4_1),
    "q5_0": (F.MOSTLY_Q5_0, T.Q5_0),
    "q5_1": (F.MOSTLY_Q5_1, T.Q5_1),
    "q8_0": (F.MOSTLY_Q8_0, T.Q8_0),
    "q2_k": (F.MOSTLY_Q2_K, T.Q2_K),
    "q3_k_s": (F.MOSTLY_Q3_K_S, T.Q3_K),
    "q3_k_m": (F.MOSTLY_Q3_K_M, T.Q3_K),
    "q3_k_l": (F.MOSTLY_Q3_K_L, T.Q3_K),
    "q4_k_s": (F.MOSTLY_Q4_K_S, T.Q4_K),
    "q4_k_m": (F.MOSTLY_Q4_K_M, T.Q4_K),
    "q5_k_s": (F.MOSTLY_Q5_K_S, T.Q5_K),
    "q5_k_m": (F.MOSTLY_Q5_K_M, T.Q5_K),
    "q6_k": (F.MOSTLY_Q6_K, T.Q6_K),
    "f16": (F.MOSTLY_F16, T.F16),
    "bf16": (F.MOSTLY_BF16, T.BF16),
}
_UNQUANTIZED = (T.F32, T.F16, T.BF16)
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel")
_NEVER += ("per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight", ".position_embd")
_NEVER += ("sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "time_mix_")
_NEVER_EXACT = ("position_embd.weight", "token_types.weight")
_LAYER = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelFacts:
    """What the mixture needs to know of the model: layers, attention heads, experts, the GGUF architecture."""

    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    arch: str = "llama"

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's ``LLM_TYPE_70B``: a ``llama`` model of 80 layers with fewer KV heads than heads."""
        return self.arch == "llama" and self.n_expert != 8 and self.n_layer == 80 and self.n_head != self.n_head_kv


def normalize_outtype(outtype: str) -> str:
    """``Q4_K_M`` / ``q4_k_m`` → ``q4_k_m``."""
    return outtype.strip().lower()


def file_type_id(outtype: str) -> int:
    """``general.file_type`` of a file type name (Q4_K_M 15, Q6_K 18, …)."""
    return int(FILE_TYPES[normalize_outtype(outtype)][0])


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def quantize_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order llama-quantize visits and writes them (its ``weight_name_comparer``)."""
    return sorted(names, key=lambda n: (_layer(n), n))


def tensor_class(name: str) -> str:
    """llama-quantize's category of a tensor name (``tensor_get_category``): ``output``, ``token_embd``,
    ``attn_qkv``, ``attn_kv_b``, ``attn_v``, ``attn_k``, ``attn_q``, ``attn_output``, ``ffn_up``, ``ffn_gate``,
    ``ffn_down`` or ``other``."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key in ("attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{key}.weight" in name:
            return key
    for key in ("ffn_up", "ffn_gate", "ffn_down"):
        if key in name:
            return key
    return "other"


def _n_dims(shape: Sequence[int]) -> int:
    """``ggml_n_dims``: trailing ne of 1 (leading numpy dimensions of 1) do not count."""
    ne = list(reversed(shape))
    return max([i + 1 for i, n in enumerate(ne) if n > 1], default=1)


def allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """``tensor_allows_quantization`` (default parameters): 2-D/3-D tensors ending in ``weight``, not norms,
    not the MoE router, not position/patch embeddings."""
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    return name not in _NEVER_EXACT and not any(key in name for key in _NEVER)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(ncols: int, qtype: T) -> T:
    """``tensor_type_fallback``: a type whose blocks fit the rows."""
    if ncols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    out = _FALLBACK.get(qtype, qtype)
    return out if ncols % GGML_QUANT_SIZES[out][0] == 0 else T.F16


class _State:
    def __init__(self, facts: ModelFacts, names: Sequence[str]) -> None:
        self.facts = facts
        classes = [tensor_class(n) for n in names]
        self.n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in classes)
        self.tied = "output" not in classes
        self.i_attention_wv = 0
        self.i_ffn_down = 0

    def layer_info(self, name: str) -> tuple[int, int]:
        n_layer = self.facts.n_layer
        if max(1, self.facts.n_expert) > 1:
            i_layer = _layer(name)
            if i_layer < 0 or i_layer >= n_layer:
                raise UnsupportedError(f"GGUF tensor {name} has no layer in [0, {n_layer}) that llama.cpp expects.")
            return i_layer, n_layer
        return self.i_ffn_down, n_layer


def _impl(st: _State, name: str, ncols: int, new: T, ft: F) -> T:
    """``llama_tensor_get_type_impl`` for the non-IQ file types (no importance matrix, not Falcon)."""
    facts, cat = st.facts, tensor_class(name)
    if cat == "output" or (st.tied and cat == "token_embd"):
        if ncols % GGML_QUANT_SIZES[new][0]:
            return T.Q8_0
        return T.Q6_K if new != T.Q8_0 else new
    if cat == "token_embd":
        return new
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        i, n = st.i_attention_wv, st.n_attention_wv
        if ft == F.MOSTLY_Q2_K:
            new = T.Q4_K if facts.n_gqa >= 4 else T.Q3_K
        elif ft == F.MOSTLY_Q3_K_M:
            new = T.Q5_K if i < 2 else T.Q4_K
        elif ft == F.MOSTLY_Q3_K_L:
            new = T.Q5_K
        elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(i, n):
            new = T.Q6_K
        elif ft == F.MOSTLY_Q4_K_S and i < 4:
            new = T.Q5_K
        if facts.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if facts.n_expert == 8:
            new = T.Q8_0
        st.i_attention_wv += 1
    elif cat == "attn_k":
        if facts.n_expert == 8:
            new = T.Q8_0
    elif cat == "ffn_down":
        i, n = st.layer_info(name)
        if ft == F.MOSTLY_Q2_K:
            new = T.Q3_K
        elif ft == F.MOSTLY_Q3_K_M:
            new = T.Q5_K if i < n // 16 else T.Q4_K
        elif ft == F.MOSTLY_Q3_K_L:
            new = T.Q5_K
        elif ft == F.MOSTLY_Q4_K_M:
            if _use_more_bits(i, n):
                new = T.Q6_K
        elif ft == F.MOSTLY_Q5_K_M and _use_more_bits(i, n):
            new = T.Q6_K
        elif ft == F.MOSTLY_Q4_K_S and i < n // 8:
            new = T.Q5_K
        st.i_ffn_down += 1
    elif cat == "attn_output":
        if facts.n_expert == 8:
            if ft in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M):
                new = T.Q5_K
        elif ft == F.MOSTLY_Q2_K:
            new = T.Q3_K
        elif ft == F.MOSTLY_Q3_K_M:
            new = T.Q4_K
        elif ft == F.MOSTLY_Q3_K_L:
            new = T.Q5_K
    elif cat in ("ffn_gate", "ffn_up"):
        st.layer_info(name)  # (the C code checks the layer; no rule of these file types depends on it)
    return new


def choose_types(tensors: Sequence[tuple[str, Sequence[int], T]], outtype: str, facts: ModelFacts) -> dict[str, T]:
    """The type of every tensor of a ``outtype`` file, as llama-quantize chooses it from a GGUF whose tensors
    are ``(name, numpy-order shape, type)`` (llama.cpp's bf16/f16 conversion). Any order; the counters run in
    :func:`quantize_order`."""
    key = normalize_outtype(outtype)
    if key not in FILE_TYPES:
        raise UnsupportedError(f"GGUF file type {outtype!r} is not one we write; choose {', '.join(FILE_TYPES)}.")
    ft, default = FILE_TYPES[key]
    by_name = {name: (tuple(shape), qtype) for name, shape, qtype in tensors}
    order = quantize_order(list(by_name))
    st = _State(facts, order)
    out: dict[str, T] = {}
    for name in order:
        shape, qtype = by_name[name]
        if not allows_quantization(name, shape):
            out[name] = qtype
        elif default in _UNQUANTIZED:
            out[name] = default
        else:
            ncols = shape[-1] if shape else 1
            out[name] = _fallback(ncols, _impl(st, name, ncols, default, ft))
    return out


def type_table(types: dict[str, T]) -> dict[str, dict[str, int]]:
    """Tensors per type per class: ``{"attn_v": {"Q6_K": 12, "Q4_K": 20}, …}`` (norms and other 1-D
    tensors fall in ``other``)."""
    table: dict[str, dict[str, int]] = {}
    for name, qtype in types.items():
        row = table.setdefault(tensor_class(name), {})
        row[qtype.name] = row.get(qtype.name, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}


def nbytes(shape: Sequence[int], qtype: T) -> int:
    """Bytes of a tensor of numpy-order ``shape`` stored as ``qtype``."""
    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size
