"""The Llama text family: Llama 1, 2, Code Llama, 3, 3.1, 3.2 (1B/3B), 3.3 and Llama Guard 2/3 (text)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...dtypes import DType
from ...errors import UnsupportedError
from ...formats.gguf.encode import OUTTYPES
from ...formats.meta.folder import MetaFolder
from ...formats.meta.torch_zip import TorchCheckpoint
from ...plan import TensorRecipe, TiedRows
from ...tokenizer import json_bytes
from ..base import Capabilities, Hints
from . import gguf
from .detect import recognise
from .guard import guard_chat_template
from .hf_config import config_json, generation_config_json
from .keep_fp8 import quantization_config
from .layout import recipes
from .spec import LlamaSpec
from .tokenizer import tokenizer_files

__all__ = ["FAMILY", "LlamaFamily", "LlamaSpec"]


class LlamaFamily:
    """Llama text checkpoints → ``LlamaForCausalLM``. Registered last: it claims every ``wq`` checkpoint."""

    name = "llama"
    title = "Llama text (1, 2, Code Llama, 3.x, Guard 2/3)"
    capabilities = Capabilities(
        hf_architectures=("LlamaForCausalLM",), gguf=gguf, gguf_outtypes=tuple(OUTTYPES), adapters=True
    )

    def recognise(self, folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> LlamaSpec | None:
        return recognise(folder, checkpoints, hints)

    def recipes(self, spec: LlamaSpec, dtype: DType) -> list[TensorRecipe]:
        return recipes(spec, dtype)

    def metadata_files(self, spec: LlamaSpec, dtype: DType, *, tokenizer: bool = True) -> dict[str, bytes]:
        config = config_json(spec, dtype)
        if spec.fp8 is not None and spec.fp8.keep:
            config["quantization_config"] = quantization_config(spec.params.n_layers, spec.fp8)
        files = {
            "config.json": json_bytes(config),
            "generation_config.json": json_bytes(generation_config_json(spec)),
        }
        if tokenizer:
            files.update(self.tokenizer_files(spec))
        return files

    def tokenizer_files(self, spec: LlamaSpec) -> dict[str, bytes]:
        assert spec.folder.tokenizer is not None
        guard = spec.guard
        if guard is None:
            return tokenizer_files(
                spec.folder.tokenizer,
                version=spec.release.version,
                instruct=spec.instruct,
                context_length=spec.release.context_length,
            )
        return tokenizer_files(
            spec.folder.tokenizer,
            version=guard.shaped_like,
            instruct=guard.tokenizer_eos == "<|eot_id|>",  # selects the tokenizer's eos; the template is Guard's
            context_length=guard.context_length,
            template=guard_chat_template(guard.kind),
        )

    def keep_fp8(self, spec: LlamaSpec) -> LlamaSpec:
        """``--keep-fp8``: the same spec, planned as an ``fbgemm_fp8`` folder (FP8 sources only)."""
        if spec.fp8 is None:
            raise UnsupportedError(
                f"{spec.folder.root} stores no float8 weights; --keep-fp8 applies to Meta's FP8 releases only."
            )
        return dataclasses.replace(spec, fp8=dataclasses.replace(spec.fp8, keep=True))

    def tied_rows(self, spec: LlamaSpec) -> TiedRows | None:
        """Tying was decided on sampled rows of output.weight and the embedding: after the stream, all rows."""
        if not spec.tie_embeddings:
            return None
        mismatch = (
            f"{spec.folder.root}: output.weight equals tok_embeddings.weight in sampled rows but not in all, so "
            "it cannot be tied; convert again with --llama-version 3.1 to keep it as its own lm_head."
        )
        return TiedRows(kept="model.embed_tokens.weight", dropped="output.weight", mismatch=mismatch)

    def meta_layout_from_hf(self, config: dict[str, Any], root: Any, hf_names: set[str], **options: Any) -> Any:
        """The way back: the Meta checkpoint an HF folder becomes (``plan.MetaLayout``)."""
        from .to_meta import layout_from_hf

        return layout_from_hf(config, root, hf_names, **options)

    def reshard_layout(self, spec: LlamaSpec, mp: int) -> Any:
        """The way back: recipes reading ``spec`` and the layout of the same model at ``mp`` shards."""
        from .to_meta import reshard_layout

        return reshard_layout(spec, mp)

    def details(self, spec: LlamaSpec) -> dict[str, Any]:
        p = spec.params
        return {
            "release": spec.release.title,
            "version": spec.release.version,
            "version_reason": spec.version_reason,
            "size": spec.size,
            "instruct": spec.instruct,
            "instruct_reason": spec.instruct_reason,
            "guard": spec.guard.title if spec.guard else None,
            "layers": p.n_layers,
            "dim": p.dim,
            "heads": p.n_heads,
            "kv_heads": spec.n_kv_heads,
            "vocab_size": spec.vocab_size,
            "intermediate_size": p.intermediate_size,
            "rope_scaling_factor": spec.rope_scaling_factor,
            "tie_embeddings": spec.tie_embeddings,
        }


FAMILY = LlamaFamily()
