"""Llama 4 ``tokenizer.model`` (tiktoken ranks, o200k-style pattern) → Hugging Face tokenizer files.

The 2,048 special tokens follow the 200,000 ranks with the names Meta's
``llama_models.llama4.tokenizer`` gives them (ids 200000–202047).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

from ...errors import InputError
from ...tokenizer.tiktoken_bpe import read_ranks, tiktoken_tokenizer_files, tokenizer_config

__all__ = [
    "LLAMA4_PATTERN",
    "NUM_BASE_TOKENS",
    "chat_template",
    "llama4_tokenizer_files",
    "special_token_names",
    "tokenizer_config_json",
]

# ``O200K_PATTERN`` of Meta's Llama 4 tokenizer.
LLAMA4_PATTERN: Final = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BASE_TOKENS: Final = 200_000
NUM_SPECIAL_TOKENS: Final = 2048
BOS: Final = "<|begin_of_text|>"
EOS_BASE: Final = "<|end_of_text|>"
EOS_INSTRUCT: Final = "<|eot|>"
PAD: Final = "<|finetune_right_pad|>"


def _reserved(group: str, count: int, start: int) -> list[str]:
    return [f"<|{group}_reserved_special_token_{i}|>" for i in range(start, start + count)]


def special_token_names() -> list[str]:
    """Meta's 2,048 special token names in id order."""
    basic = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    text = [
        "<|header_start|>",
        "<|header_end|>",
        "<|eom|>",
        "<|eot|>",
        "<|step|>",
        *_reserved("text_post_train", 6, 0),
        "<|python_start|>",
        "<|python_end|>",
        "<|finetune_right_pad|>",
        *_reserved("text_post_train", 61, 8),
    ]
    vision = [
        "<|image_start|>",
        "<|image_end|>",
        *_reserved("vision", 2, 0),
        "<|tile_x_separator|>",
        "<|tile_y_separator|>",
        *_reserved("vision", 4, 2),
        "<|image|>",
        *_reserved("vision", 1, 6),
        "<|patch|>",
        *_reserved("vision", 1041, 7),
    ]
    reasoning = [*_reserved("reasoning", 8, 0), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>"]
    named = basic + text + vision + reasoning
    return named + [f"<|reserved_special_token_{i}|>" for i in range(NUM_SPECIAL_TOKENS - len(named))]


def llama4_tokenizer_files(
    tokenizer_model: Path, *, instruct: bool, context_length: int, vision: bool = True, template: str | None = None
) -> dict[str, bytes]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for Llama 4."""
    tokens = read_ranks(tokenizer_model)
    if len(tokens) != NUM_BASE_TOKENS:
        raise InputError(
            f"{tokenizer_model} holds {len(tokens)} ranks, not the {NUM_BASE_TOKENS} of Meta's Llama 4 "
            "tokenizer; copy tokenizer.model from the same Llama 4 download."
        )
    return tiktoken_tokenizer_files(
        tokenizer_model,
        special_token_names(),
        tokens=tokens,
        pattern=LLAMA4_PATTERN,
        bos=BOS,
        eos=EOS_INSTRUCT if instruct else EOS_BASE,
        pad=PAD,
        context_length=context_length,
        chat_template=template or (chat_template() if instruct else None),
        extra_config=_PROCESSOR if vision else None,
    )


# AutoProcessor then builds Llama4Processor from the processor files written beside.
_PROCESSOR: Final[dict[str, object]] = {"processor_class": "Llama4Processor"}


def tokenizer_config_json(*, instruct: bool, context_length: int, vision: bool = True) -> dict[str, object]:
    """``tokenizer_config.json``: Meta's special tokens, eos ``<|eot|>`` (instruct) or ``<|end_of_text|>``,
    pad ``<|finetune_right_pad|>`` and, for instruct models, the chat template."""
    return tokenizer_config(
        special_token_names(),
        NUM_BASE_TOKENS,
        bos=BOS,
        eos=EOS_INSTRUCT if instruct else EOS_BASE,
        context_length=context_length,
        template=chat_template() if instruct else None,
        pad=PAD,
        extra=_PROCESSOR if vision else None,
    )


def chat_template() -> str:
    """The offline Llama 4 chat template (Meta's ChatFormat as Jinja), shipped with the package."""
    text = resources.files(__package__).joinpath("templates", "llama4.jinja").read_text(encoding="utf-8")
    return text.rstrip("\n")  # no trailing newline: renderers without trim_blocks would print it
