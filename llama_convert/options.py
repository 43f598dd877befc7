"""The values every route shares: its options, a progress sink and what a conversion returns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .dtypes import DType, dtype_by_name
from .spec import ModelSpec

__all__ = ["ConversionResult", "ConvertOptions", "Format", "Progress", "as_dtype"]

Format = Literal["meta", "hf", "gguf"]


@dataclass(frozen=True)
class ConvertOptions:
    """Every option of a conversion, whatever the route."""

    dtype: str | DType | None = None
    max_shard_size: str | int = "5GB"
    llama_version: str | None = None
    instruct: bool | None = None
    force: bool = False
    verify: bool = True
    tokenizer: bool = True
    tokenizer_only: bool = False
    fold_kv_heads: bool = True
    verify_workers: int = 1
    resume: bool = True
    mp: int | None = None  # model-parallel degree of Meta output
    outtype: str | None = None  # GGUF tensor type: bf16, f16, q8_0
    mmproj: bool = True  # GGUF of a vision model: also write its projector as mmproj-<stem>.gguf beside it
    keep_fp8: bool = False  # FP8 source → HF: an fbgemm_fp8 folder instead of the dequantized bf16 model
    adapters: tuple[str | os.PathLike[str], ...] = ()  # PEFT LoRA folders merged while converting, in order

    def __post_init__(self) -> None:
        if isinstance(self.adapters, (str, os.PathLike)):
            object.__setattr__(self, "adapters", (self.adapters,))
        else:
            object.__setattr__(self, "adapters", tuple(self.adapters))


class Progress:
    """Progress sink; the CLI passes a terminal bar, the library default does nothing."""

    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` did."""

    spec: ModelSpec
    destination: Path
    files: tuple[str, ...]
    bytes_written: int
    seconds: float
    verified: bool  # checksums were checked against checklist.chk and matched
    notes: tuple[str, ...]
    resumed_bytes: int = 0  # output bytes kept from an interrupted run


def as_dtype(dtype: str | DType | None) -> DType | None:
    """A dtype from its name (``"bfloat16"``), a ``DType`` or ``None`` (keep the source's)."""
    return dtype_by_name(dtype) if isinstance(dtype, str) else dtype
