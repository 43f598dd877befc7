"""The one table of routes: (source format, target format) → the route that plans and runs it.

``convert``, ``--dry-run``, ``inspect`` and the support matrix (``llama-convert formats``) all read it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UnsupportedError
from ..options import Format
from .common import Route
from .hf_gguf import ROUTE as HF_TO_GGUF
from .meta_gguf import ROUTE as META_TO_GGUF
from .meta_hf import ROUTE as META_TO_HF
from .to_meta import HF_ROUTE as HF_TO_META
from .to_meta import RESHARD_ROUTE as META_TO_META

__all__ = ["FORMATS", "ROUTES", "route_for", "source_format", "target_format"]

FORMATS: tuple[Format, ...] = ("meta", "hf", "gguf")
ROUTES: dict[tuple[str, str], Route] = {
    r.key: r for r in (META_TO_HF, META_TO_GGUF, META_TO_META, HF_TO_META, HF_TO_GGUF)
}


def source_format(src: Path) -> Format:
    """``hf`` for a Hugging Face model folder (config.json + weights, no Meta checkpoint), ``gguf`` for a
    .gguf file, else ``meta`` (whose reader then says precisely what is missing)."""
    if src.is_file() and src.suffix == ".gguf":
        return "gguf"
    hf_files = src.is_dir() and (src / "config.json").is_file() and not (src / "params.json").exists()
    if hf_files and not (src / "original").is_dir() and (any(src.glob("*.safetensors")) or any(src.glob("*.bin"))):
        return "hf"
    return "meta"


def target_format(source: Format, dst: Path, to: str | None) -> Format:
    """The target: ``to`` when given, GGUF for a ``.gguf`` destination, else the other format."""
    if to is not None:
        if to not in FORMATS:
            raise UnsupportedError(f"--to {to!r} is not a format; use {', '.join(FORMATS)}.")
        return to  # type: ignore[return-value]
    if dst.suffix == ".gguf":
        return "gguf"
    return "hf" if source == "meta" else "meta"


def route_for(src: Path, dst: Path, to: str | None) -> Route:
    """The route from ``src``'s format to the target, or one sentence saying there is none."""
    source = source_format(src)
    target = target_format(source, dst, to)
    route = ROUTES.get((source, target))
    if route is not None:
        return route
    if source == "gguf":
        raise UnsupportedError(f"{src} is a GGUF file; converting from GGUF is not supported.")
    raise UnsupportedError(f"{src} is already a Hugging Face model folder; nothing to convert.")
