"""The support matrix: every family × route of the table, supported or refused and why."""

from __future__ import annotations

from typing import Any

from ..families import FAMILIES
from .table import ROUTES

__all__ = ["support_matrix"]


def support_matrix() -> list[dict[str, Any]]:
    """One row per family × (from, to): ``status`` "supported" or "refused", ``why`` (empty when supported),
    and for GGUF targets the output types."""
    rows = []
    for family in FAMILIES:
        caps = family.capabilities
        for key, route in ROUTES.items():
            why = caps.why_not(key)
            row: dict[str, Any] = {
                "family": family.name,
                "family_title": family.title,
                "from": key[0],
                "to": key[1],
                "route": route.title,
                "status": "supported" if why is None else "refused",
                "why": why or "",
            }
            if key[1] == "gguf":
                row["outtypes"] = list(caps.gguf_outtypes) if why is None else []
            rows.append(row)
    return rows
