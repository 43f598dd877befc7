"""Offline chat templates for instruct models, written from Meta's documented prompt formats.

Each template is a Jinja file shipped with the package, so converting an instruct model needs no
download of the gated Hugging Face repositories.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from ...errors import UnsupportedError

__all__ = ["chat_template"]

# version → (template file stem, lines put in front of it).
# Llama 3.1 and 3.3 publish the same template. Llama 3.2's differs in two places only: the date
# defaults to today when the renderer offers strftime_now (3.1/3.3 stay on "26 Jul 2024" even
# then) and builtin tools are not supported. The shared file keys both on one flag, so each
# release still renders exactly like its published template.
_TEMPLATES: Final[dict[str, tuple[str, str]]] = {
    "2": ("llama2", ""),
    "code": ("llama2", ""),
    "3": ("llama3", ""),
    "3.1": ("llama3_1", ""),
    "3.2": ("llama3_1", "{%- set llama_3_2_format = true %}\n"),
    "3.3": ("llama3_1", ""),
}
# Llama 1 had no chat models.
_NO_TEMPLATE: Final = frozenset({"1"})


def chat_template(version: str, instruct: bool) -> str | None:
    """The chat template for an instruct (or chat) model of ``version``; None for base models."""
    if version in _NO_TEMPLATE:
        return None
    try:
        stem, preamble = _TEMPLATES[version]
    except KeyError:
        known = ", ".join(sorted([*_TEMPLATES, *_NO_TEMPLATE]))
        raise UnsupportedError(
            f"no chat template is known for Llama version {version!r}; use one of {known}."
        ) from None
    if not instruct:
        return None
    return preamble + _read_template(stem)


def _read_template(stem: str) -> str:
    text = resources.files(__package__).joinpath("templates", f"{stem}.jinja").read_text(encoding="utf-8")
    # No trailing newline: renderers without trim_blocks would print it.
    return text.rstrip("\n")
