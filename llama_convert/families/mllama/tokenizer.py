"""Tokenizer files of Llama 3.2 Vision: Meta's tiktoken file plus ``<|image|>`` at id 128256.

Meta's tokenizer names id 128011 ``<|image|>`` and its chat formatter rewrites that id to 128256, the
first row of ``learnable_embedding``. The published Hugging Face tokenizer instead appends ``<|image|>``
as token 128256 (128257 tokens) and calls 128011 ``<|reserved_special_token_2|>``; 128005 is
``<|step_id|>`` there, unlike the Llama 3.1 text tokenizer.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Final, Literal

from ...tokenizer.tiktoken_bpe import LLAMA3_PATTERN, build_tokenizer, read_ranks

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
    names, reserved = [], 0
    for offset in range(_NUM_SPECIAL):
        if offset in _NAMED:
            names.append(_NAMED[offset])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return [*names, IMAGE_TOKEN]


def chat_template(variant: Variant) -> str | None:
    """The published chat template of the Vision Instruct or Guard 3 Vision model; None for base models."""
    name = _TEMPLATES[variant]
    if name is None:
        return None
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _entry(name: str) -> dict[str, object]:
    return {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def tokenizer_files(tokenizer_model: Path, variant: Variant) -> dict[str, bytes]:
    """``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and, with a template,
    ``chat_template.json`` (where ``MllamaProcessor`` looks for it)."""
    tokens = read_ranks(tokenizer_model)
    names = special_token_names()
    tokenizer = build_tokenizer(tokens, names, pattern=LLAMA3_PATTERN, bos=BOS)
    eos = _EOS[variant]
    template = chat_template(variant)
    config: dict[str, object] = {
        "added_tokens_decoder": {
            str(len(tokens) + i): {**_entry(name), "special": True} for i, name in enumerate(names)
        },
        "bos_token": BOS,
    }
    if template is not None:
        config["chat_template"] = template
    config.update(
        {
            # The published files say true, which makes transformers 4.x strip spaces before punctuation
            # when decoding; false decodes exactly as Meta's tokenizer (as for the Llama 3 text models).
            "clean_up_tokenization_spaces": False,
            "eos_token": eos,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": CONTEXT_LENGTH,
            "pad_token": PAD,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
    )
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True).encode("utf-8"),
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json(
            {"bos_token": _entry(BOS), "eos_token": _entry(eos), "pad_token": _entry(PAD)}
        ),
    }
    if template is not None:
        files["chat_template.json"] = _json({"chat_template": template})
    return files
