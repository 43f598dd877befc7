"""Llama Guard 4 12B: Llama 4 Scout pruned to a dense model (no ``moe_args``: every layer a dense FFN), with
the Llama 4 vision encoder and tokenizer, converted to ``Llama4ForConditionalGeneration`` without experts.

Decisions:
* ``attention_chunk_size`` is written as params.json gives it. Guard 4's is null (no chunked attention):
  Meta's reference then attends over the whole sequence, and so does transformers with null (checked by the
  tests against Meta's reference on sequences longer than the fixture's chunk). Users who set 8192 to work
  around old transformers versions changed the model: for prompts over 8192 tokens attention is then chunked,
  which Meta's reference never does.
* The chat template is built offline from Meta's Guard 4 prompt format (categories S1–S14 with S14 Code
  Interpreter Abuse, ``categories`` / ``excluded_category_keys`` as the Guard 3 templates take them, image
  placeholders for the processor); the published template text was not available offline.
* GGUF: llama.cpp's Llama 4 loader (src/models/llama4.cpp) throws "model cannot have zero experts", so the
  GGUF routes are refused for it.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

__all__ = ["CATEGORIES", "GGUF_REFUSAL", "chat_template"]

CATEGORIES: Final = {
    "S1": "Violent Crimes.",
    "S2": "Non-Violent Crimes.",
    "S3": "Sex Crimes.",
    "S4": "Child Exploitation.",
    "S5": "Defamation.",
    "S6": "Specialized Advice.",
    "S7": "Privacy.",
    "S8": "Intellectual Property.",
    "S9": "Indiscriminate Weapons.",
    "S10": "Hate.",
    "S11": "Self-Harm.",
    "S12": "Sexual Content.",
    "S13": "Elections.",
    "S14": "Code Interpreter Abuse.",
}
GGUF_REFUSAL: Final = (
    "Llama Guard 4 is a Llama 4 without experts, which llama.cpp's Llama 4 loader rejects (\"model cannot have "
    'zero experts"); convert it to a Hugging Face folder instead'
)


def chat_template() -> str:
    """The offline Llama Guard 4 template (``templates/llama_guard_4.jinja``)."""
    text = resources.files(__package__).joinpath("templates", "llama_guard_4.jinja").read_text(encoding="utf-8")
    return text.rstrip("\n")
