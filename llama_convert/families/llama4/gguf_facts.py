"""What the GGUF routes ask the Llama 4 family (``Capabilities.gguf``): the text file's tensors and metadata
(``gguf.py``) and the vision projector's companion file (``mmproj.py``), from a Meta checkpoint or from a
Hugging Face folder.

From a Hugging Face folder each tensor maps to GGUF entries as llama.cpp's ``Llama4Model.modify_tensors``
makes them: ``experts.gate_up_proj [E, D, 2F]`` splits into ``ffn_gate_exps``/``ffn_up_exps`` (columns
``:F`` / ``F:``, the last two axes swapped per expert), ``experts.down_proj [E, F, D]`` becomes
``ffn_down_exps [E, D, F]``; everything else is renamed only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from gguf import GGUFWriter

from ...dtypes import DType
from ...errors import InputError
from ...formats.meta.folder import MetaFolder
from ...plan import StackedRecipe, TensorRecipe
from ..base import ModelSpec
from . import gguf as text
from . import mmproj
from .gguf import ARCH, EXPERTS, ROPE_FREQS, gguf_name, parameter_counts, rope_freqs, text_config
from .spec import Llama4Spec

__all__ = [
    "ARCH",
    "ROPE_FREQS",
    "HFEntry",
    "add_companion_hf_metadata",
    "add_companion_metadata",
    "add_hf_metadata",
    "add_spec_metadata",
    "companion",
    "gguf_recipes",
    "hf_companion_entries",
    "hf_entries",
    "hf_head_dim",
    "rope_freqs",
    "spec_from_hf",
]

HF_METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
)
COMPANION_ARCH, COMPANION_PREFIX = mmproj.ARCH, mmproj.PREFIX


class HFEntry(NamedTuple):
    """One GGUF tensor made from an HF tensor: its name and (numpy-order) shape, heads whose rotary rows are
    un-permuted (None), a column range of the HF tensor's last axis, whether its last two axes are swapped."""

    name: str
    shape: tuple[int, ...]
    rotary_heads: int | None = None
    columns: tuple[int, int] | None = None
    transpose: bool = False


def gguf_recipes(spec: Llama4Spec) -> list[TensorRecipe | StackedRecipe]:
    return text.gguf_recipes(spec)


def companion(spec: Llama4Spec) -> list[TensorRecipe] | None:
    """The vision projector's tensors (the ``mmproj-`` file), None for a text-only model."""
    return mmproj.gguf_recipes(spec) if spec.params.vision is not None else None


def _name(spec: Llama4Spec) -> str:
    return spec.name.removesuffix(" base").replace(" ", "-")


def add_spec_metadata(
    writer: GGUFWriter, spec: Llama4Spec, files: dict[str, bytes], *, file_type: int, entries: Any, **_: Any
) -> None:
    """The text file's metadata for a Meta checkpoint: the family's own files, named after the model."""
    counts = parameter_counts(entries)
    text.add_metadata(writer, files, name=_name(spec), file_type=file_type, counts=counts, where=str(spec.folder.root))


def add_companion_metadata(
    writer: GGUFWriter, spec: Llama4Spec, files: dict[str, bytes], *, file_type: int, entries: Any
) -> None:
    counts = parameter_counts(entries)
    mmproj.add_metadata(
        writer, files, name=_name(spec), file_type=file_type, counts=counts, where=str(spec.folder.root)
    )


# --- from a Hugging Face folder -----------------------------------------------------------------------


def hf_head_dim(config: dict[str, Any]) -> int:
    return 0  # Llama 4's rotary rows are never reordered


def hf_entries(name: str, shape: tuple[int, ...], config: dict[str, Any]) -> list[HFEntry]:
    """The text file's entries made from HF tensor ``name`` (none for a vision tensor); KeyError if foreign."""
    if name.startswith(text.VISION_PREFIXES):
        return []
    stem = name.removeprefix("language_model.")
    suffix = stem.split(".", 3)[-1] if stem.startswith("model.layers.") else ""
    if suffix in EXPERTS:
        blk = "blk." + stem.split(".")[2] + "."
        e, a, b = shape
        if suffix.endswith("down_proj"):
            return [HFEntry(blk + EXPERTS[suffix][0], (e, b, a), transpose=True)]
        f = b // 2
        gate, up = EXPERTS[suffix]
        return [
            HFEntry(blk + gate, (e, f, a), columns=(0, f), transpose=True),
            HFEntry(blk + up, (e, f, a), columns=(f, b), transpose=True),
        ]
    return [HFEntry(gguf_name(name), shape)]


def hf_companion_entries(name: str, shape: tuple[int, ...], config: dict[str, Any]) -> list[HFEntry]:
    """The mmproj file's entries made from HF tensor ``name`` (none for a text tensor)."""
    if "vision_config" not in config:
        return []
    mapped = mmproj.gguf_name(name)
    return [] if mapped is None else [HFEntry(mapped, shape)]


def _hf_files(root: Path) -> dict[str, bytes]:
    files = {n: (root / n).read_bytes() for n in HF_METADATA_FILES if (root / n).is_file()}
    if "tokenizer.json" not in files:
        raise InputError(f"{root} has no tokenizer.json; add the model's tokenizer files.")
    return files


def add_hf_metadata(writer: GGUFWriter, root: Path, *, file_type: int, entries: Any, **_: Any) -> None:
    """The text file's metadata from a Hugging Face folder's own files, named after the folder."""
    counts = parameter_counts(entries)
    name = root.resolve().name
    text.add_metadata(writer, _hf_files(root), name=name, file_type=file_type, counts=counts, where=str(root))


def add_companion_hf_metadata(writer: GGUFWriter, root: Path, *, file_type: int, entries: Any) -> None:
    counts = parameter_counts(entries)
    name = root.resolve().name
    mmproj.add_metadata(writer, _hf_files(root), name=name, file_type=file_type, counts=counts, where=str(root))


def spec_from_hf(config: dict[str, Any], root: Path, dtype: DType) -> tuple[ModelSpec, tuple[str, ...]]:
    """A spec for the result: the Llama 4 model the folder's config describes (refused if it has no experts)."""
    h = text_config(config)
    text.refuse_dense(h.get("num_local_experts", 0), bool(h.get("moe_layers", [0])), str(root / "config.json"))
    variant = "Scout" if h.get("interleave_moe_layer_step", 1) == 1 else "Maverick"
    folder = MetaFolder(root, root / "params.json", {}, None, (), None)  # type: ignore[arg-type]
    spec = ModelSpec(
        family="llama4",
        name=f"Llama 4 {variant}-like ({root.name})",
        folder=folder,
        mp=1,
        source_dtype=dtype,
        instruct=False,
        evidence=(),
        summary=f"{h['num_hidden_layers']} layers, dim {h['hidden_size']}, {h.get('num_local_experts')} experts",
        parameter_count=0,
        notes=(),
    )
    return spec, ()
