"""Hugging Face ``LlamaForCausalLM`` config.json → Meta's params.json (the way back).

Meta's format stores less than the Hugging Face config: no FFN width (it is derived from
``multiple_of`` and ``ffn_dim_multiplier``), no context length, no rope-scaling factor (a flag only).
We therefore refuse every config whose model Meta's reference code would compute differently, and
choose FFN parameters that reproduce ``intermediate_size`` exactly, preferring the pair the release
itself ships.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import InputError, UnsupportedError
from ...formats.meta.folder import ffn_width

__all__ = ["MetaTarget", "ffn_parameters", "target_from_hf_config"]

MetaFamily = Literal["llama1", "llama2", "codellama", "llama3"]

# (multiple_of, ffn_dim_multiplier) pairs Meta's params.json files use, per family, keyed by the release
# shape (dim, n_layers) and by its head counts (n_heads, n_kv_heads, tied) for shrunken copies.
_KNOWN_FFN: dict[MetaFamily, list[tuple[tuple[int, int], tuple[int, int, bool], tuple[int, float | None]]]] = {
    "llama1": [
        ((4096, 32), (32, 32, False), (256, None)),
        ((5120, 40), (40, 40, False), (256, None)),
        ((6656, 60), (52, 52, False), (256, None)),
        ((8192, 80), (64, 64, False), (256, None)),
    ],
    "llama2": [
        ((4096, 32), (32, 32, False), (256, None)),
        ((5120, 40), (40, 40, False), (256, None)),
        ((8192, 80), (64, 8, False), (4096, 1.3)),
    ],
    "codellama": [
        ((4096, 32), (32, 32, False), (256, 1.0)),
        ((5120, 40), (40, 40, False), (256, 1.0)),
        ((8192, 48), (64, 8, False), (256, 1.0)),
    ],
    "llama3": [
        ((2048, 16), (32, 8, True), (256, 1.5)),
        ((3072, 28), (24, 8, True), (256, 1.0)),
        ((4096, 32), (32, 8, False), (1024, 1.3)),
        ((8192, 80), (64, 8, False), (4096, 1.3)),
        ((16384, 126), (128, 8, False), (4096, 1.2)),
    ],
}
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _generic_ffn(dim: int, width: int) -> tuple[int, float | None]:
    """The pair with the fewest decimals in the multiplier and the largest power-of-two ``multiple_of``."""
    base = int(2 * (4 * dim) / 3)
    powers = [2**k for k in range(12, -1, -1) if width % 2**k == 0]
    for decimals in range(0, 7):
        for multiple_of in powers:
            if decimals == 0 and ffn_width(dim, multiple_of, None) == width:
                return multiple_of, None
            step = 10.0**-decimals
            around = width / base
            for k in range(math.floor(around / step) - 1, math.ceil(around / step) + 2):
                mult = round(k * step, decimals)
                if mult > 0 and ffn_width(dim, multiple_of, mult) == width:
                    return multiple_of, mult
    # Exact to the last bit: int(mult * base) == width with multiple_of 1.
    mult = width / base
    for _ in range(4):
        if int(mult * base) == width:
            return 1, mult
        mult = math.nextafter(mult, math.inf)
    raise UnsupportedError(f"no multiple_of / ffn_dim_multiplier reproduce intermediate_size {width} for dim {dim}.")


def ffn_parameters(
    family: MetaFamily, dim: int, n_layers: int, heads: tuple[int, int, bool], width: int
) -> tuple[int, float | None]:
    """``(multiple_of, ffn_dim_multiplier)`` reproducing ``width``: the release's own pair when the shape is
    a release's (by size, then by head counts), else any pair Meta uses for the family, else the simplest."""
    known = _KNOWN_FFN[family]
    ordered = [k[2] for k in known if k[0] == (dim, n_layers)]
    ordered += [k[2] for k in known if k[1] == heads]
    ordered += [k[2] for k in known]
    for multiple_of, mult in ordered:
        if ffn_width(dim, multiple_of, mult) == width:
            return multiple_of, mult
    return _generic_ffn(dim, width)


@dataclass(frozen=True)
class MetaTarget:
    """What the Meta side of an HF Llama model looks like: params.json and the layout facts."""

    family: MetaFamily
    params: dict[str, Any]  # params.json content, keys as the family's releases write them
    vocab_size: int
    intermediate_size: int
    tie_embeddings: bool
    embedding_split_dim: int  # 1 for Llama 1/2 and Code Llama (ParallelEmbedding), 0 for Llama 3
    rope_factor: float | None  # llama3-type scaling factor (8 or 32), None without scaling
    notes: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return int(self.params["dim"])

    @property
    def n_layers(self) -> int:
        return int(self.params["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.params["n_heads"])

    @property
    def n_kv_heads(self) -> int:
        return int(self.params.get("n_kv_heads") or self.params["n_heads"])

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def _rope(config: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, scaling)`` from a 4.x (``rope_theta`` + ``rope_scaling``) or 5.x (``rope_parameters``) config."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params and "rope_theta" not in params:
        params = params["full_attention"]  # per-layer-type form
    scaling = dict(params) if isinstance(params, dict) else dict(config.get("rope_scaling") or {})
    theta = scaling.pop("rope_theta", None)
    if theta is None:
        theta = config.get("rope_theta", 10000.0)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default") and not {k for k in scaling if k not in ("rope_type", "type")}:
        return float(theta), None
    if kind != "llama3":
        raise UnsupportedError(
            f"{where} uses rope scaling {kind!r}; Meta's format can only express Llama 3.1's 'llama3' scaling."
        )
    for key, value in _LLAMA3_ROPE.items():
        if float(scaling.get(key, -1)) != value:
            raise UnsupportedError(
                f"{where}: llama3 rope scaling with {key} {scaling.get(key)!r} (Meta's code fixes it at {value:g}) "
                "cannot be written as params.json."
            )
    factor = float(scaling.get("factor", 0))
    if factor not in (8.0, 32.0):
        raise UnsupportedError(
            f"{where}: llama3 rope scaling factor {factor:g} cannot be written as params.json "
            "(only the released factors 8 and 32 exist in Meta's format)."
        )
    return float(theta), scaling


def _need_int(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{where} has {key} = {value!r}, expected a positive integer; save the model again.")
    return value


def _refuse_unexpressible(config: dict[str, Any], where: str) -> None:
    arch = config.get("architectures") or ["LlamaForCausalLM"]
    if config.get("model_type") != "llama" or arch[0] not in ("LlamaForCausalLM", "LlamaModel"):
        raise UnsupportedError(
            f"{where} describes model_type {config.get('model_type')!r} ({arch[0]}); only Llama text models "
            "(LlamaForCausalLM) convert to Meta's format."
        )
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise UnsupportedError(f"{where} sets {key}; Meta's Llama has no bias terms, so it cannot be expressed.")
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"{where} uses activation {config['hidden_act']!r}; Meta's Llama uses SiLU only.")
    dim, heads = _need_int(config, "hidden_size", where), _need_int(config, "num_attention_heads", where)
    head_dim = config.get("head_dim")
    if dim % heads or (head_dim is not None and head_dim != dim // heads):
        raise UnsupportedError(
            f"{where} has head_dim {head_dim} with hidden_size {dim} and {heads} heads; Meta's format requires "
            "head_dim = hidden_size / num_attention_heads."
        )


def target_from_hf_config(config: dict[str, Any], *, where: str = "config.json") -> MetaTarget:
    """The Meta-side description of an HF Llama config; refuses what params.json cannot express."""
    _refuse_unexpressible(config, where)
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    n_layers = _need_int(config, "num_hidden_layers", where)
    kv = config.get("num_key_value_heads") or heads
    vocab = _need_int(config, "vocab_size", where)
    width = _need_int(config, "intermediate_size", where)
    if heads % kv:
        raise InputError(f"{where}: {heads} heads do not divide into {kv} KV heads; save the model again.")
    eps = float(config.get("rms_norm_eps", 1e-6))
    theta, scaling = _rope(config, where)
    tied = bool(config.get("tie_word_embeddings", False))
    notes: list[str] = []
    if scaling is not None or vocab >= 128000 or config.get("bos_token_id") == 128000 or theta == 500000.0:
        family: MetaFamily = "llama3"
    elif theta >= 1e6:
        family = "codellama"
    elif eps <= 1e-6 and config.get("max_position_embeddings") == 2048:
        family = "llama1"
    else:
        family = "llama2"
    multiple_of, mult = ffn_parameters(family, dim, n_layers, (heads, kv, tied), width)
    params: dict[str, Any] = {"dim": dim, "n_layers": n_layers, "n_heads": heads}
    if kv != heads or family == "llama3":
        params["n_kv_heads"] = kv
    if family == "llama3":
        params["vocab_size"] = vocab
    elif family != "codellama":
        # Llama 1/2 write -1 and take the size from the tokenizer; keep a resized vocabulary explicit.
        params["vocab_size"] = -1 if vocab == 32000 else vocab
    params["multiple_of"] = multiple_of
    if mult is not None:
        params["ffn_dim_multiplier"] = mult
    params["norm_eps"] = eps
    if family in ("llama3", "codellama") or theta != 10000.0:
        params["rope_theta"] = int(theta) if family == "codellama" and theta.is_integer() else theta
    if scaling is not None:
        params["use_scaled_rope"] = True
        if scaling["factor"] == 32.0:
            notes.append(
                "rope scaling factor 32 (Llama 3.2 1B/3B) is written as use_scaled_rope, as Meta's own "
                "params.json does; Meta's reference code applies factor 8 to it"
            )
    return MetaTarget(
        family=family,
        params=params,
        vocab_size=vocab,
        intermediate_size=width,
        tie_embeddings=tied,
        embedding_split_dim=0 if family == "llama3" else 1,
        rope_factor=scaling["factor"] if scaling is not None else None,
        notes=tuple(notes),
    )
