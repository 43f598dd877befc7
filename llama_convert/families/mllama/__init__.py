"""Llama 3.2 Vision (11B, 90B, Instruct) and Llama Guard 3 Vision → ``MllamaForConditionalGeneration``."""

from __future__ import annotations

from typing import Any

from ...dtypes import DType
from ...formats.meta.folder import MetaFolder
from ...formats.meta.torch_zip import TorchCheckpoint
from ...plan import TensorRecipe
from ...tokenizer import json_bytes
from ..base import Capabilities, Hints
from .detect import MllamaSpec, recognise
from .hf_config import config_json, generation_config_json, preprocessor_config_json
from .layout import recipes
from .tokenizer import tokenizer_files

__all__ = ["FAMILY", "MllamaFamily", "MllamaSpec"]


class MllamaFamily:
    """Llama 3.2 Vision checkpoints (``text_model.*`` + ``vision_model.*``) → ``MllamaForConditionalGeneration``."""

    name = "mllama"
    title = "Llama 3.2 Vision (11B, 90B, Guard 3 Vision)"
    capabilities = Capabilities(
        hf_architectures=("MllamaForConditionalGeneration",),
        refused={
            ("meta", "gguf"): "llama.cpp has no Llama 3.2 Vision (mllama) support, so there is no GGUF it could load",
            ("hf", "gguf"): "llama.cpp has no Llama 3.2 Vision (mllama) support, so there is no GGUF it could load",
        },
    )

    def recognise(self, folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> MllamaSpec | None:
        return recognise(folder, checkpoints, hints)

    def recipes(self, spec: MllamaSpec, dtype: DType) -> list[TensorRecipe]:
        return recipes(spec.params, dtype, spec.source_dtype)

    def metadata_files(self, spec: MllamaSpec, dtype: DType, *, tokenizer: bool = True) -> dict[str, bytes]:
        files = {
            "config.json": json_bytes(config_json(spec.params, dtype, instruct=spec.instruct)),
            "generation_config.json": json_bytes(generation_config_json(instruct=spec.instruct)),
            "preprocessor_config.json": json_bytes(preprocessor_config_json(spec.params)),
        }
        if tokenizer:
            assert spec.folder.tokenizer is not None
            files.update(tokenizer_files(spec.folder.tokenizer, spec.variant))
        return files

    def tied_rows(self, spec: MllamaSpec) -> None:
        return None

    def meta_layout_from_hf(self, config: dict[str, Any], root: Any, hf_names: set[str], **options: Any) -> Any:
        """The way back: the Meta checkpoint an HF folder becomes (``plan.MetaLayout``)."""
        from .to_meta import layout_from_hf

        return layout_from_hf(config, root, hf_names, **options)

    def reshard_layout(self, spec: MllamaSpec, mp: int) -> Any:
        """The way back: recipes reading ``spec`` and the layout of the same model at ``mp`` shards."""
        from .to_meta import reshard_layout

        return reshard_layout(spec, mp)

    def details(self, spec: MllamaSpec) -> dict[str, Any]:
        p = spec.params
        return {
            "release": "Llama 3.2 Vision",
            "size": spec.size,
            "variant": spec.variant,
            "instruct": spec.instruct,
            "layers": p.n_layers,
            "cross_attention_layers": list(p.cross_layers),
            "dim": p.dim,
            "heads": p.n_heads,
            "kv_heads": p.n_kv_heads,
            "vocab_size": p.vocab_size,
            "image_token_index": 128256,
            "intermediate_size": p.intermediate_size,
            "vision_width": p.vision_width,
            "vision_layers": p.vision_layers,
            "vision_global_layers": p.vision_global_layers,
            "tile_size": p.tile_size,
            "max_tiles": p.max_tiles,
        }


FAMILY = MllamaFamily()
