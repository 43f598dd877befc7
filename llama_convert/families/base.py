"""What every model family provides: recognition, recipes, small files, and the routes it declares.

A family recognises its checkpoints from evidence (returns a ``ModelSpec`` with the reasons, or
declines with ``None``), says how each output tensor is made (``TensorRecipe`` values) and writes the
small files beside the weights. It declares what it can do on each route in ``capabilities``; the routes
read that declaration and never probe a family for members.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..dtypes import DType
from ..formats.meta.folder import MetaFolder
from ..formats.meta.torch_zip import TorchCheckpoint
from ..plan import TensorRecipe, TiedRows
from ..spec import Evidence, Hints, ModelSpec

__all__ = ["Capabilities", "Evidence", "Family", "Hints", "ModelSpec", "RouteKey"]

RouteKey = tuple[str, str]  # (source format, target format): ("meta", "hf"), ("hf", "gguf"), …


@dataclass(frozen=True)
class Capabilities:
    """What a family does on each route, declared rather than discovered.

    ``refused`` maps a route to the reason it is not done (completing "… because <reason>"); every other
    route of the table is supported, and the family then provides that route's members: ``gguf`` (its GGUF
    facts: names, metadata; a module or object) for the two GGUF routes, ``meta_layout_from_hf`` for
    Hugging Face → Meta and ``reshard_layout`` for Meta → Meta. ``hf_architectures`` are the
    ``config.json`` architectures of its Hugging Face folders; ``gguf_outtypes`` the GGUF types it writes;
    ``adapters`` whether LoRA adapters named by Hugging Face module paths merge into its tensors.
    """

    hf_architectures: tuple[str, ...]
    refused: Mapping[RouteKey, str] = field(default_factory=dict)
    gguf: Any = None
    gguf_outtypes: tuple[str, ...] = ()
    adapters: bool = False  # merges PEFT LoRA adapters (--adapter) on the routes it does

    def why_not(self, route: RouteKey) -> str | None:
        """``None`` when ``route`` is supported, else the reason it is not."""
        return self.refused.get(route)


class Family(Protocol):
    """One model family: Llama text, Llama 4, Llama 3.2 Vision…"""

    name: str
    title: str  # "Llama text (1, 2, Code Llama, 3.x, Guard 2/3)", for messages and the support matrix
    capabilities: Capabilities

    def recognise(self, folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> ModelSpec | None:
        """A spec if the checkpoint is this family's (raising a clear error if it is but is unusable), else None."""
        ...

    def recipes(self, spec: Any, dtype: DType) -> list[TensorRecipe]:
        """Every output tensor of the Hugging Face model."""
        ...

    def metadata_files(self, spec: Any, dtype: DType, *, tokenizer: bool = True) -> dict[str, bytes]:
        """config.json, generation_config.json and (with ``tokenizer``) the tokenizer and processor files."""
        ...

    def details(self, spec: Any) -> dict[str, Any]:
        """Family facts for ``inspect --json``."""
        ...

    def tied_rows(self, spec: Any) -> TiedRows | None:
        """The source tensor a tied model's Hugging Face folder leaves out, to be compared row by row with the
        one it writes (``None`` when nothing is tied)."""
        ...

    # Members of the routes a family declares supported (see ``Capabilities``):
    # meta_layout_from_hf(config, root, hf_names, *, mp, dtype, dst, tokenizer) -> plan.MetaLayout
    # reshard_layout(spec, mp) -> (recipes reading spec, plan.MetaLayout)
