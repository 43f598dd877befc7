"""Shared tokenizer machinery: Meta's ``tokenizer.model`` kinds → Hugging Face tokenizer files.

Two kinds exist: Llama 3.x ships a tiktoken BPE file (base64 token + rank per line),
Llama 1/2 and Code Llama ship a SentencePiece model (protobuf).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..formats.storage import as_source_path

TokenizerKind = Literal["tiktoken", "sentencepiece"]

__all__ = ["TokenizerKind", "detect_tokenizer_kind", "json_bytes"]


def json_bytes(value: object) -> bytes:
    """JSON as the Hugging Face files are written: indented, UTF-8 kept, trailing newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def detect_tokenizer_kind(path: Path) -> TokenizerKind:
    """Tell a tiktoken BPE file from a SentencePiece model by its first bytes."""
    with as_source_path(path).open("rb") as f:  # a local or a remote file
        head = f.read(256)
    if not head:
        raise InputError(f"{path} is empty; download tokenizer.model again.")
    first_line = head.split(b"\n", 1)[0]
    parts = first_line.split(b" ")
    if len(parts) == 2 and parts[1].strip().isdigit():
        return "tiktoken"
    # A SentencePiece ModelProto starts with field 1 (pieces), wire type 2: tag byte 0x0A.
    if head[:1] == b"\x0a":
        return "sentencepiece"
    raise InputError(
        f"{path} is neither a tiktoken BPE file (Llama 3) nor a SentencePiece model (Llama 1/2); "
        "check that it is Meta's tokenizer.model."
    )
