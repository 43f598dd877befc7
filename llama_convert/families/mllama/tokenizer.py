"""Tokenizer files of Llama 3.2 Vision: Meta's tiktoken file plus ``<|image|>`` at id 128256.

Meta's tokenizer names id 128011 ``<|image|>`` and its chat formatter rewrites that id to 128256, the
first row of ``learnable_embedding``. The published Hugging Face tokenizer instead appends ``<|image|>``
as token 128256 (128257 tokens) and calls 128011 ``<|reserved_special_token_2|>``; 128005 is
``<|step_id|>`` there, unlike the Llama 3.1 text tokenizer.

Unlike the text tokenizers, it adds no ``<|begin_of_text|>`` of its own (as the published tokenizer and
transformers' own converter): ``MllamaProcessor`` puts it after the leading image tokens of a prompt that has
none (``<|image|><|begin_of_text|>…``) and then tokenizes with the defaults, and the chat templates write it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final, Literal

from ...tokenizer import json_bytes
from ...tokenizer.tiktoken_bpe import named_specials, tiktoken_tokenizer_files

__all__ = ["IMAGE_TOKEN", "Variant", "chat_template", "special_token_names", "tokenizer_files"]

Variant = Literal["base", "instruct", "guard"]
IMAGE_TOKEN: Final = "<|image|>"
BOS: Final = "<|begin_of_text|>"
PAD: Final = "<|finetune_right_pad_id|>"
_EOS: Final[dict[Variant, str]] = {"base": "<|end_of_text|>", "instruct": "<|eot_id|>", "guard": "<|eot_id|>"}
_TEMPLATES: Final[dict[Variant, str | None]] = {
    "base": None,
    "instruct": "llama3_2_vision.jinja",
    "guard": "llama_guard_3_vision.jinja",
}
_NUM_SPECIAL: Final = 256
# Named special tokens by offset from the last rank, as the published Vision tokenizer names them;
# every other offset is <|reserved_special_token_N|>, N counting up from 0 in id order.
_NAMED: Final = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    5: "<|step_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
}
CONTEXT_LENGTH: Final = 131072


def special_token_names() -> list[str]:
    """The 256 special tokens after Meta's ranks, then ``<|image|>``."""
    return [*named_specials(_NAMED, _NUM_SPECIAL), IMAGE_TOKEN]


def chat_template(variant: Variant) -> str | None:
    """The published chat template of the Vision Instruct or Guard 3 Vision model; None for base models."""
    name = _TEMPLATES[variant]
    if name is None:
        return None
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def tokenizer_files(tokenizer_model: Path, variant: Variant) -> dict[str, bytes]:
    """``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and, with a template,
    ``chat_template.json`` (where ``MllamaProcessor`` looks for it)."""
    template = chat_template(variant)
    files = tiktoken_tokenizer_files(
        tokenizer_model,
        special_token_names(),
        bos=BOS,
        eos=_EOS[variant],
        context_length=CONTEXT_LENGTH,
        chat_template=template,
        pad=PAD,
        add_bos=False,
    )
    if template is not None:
        files["chat_template.json"] = json_bytes({"chat_template": template})
    return files
