"""Per-release facts: everything that differs between Llama generations lives in this table.

Values follow Meta's params.json files and the published Hugging Face meta-llama repos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["RELEASES", "SIZE_LABELS", "VERSIONS", "Family", "Release", "Version"]

Version = Literal["1", "2", "code", "3", "3.1", "3.2", "3.3"]
Family = Literal["llama1", "llama2", "codellama", "llama3"]
VERSIONS: tuple[Version, ...] = ("1", "2", "code", "3", "3.1", "3.2", "3.3")


@dataclass(frozen=True)
class Release:
    """What one Llama release needs to be converted and described on the Hugging Face side."""

    version: Version
    family: Family
    title: str
    context_length: int
    default_rope_theta: float
    rope_scaling_factor: float | None  # llama3-type rope scaling (not in params.json)
    embedding_split_dim: int  # model-parallel split axis of tok_embeddings
    tokenizer_kind: Literal["tiktoken", "sentencepiece"]
    bos_token_id: int
    eos_token_id: int
    instruct_eos_token_ids: tuple[int, ...]  # generation_config eos of instruct/chat models
    instruct_config_eos: int | tuple[int, ...]  # config.json eos of instruct/chat models
    write_head_dim: bool
    ties_embeddings: bool  # output.weight equals the embedding: HF ties them
    generation_extras: tuple[tuple[str, int], ...] = ()
    instruct_word: str = "Instruct"
    # The oldest transformers that reads every field we write for this release; written as
    # ``transformers_version`` like the published configs (some readers branch on its presence).
    min_transformers: str = "4.31.0"


_LLAMA3_SCALED = {
    "default_rope_theta": 500000.0,
    "embedding_split_dim": 0,
    "tokenizer_kind": "tiktoken",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "instruct_eos_token_ids": (128001, 128008, 128009),
    "instruct_config_eos": (128001, 128008, 128009),
    "context_length": 131072,
}
_SENTENCEPIECE = {
    "embedding_split_dim": 1,
    "tokenizer_kind": "sentencepiece",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "instruct_eos_token_ids": (2,),
    "instruct_config_eos": 2,
    "rope_scaling_factor": None,
    "write_head_dim": False,
    "ties_embeddings": False,
}

RELEASES: dict[Version, Release] = {
    r.version: r
    for r in (
        Release("1", "llama1", "Llama 1", context_length=2048, default_rope_theta=10000.0, **_SENTENCEPIECE),
        Release(
            "2",
            "llama2",
            "Llama 2",
            context_length=4096,
            default_rope_theta=10000.0,
            generation_extras=(("pad_token_id", 0), ("max_length", 4096)),
            instruct_word="chat",
            **_SENTENCEPIECE,
        ),
        Release("code", "codellama", "Code Llama", context_length=16384, default_rope_theta=1e6, **_SENTENCEPIECE),
        Release(
            "3",
            "llama3",
            "Llama 3",
            context_length=8192,
            default_rope_theta=500000.0,
            rope_scaling_factor=None,
            embedding_split_dim=0,
            tokenizer_kind="tiktoken",
            bos_token_id=128000,
            eos_token_id=128001,
            instruct_eos_token_ids=(128001, 128009),
            instruct_config_eos=128009,
            write_head_dim=False,
            ties_embeddings=False,
            min_transformers="4.40.0",
        ),
        Release(
            "3.1",
            "llama3",
            "Llama 3.1",
            rope_scaling_factor=8.0,
            write_head_dim=False,
            ties_embeddings=False,
            min_transformers="4.43.0",
            **_LLAMA3_SCALED,
        ),
        # Meta's reference code hard-codes factor 8; Meta confirmed 32 for the 3.2 1B/3B models.
        Release(
            "3.2",
            "llama3",
            "Llama 3.2",
            rope_scaling_factor=32.0,
            write_head_dim=True,
            ties_embeddings=True,
            min_transformers="4.45.0",
            **_LLAMA3_SCALED,
        ),
        Release(
            "3.3",
            "llama3",
            "Llama 3.3",
            rope_scaling_factor=8.0,
            write_head_dim=True,
            ties_embeddings=False,
            min_transformers="4.45.0",
            **_LLAMA3_SCALED,
        ),
    )
}

# (family, dim, n_layers) -> the size the release is known by.
SIZE_LABELS: dict[tuple[Family, int, int], str] = {
    ("llama1", 4096, 32): "7B",
    ("llama1", 5120, 40): "13B",
    ("llama1", 6656, 60): "30B",
    ("llama1", 8192, 80): "65B",
    ("llama2", 4096, 32): "7B",
    ("llama2", 5120, 40): "13B",
    ("llama2", 8192, 80): "70B",
    ("codellama", 4096, 32): "7B",
    ("codellama", 5120, 40): "13B",
    ("codellama", 8192, 48): "34B",
    ("codellama", 8192, 80): "70B",
    ("llama3", 2048, 16): "1B",
    ("llama3", 3072, 28): "3B",
    ("llama3", 4096, 32): "8B",
    ("llama3", 8192, 80): "70B",
    ("llama3", 16384, 126): "405B",
}
