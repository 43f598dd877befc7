"""Llama Guard releases by name: the one thing their tensors cannot tell."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GuardRelease", "guard_release"]


@dataclass(frozen=True)
class GuardRelease:
    """A Llama Guard release: its title, its prompt template, and where its config departs from its base."""

    title: str
    template: str  # template file stem under templates/
    rope_scaling_factor: float | None  # replaces the base release's factor when set (Guard 3 1B: 8, not 32)


_GUARDS: tuple[tuple[re.Pattern[str], GuardRelease], ...] = (
    (re.compile(r"guard[-_ ]?3", re.I), GuardRelease("Llama Guard 3", "guard3", 8.0)),
    (re.compile(r"guard[-_ ]?2", re.I), GuardRelease("Llama Guard 2", "guard2", None)),
)


def guard_release(names: tuple[str, ...]) -> GuardRelease | None:
    """The Guard release a folder or repository name says, if any."""
    for name in names:
        for pattern, release in _GUARDS:
            if pattern.search(name):
                return release
    return None
