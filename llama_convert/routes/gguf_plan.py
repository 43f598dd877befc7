"""The plan of a GGUF file, whichever the source (every tensor's entry, where its values come from, the type
mixture), and the resumable loop that writes it.

For llama-quantize's file types (Q4_K_M, Q6_K, …) the plan starts from the converter's bf16 tensors and
``apply_mixture`` gives each tensor llama-quantize's type (``formats/gguf/mixture.py``) and puts the tensors
in the order llama-quantize writes them; ``quantize_metadata`` moves the two keys llama-quantize sets to the
end of the metadata, where it writes them."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGUFWriter

from ..formats.gguf.encode import file_type, quantized_outtype, read_dtype, tensor_nbytes
from ..formats.gguf.mixture import ModelFacts, choose_types, quantize_order, type_table
from ..formats.gguf.writer import GGUFStreamWriter, TensorEntry
from ..plan import LoraDelta, TensorRecipe
from ..spec import ModelSpec

if TYPE_CHECKING:
    from .common import Stage

__all__ = [
    "METADATA_ALLOWANCE",
    "GGUFPlan",
    "GGUFTensor",
    "apply_mixture",
    "model_facts",
    "quantize_metadata",
    "write_planned_gguf",
]

METADATA_ALLOWANCE = 64 << 20  # header, vocabulary and merges, for the free-space check
CHECKPOINT_BYTES = 512 << 20  # at most this much tensor data is redone after a crash (smaller models: 1/16)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the GGUF file and where its values come from: recipes over Meta's shards (several for a
    stacked tensor such as an expert tensor, one per expert, written one after another), a Hugging Face
    tensor (``hf_name``: rows un-permuted over ``rotary_heads`` heads when set; ``hf_columns`` a range of its
    last axis and ``hf_transpose`` its last two axes swapped, per index of its first axis) or computed
    ``values``."""

    entry: TensorEntry
    recipes: tuple[TensorRecipe, ...] = ()
    values: np.ndarray | None = None
    hf_name: str | None = None
    rotary_heads: int | None = None
    hf_columns: tuple[int, int] | None = None
    hf_transpose: bool = False
    deltas: tuple[LoraDelta, ...] = ()  # LoRA deltas added to the Hugging Face rows (before un-permuting)

    def sources(self) -> list[str]:
        if self.recipes:
            return list(dict.fromkeys(p.source for r in self.recipes for p in r.parts))
        return [self.hf_name] if self.hf_name else []

    def steps(self) -> list[str]:
        if len(self.recipes) > 1:
            return [f"stack of {len(self.recipes)}: " + "; ".join(self.recipes[0].steps()) + "; …"]
        if self.recipes:
            return self.recipes[0].steps()
        if self.hf_name is not None:
            extra = " (halves → pairs)" if self.rotary_heads else ""
            if self.hf_columns:
                extra += f" columns {self.hf_columns[0]}:{self.hf_columns[1]}"
            deltas = [d.describe() for d in self.deltas]
            return [self.hf_name + extra + (" (last two axes swapped)" if self.hf_transpose else ""), *deltas]
        return ["computed"]


@dataclass(frozen=True)
class GGUFPlan:
    """Everything a GGUF conversion will write, decided before any byte is read. From a Hugging Face folder,
    ``source_root``, its ``config`` and the q/k ``head_dim`` say where the tensors are read."""

    spec: ModelSpec
    outtype: str
    arch: str
    tensors: tuple[GGUFTensor, ...]
    source_root: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    head_dim: int = 0
    extra_notes: tuple[str, ...] = ()
    # Files written beside this one (a vision projector's ``mmproj-<stem>.gguf``): each names its file by
    # ``prefix`` + the main file's name and writes its header with ``add_metadata(writer, files)``.
    companions: tuple[GGUFPlan, ...] = ()
    prefix: str = ""
    add_metadata: Callable[..., None] | None = field(default=None, compare=False)

    @property
    def file_size(self) -> int:
        """Tensor bytes of this file alone."""
        return sum(t.entry.nbytes for t in self.tensors)

    @property
    def total_size(self) -> int:
        return self.file_size + sum(c.total_size for c in self.companions)

    def paths(self, dst: Path) -> list[Path]:
        """The files this plan writes for destination ``dst``: ``dst`` and its companions beside it."""
        return [dst, *(dst.with_name(c.prefix + dst.name) for c in self.companions)]

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.entry.shape) for t in self.tensors)

    @property
    def notes(self) -> tuple[str, ...]:
        return (*self.spec.notes, *self.extra_notes)

    def type_counts(self) -> dict[str, int]:
        """How many tensors of each GGUF type the file holds (the type mixture)."""
        return dict(Counter(t.entry.qtype.name for t in self.tensors))

    def class_types(self) -> dict[str, dict[str, int]]:
        """Tensors per type per class (``attn_v``: Q6_K 12, Q4_K 20; …): llama-quantize's mixture."""
        return type_table({t.entry.name: t.entry.qtype for t in self.tensors})

    @property
    def headline(self) -> str:
        mixture = ", ".join(f"{n} {name}" for name, n in sorted(self.type_counts().items()))
        return (
            f"{self.spec.name} as GGUF {self.outtype} ({self.arch}), {len(self.tensors)} tensors ({mixture}), "
            f"{self.total_size / 1e9:.2f} GB"
            + "".join(f"; plus {c.prefix}* ({c.arch}, {len(c.tensors)} tensors)" for c in self.companions)
        )

    def lines(self) -> list[str]:
        """The plan as text for ``--dry-run``: every GGUF tensor with its type, shape and sources."""
        what = f"{self.prefix}* file" if self.prefix else "GGUF file"
        out = [f"{what} ({self.arch}, {self.file_size / 1e9:.2f} GB of tensor data)"]
        if quantized_outtype(self.outtype):
            out.append(f"  type mixture of {self.outtype.upper()} (tensors per type, by class):")
            out += [
                f"    {cls}: " + ", ".join(f"{n} {name}" for name, n in row.items())
                for cls, row in self.class_types().items()
            ]
        out += [
            f"  {t.entry.name} {list(t.entry.shape)} {t.entry.qtype.name} ← {'; '.join(t.steps())}"
            for t in self.tensors
        ]
        for companion in self.companions:
            out += companion.lines()
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "family": self.spec.family,
            "format": "gguf",
            "arch": self.arch,
            "outtype": self.outtype,
            "total_bytes": self.total_size,
            "types": self.type_counts(),
            "class_types": self.class_types(),
            "tensors": [
                {
                    "name": t.entry.name,
                    "shape": list(t.entry.shape),
                    "type": t.entry.qtype.name,
                    "bytes": t.entry.nbytes,
                    "sources": t.sources(),
                    "steps": t.steps(),
                }
                for t in self.tensors
            ],
            **(
                {"companions": [{"prefix": c.prefix, **c.to_json()} for c in self.companions]}
                if self.companions
                else {}
            ),
        }


def model_facts(config: dict[str, Any], arch: str) -> ModelFacts:
    """The facts llama-quantize's mixture reads (layers, heads, experts) from a config.json (a multimodal
    config's ``text_config``)."""
    text = config.get("text_config") or config
    heads = text["num_attention_heads"]
    return ModelFacts(
        n_layer=text["num_hidden_layers"],
        n_head=heads,
        n_head_kv=text.get("num_key_value_heads") or heads,
        n_expert=text.get("num_local_experts") or 0,
        arch=arch,
    )


def apply_mixture(tensors: list[GGUFTensor], outtype: str, facts: ModelFacts) -> list[GGUFTensor]:
    """``tensors`` (typed as the converter's bf16 file) with llama-quantize's type for ``outtype`` and in its
    order; unchanged for the converter's own types."""
    if not quantized_outtype(outtype):
        return tensors
    types = choose_types([(t.entry.name, t.entry.shape, t.entry.qtype) for t in tensors], outtype, facts)
    by_name = {t.entry.name: t for t in tensors}
    out = []
    for name in quantize_order(list(by_name)):
        t, qtype = by_name[name], types[name]
        entry = TensorEntry(name, t.entry.shape, qtype, tensor_nbytes(t.entry.shape, qtype))
        recipes = tuple(dataclasses.replace(r, dtype=read_dtype(qtype, r.source_dtype)) for r in t.recipes)
        out.append(dataclasses.replace(t, entry=entry, recipes=recipes))
    return out


def quantize_metadata(writer: GGUFWriter, outtype: str) -> None:
    """For a llama-quantize file type: ``general.quantization_version`` then ``general.file_type`` last, as
    llama-quantize sets them on a copy of its input's keys."""
    if not quantized_outtype(outtype):
        return
    kv = writer.kv_data[0]
    version = kv.pop("general.quantization_version", None)
    kv.pop("general.file_type", None)
    writer.add_quantization_version(version.value if version is not None else 2)
    writer.add_file_type(file_type(outtype))


def _resume_point(position: object, size: int, n_tensors: int) -> tuple[int, int, int] | None:
    """(tensors complete, file size, bytes of the next tensor written) from a checkpoint's position: [index,
    bytes into that tensor], or the tensors complete alone (an earlier version's)."""
    if isinstance(position, int) and not isinstance(position, bool):
        position = [position, 0]
    if not (isinstance(position, list) and len(position) == 2 and all(type(v) is int for v in position)):
        return None
    index, in_tensor = position
    return (index, size, in_tensor) if 0 <= index < n_tensors and in_tensor >= 0 else None


def write_planned_gguf(
    plan: GGUFPlan,
    stage: Stage,
    writer: GGUFWriter,
    write_tensor: Callable[[GGUFStreamWriter, GGUFTensor, Callable[[int], None]], None],
    path: Path | None = None,
) -> None:
    """Write ``plan``'s GGUF file at ``path`` (default ``stage.path``): the header from ``writer``, then each
    tensor through ``write_tensor``. Every ``CHECKPOINT_BYTES`` (between two pieces, also part way into a tensor)
    the file is fsync'd and the stage records how far it got, so a rerun after a crash continues from there (the
    header is compared byte for byte first); ``write_tensor`` then sees ``stream.skip`` bytes of the tensor
    to leave out (it may start later and tell ``stream.skipped``, or give them, to be dropped)."""
    path = path or stage.path
    name = path.name
    kept = stage.checkpoints.get(name)
    resume = _resume_point(kept.position, kept.sizes[name], len(plan.tensors)) if kept is not None else None
    stream = GGUFStreamWriter(path, writer, [t.entry for t in plan.tensors], resume=resume)
    start = stream.index
    stage.advance(sum(t.entry.nbytes for t in plan.tensors[:start]) + stream.in_tensor)
    every = min(CHECKPOINT_BYTES, max(1, plan.file_size // 16))
    since = 0

    def advance(n: int) -> None:
        """Progress; and every ``every`` bytes (between two pieces, part way into a tensor too) a checkpoint."""
        nonlocal since
        stage.advance(n)
        since += n
        if since >= every:
            stream.sync()
            stage.checkpoint(name, [name], [stream.index, stream.in_tensor])
            since = 0

    try:
        for tensor in plan.tensors[start:]:
            write_tensor(stream, tensor, advance)
            stream.end_tensor()
    except BaseException:
        stream.abort()
        raise
    stream.close()
