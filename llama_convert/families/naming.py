"""What names and a Hub snapshot's files say, shared by the families: base or instruct, and whether the
snapshot's config.json describes the same model as the checkpoint beside it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Evidence, Hints

__all__ = ["INSTRUCT_WORDS", "check_snapshot_config", "instruct_from_names"]

INSTRUCT_WORDS = re.compile(r"instruct|chat|(?<![a-z])it(?![a-z])", re.I)


def instruct_from_names(
    hints: Hints,
    *,
    release_name: re.Pattern[str],
    snapshot_instruct: bool | None,
    snapshot_reason: str = "the snapshot's eos",
    topic: str = "variant",
) -> tuple[bool, Evidence, list[str]]:
    """Base or instruct: the override, else an -Instruct/-chat name, else a release name without one, else the
    Hub snapshot's own files; with nothing to go on, base and a note naming ``--instruct``. A name that the
    snapshot's files contradict is refused."""
    if hints.instruct is not None:
        word = "--instruct" if hints.instruct else "--base"
        return hints.instruct, Evidence(topic, "instruct" if hints.instruct else "base", word), []
    said = next(((n, m.group(0)) for n in hints.variant_names if (m := INSTRUCT_WORDS.search(n))), None)
    named = next((n for n in hints.variant_names if release_name.search(n)), None)
    if said is not None:
        instruct, evidence = True, Evidence(topic, "instruct", f"the name {said[0]!r} contains {said[1]!r}")
    elif named is not None:
        instruct, evidence = False, Evidence(topic, "base", f"the name {named!r} has no -Instruct/-chat suffix")
    elif snapshot_instruct is not None:
        decided = "instruct" if snapshot_instruct else "base"
        return snapshot_instruct, Evidence(topic, decided, snapshot_reason), []
    else:
        note = (
            "nothing in the folder names tells base from instruct: converted as base; pass --instruct if it is "
            "an instruct model."
        )
        return False, Evidence(topic, "base", "no name says instruct (assumed)"), [note]
    if snapshot_instruct is not None and snapshot_instruct != instruct:
        raise InputError(
            f"the name says {'instruct' if instruct else 'base'} ({evidence.because}) but {snapshot_reason} says "
            f"{'instruct' if snapshot_instruct else 'base'}; pass --instruct or --base."
        )
    return instruct, evidence, []


def check_snapshot_config(root: Path, config: dict[str, Any] | None, ours: dict[str, Any]) -> None:
    """Refuse a Hub snapshot whose config.json gives another value for any of ``ours`` (keys it lacks are
    not compared; numbers compare by value)."""
    if not config:
        return
    for key, value in ours.items():
        if key not in config:
            continue
        other = config[key]
        same = other == value or (
            isinstance(other, (int, float)) and isinstance(value, (int, float)) and float(other) == float(value)
        )
        if not same:
            raise InputError(
                f"the snapshot's config.json says {key} {other} but {root} holds a checkpoint with {key} {value}; "
                "the Hugging Face files and original/ belong to different models — remove one, or pass "
                "--llama-version to decide."
            )
