"""The Llama family's tokenizers: Llama 3.x special-token tables over the shared tiktoken converter, and
the SentencePiece converter for Llama 1/2 and Code Llama, each with the release's chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from ...errors import InputError
from ...tokenizer import detect_tokenizer_kind
from ...tokenizer.sentencepiece_bpe import spm_tokenizer_files
from ...tokenizer.tiktoken_bpe import named_specials, tiktoken_tokenizer_files
from .chat_templates import chat_template

__all__ = [
    "NUM_BASE_TOKENS",
    "llama3_tokenizer_files",
    "sentencepiece_tokenizer_files",
    "special_token_names",
    "tokenizer_files",
]

NUM_BASE_TOKENS: Final = 128_000
NUM_SPECIAL_TOKENS: Final = 256
BOS: Final = "<|begin_of_text|>"
EOS_BASE: Final = "<|end_of_text|>"
EOS_INSTRUCT: Final = "<|eot_id|>"

# Named special tokens by offset from NUM_BASE_TOKENS, as Hugging Face names them; every other
# offset is ``<|reserved_special_token_N|>`` with N counting up from 0 in id order. Meta's own
# tokenizer class names 128005 and 128011 differently (so its reserved numbers shift from there);
# the published Hugging Face files use these names.
_LLAMA3_NAMED: Final[dict[int, str]] = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "<|eot_id|>",
}
_LLAMA3_1_NAMED: Final[dict[int, str]] = {
    **_LLAMA3_NAMED,
    4: "<|finetune_right_pad_id|>",
    8: "<|eom_id|>",
    10: "<|python_tag|>",
}
_NAMED_BY_VERSION: Final[dict[str, dict[int, str]]] = {
    "3": _LLAMA3_NAMED,
    "3.1": _LLAMA3_1_NAMED,
    "3.2": _LLAMA3_1_NAMED,
    "3.3": _LLAMA3_1_NAMED,
}


def llama3_tokenizer_files(
    tokenizer_model: Path, *, version: str, instruct: bool, context_length: int, template: str | None = None
) -> dict[str, bytes]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of a Llama 3.x release
    (``template`` replaces the release's chat template, e.g. Llama Guard's)."""
    return tiktoken_tokenizer_files(
        tokenizer_model,
        special_token_names(version),
        bos=BOS,
        eos=EOS_INSTRUCT if instruct else EOS_BASE,
        context_length=context_length,
        chat_template=template if template is not None else chat_template(version, instruct),
    )


def special_token_names(version: str) -> list[str]:
    """Names of the 256 special tokens (ids 128000–128255 in Meta's file) for a Llama 3.x release."""
    try:
        named = _NAMED_BY_VERSION[version]
    except KeyError:
        raise InputError(
            f"Llama version {version!r} does not use the tiktoken tokenizer.model; "
            f"expected one of {', '.join(_NAMED_BY_VERSION)}."
        ) from None
    return named_specials(named, NUM_SPECIAL_TOKENS)


_SENTENCEPIECE_VERSIONS: Final = ("1", "2", "code")


def sentencepiece_tokenizer_files(
    tokenizer_model: Path, *, version: str, instruct: bool, context_length: int
) -> dict[str, bytes]:
    """The Hugging Face files of a Llama 1/2 or Code Llama SentencePiece ``tokenizer.model``."""
    if version not in _SENTENCEPIECE_VERSIONS:
        raise InputError(
            f"{tokenizer_model} is a SentencePiece tokenizer, which Llama {version} does not use; "
            f"check that the folder holds Llama {version}'s own tokenizer.model."
        )
    return spm_tokenizer_files(
        tokenizer_model, chat_template=chat_template(version, instruct), context_length=context_length
    )


def tokenizer_files(
    tokenizer_model: Path, *, version: str, instruct: bool, context_length: int, template: str | None = None
) -> dict[str, bytes]:
    """The Hugging Face tokenizer files (name → content) of a Llama release's ``tokenizer.model``."""
    if detect_tokenizer_kind(tokenizer_model) == "tiktoken":
        return llama3_tokenizer_files(
            tokenizer_model, version=version, instruct=instruct, context_length=context_length, template=template
        )
    return sentencepiece_tokenizer_files(
        tokenizer_model, version=version, instruct=instruct, context_length=context_length
    )
