"""Llama Guard 4 12B: Llama 4 Scout pruned to a dense model (no ``moe_args``: every layer a dense FFN), with
the Llama 4 vision encoder and tokenizer, converted to ``Llama4ForConditionalGeneration`` without experts.

Decisions:
* ``attention_chunk_size`` is written as params.json gives it. Guard 4's is null (no chunked attention):
  Meta's reference then attends over the whole sequence, and so does transformers with null (checked by the
  tests against Meta's reference on sequences longer than the fixture's chunk). Users who set 8192 to work
  around old transformers versions changed the model: for prompts over 8192 tokens attention is then chunked,
  which Meta's reference never does.
* The chat template renders exactly what the published ``meta-llama/Llama-Guard-4-12B`` processor template
  renders (its printed prompts, pinned in tests/data/guard4_published: user, user + agent, text + image),
  quirks included: each turn ends with the four characters ``\\n\\n`` before two newlines, "ONLY THE LAST
  <role> message", " - " bullets, a space before ``<|eot|>``, the assistant header always appended, and S14
  (Code Interpreter Abuse, text only) left out when the conversation holds an image. llama.com's documented
  Guard 4 format differs (real newlines, "- " bullets); the published template is what transformers users
  feed the model, so a converted folder must give the same ids. ``excluded_category_keys`` as the published
  template takes it; ``categories`` replaces the table (the Guard 3 templates' option, kept). Not attested by
  a source, so chosen: several images in one turn render as several ``<|image|>`` before the turn's text.
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
