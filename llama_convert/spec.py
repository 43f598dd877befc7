"""What was recognised in a checkpoint, and why: the values families hand to the plan, routes and API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dtypes import DType
from .formats.meta.folder import MetaFolder

__all__ = ["Evidence", "Hints", "ModelSpec"]


@dataclass(frozen=True)
class Evidence:
    """One decision and what in the files made it: ``inspect`` prints these."""

    topic: str  # "release", "variant", "rope", "embeddings", "KV heads", …
    decision: str
    because: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.decision} ← {self.because}"


@dataclass(frozen=True)
class Hints:
    """What is known besides the tensors: names, a Hub snapshot's files, and the user's overrides."""

    names: tuple[str, ...] = ()  # the checkpoint folder's name, then its parents' (nearest first)
    repo_name: str | None = None  # the Hub repository's name when the checkpoint sits in its original/ folder
    hf_config: dict[str, Any] | None = None  # a Hub snapshot's config.json beside original/
    hf_generation_config: dict[str, Any] | None = None
    hf_tokenizer_config: dict[str, Any] | None = None
    version: str | None = None  # --llama-version
    instruct: bool | None = None  # --instruct / --base
    fold_kv_heads: bool = True  # False: --keep-kv-heads

    @property
    def variant_names(self) -> tuple[str, ...]:
        """Names that can tell a variant (Instruct, Guard, 3.3): the repository's first, then the folders'."""
        return (self.repo_name, *self.names) if self.repo_name else self.names


@dataclass(frozen=True)
class ModelSpec:
    """What was recognised, and why. Families subclass it with their own facts."""

    family: str
    name: str  # "Llama 3.1 8B Instruct"
    folder: MetaFolder
    mp: int
    source_dtype: DType
    instruct: bool
    evidence: tuple[Evidence, ...]
    summary: str  # "32 layers, dim 4096, 32 heads / 8 KV heads, vocab 128256"
    parameter_count: int
    notes: tuple[str, ...]

    @property
    def shards(self) -> tuple[Path, ...]:
        return self.folder.shards
