"""``inspect``: say what a folder holds and what converting it would write, without writing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .families import FAMILIES, family_of
from .formats.hf.checks import check_config
from .formats.storage import resolve_source
from .plan import ConversionPlan
from .routes import ROUTES, plan_conversion, source_format

__all__ = ["FolderReport", "inspect"]

_ASSUMED_THROUGHPUT = 500e6  # bytes/s read+write on an ordinary SSD, for the time estimate


@dataclass(frozen=True)
class FolderReport:
    """What ``inspect`` found. ``kind`` is "meta" (convertible), "huggingface" or "gguf"."""

    path: Path
    kind: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    plan: ConversionPlan | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "summary": self.summary, **self.details}


def _huggingface_report(path: Path) -> FolderReport:
    try:
        config = check_config(json.loads((path / "config.json").read_text()), path / "config.json")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path / 'config.json'} is unreadable ({exc}).") from None
    arch = ", ".join(config.get("architectures") or [config.get("model_type", "unknown")])
    weights = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    size = sum((path / w).stat().st_size for w in weights)
    summary = (
        f"a Hugging Face model folder ({arch}, {config.get('num_hidden_layers', '?')} layers, "
        f"hidden size {config.get('hidden_size', '?')}, {len(weights)} weight files, {size / 1e9:.2f} GB); "
        + _hf_targets(config, path)
    )
    return FolderReport(path, "huggingface", summary, {"config": config, "weight_files": weights, "bytes": size})


def _hf_targets(config: dict[str, Any], path: Path) -> str:
    """What the route table says this folder can become."""
    ways = {
        "meta": "convert it to Meta's format (`llama-convert convert SRC DST [--mp N]`)",
        "gguf": "to GGUF (DST ending in .gguf)",
    }
    archs = config.get("architectures") or []
    family = next((f for f in FAMILIES if archs and archs[0] in f.capabilities.hf_architectures), None)
    if family is None:
        return "no route of this version converts it."
    open_ = [ways[to] for source, to in ROUTES if source == "hf" and family.capabilities.why_not((source, to)) is None]
    if not open_:
        return f"{family.title} folders do not convert further in this version (see `llama-convert formats`)."
    return " or ".join(open_) + "."


def inspect(src: str | os.PathLike[str], **options: Any) -> FolderReport:
    """Describe ``src``: a Meta checkpoint (detected spec, plan, estimates), a Hugging Face folder or a GGUF file.

    ``options`` are those of ``plan_conversion`` (dtype, max_shard_size, llama_version, instruct).
    """

    path = resolve_source(src)  # a local path, a Hub repository id or a remote URL
    if source_format(path) == "gguf":
        from .formats.gguf.reader import describe_gguf

        gguf = describe_gguf(path)
        details = {k: v for k, v in gguf.to_json().items() if k not in ("path", "kind", "summary")}
        return FolderReport(path, "gguf", gguf.summary, details)
    if source_format(path) == "hf":
        return _huggingface_report(path)
    plan = plan_conversion(path, **options)
    spec = plan.spec
    family = family_of(spec)
    source_bytes = sum(s.stat().st_size for s in spec.shards)
    metadata = family.metadata_files(spec, plan.dtype, tokenizer=True)
    files = [f.name for f in plan.files]
    if len(files) > 1:
        files.append("model.safetensors.index.json")
    files += list(metadata)
    details = {
        "family": spec.family,
        "name": spec.name,
        **family.details(spec),
        "parameters": spec.parameter_count,
        "model_parallel": spec.mp,
        "source_dtype": spec.source_dtype.torch_name,
        "output_dtype": plan.dtype.torch_name,
        "summary": spec.summary,
        "evidence": [{"topic": e.topic, "decision": e.decision, "because": e.because} for e in spec.evidence],
        "source_bytes": source_bytes,
        "output_bytes": plan.total_size,
        "files": files,
        "estimated_seconds": round((source_bytes + plan.total_size) / _ASSUMED_THROUGHPUT, 1),
        "disk_needed_bytes": plan.total_size + (32 << 20),
        "notes": list(spec.notes),
        "config": json.loads(metadata["config.json"]),
    }
    return FolderReport(path, "meta", f"{spec.name} (Meta format, MP{spec.mp})", details, plan)
