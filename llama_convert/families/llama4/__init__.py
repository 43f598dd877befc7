"""The Llama 4 family: Scout (17B-16E) and Maverick (17B-128E), base and Instruct, text + vision."""

from __future__ import annotations

from typing import Any

from ...dtypes import DType
from ...errors import UnsupportedError
from ...formats.gguf.encode import OUTTYPES
from ...formats.meta.folder import MetaFolder
from ...formats.meta.torch_zip import TorchCheckpoint
from ...plan import TensorRecipe
from ...tokenizer import json_bytes
from ..base import Capabilities, Hints
from . import gguf_facts, guard4
from .detect import recognise
from .fp8 import dequantized
from .hf_config import (
    config_json,
    context_length,
    generation_config_json,
    preprocessor_config_json,
    processor_config_json,
)
from .layout import tensor_table
from .spec import Llama4Spec
from .tokenizer import llama4_tokenizer_files

__all__ = ["FAMILY", "Llama4Family", "Llama4Spec"]


class Llama4Family:
    """Llama 4 checkpoints → ``Llama4ForConditionalGeneration`` (``Llama4ForCausalLM`` without vision)."""

    name = "llama4"
    title = "Llama 4 (Scout, Maverick)"
    capabilities = Capabilities(
        hf_architectures=("Llama4ForConditionalGeneration",),
        gguf=gguf_facts,
        gguf_outtypes=tuple(OUTTYPES),
    )

    def recognise(self, folder: MetaFolder, checkpoints: list[TorchCheckpoint], hints: Hints) -> Llama4Spec | None:
        return recognise(folder, checkpoints, hints)

    def recipes(self, spec: Llama4Spec, dtype: DType) -> list[TensorRecipe]:
        table = tensor_table(spec.params, spec.mp, spec.vocab_size)
        out = [target.recipe(dtype, spec.source_dtype) for target in table]
        return out if spec.fp8 is None else dequantized(out, spec.fp8, spec.params, spec.mp)

    def metadata_files(self, spec: Llama4Spec, dtype: DType, *, tokenizer: bool = True) -> dict[str, bytes]:
        p = spec.params
        files = {
            "config.json": json_bytes(config_json(p, dtype, vocab=spec.vocab_size, instruct=spec.instruct)),
            "generation_config.json": json_bytes(generation_config_json()),
        }
        if tokenizer:
            assert spec.folder.tokenizer is not None
            template = guard4.chat_template() if p.moe is None else None
            files.update(
                llama4_tokenizer_files(
                    spec.folder.tokenizer,
                    instruct=spec.instruct,
                    context_length=context_length(p, spec.instruct),
                    vision=p.vision is not None,
                    template=template,
                )
            )
            if template is not None and p.vision is not None:  # the processor's own copy
                files["chat_template.jinja"] = template.encode()
            if p.vision is not None:
                files["preprocessor_config.json"] = json_bytes(preprocessor_config_json(p))
                files["processor_config.json"] = json_bytes(processor_config_json(p))
        return files

    def refused_for(self, spec: Llama4Spec) -> dict[tuple[str, str], str]:
        """Routes refused for this checkpoint beyond the family's declaration (Guard 4: no GGUF)."""
        if spec.params.moe is None:
            return {("meta", "gguf"): guard4.GGUF_REFUSAL}
        return {}

    def keep_fp8(self, spec: Llama4Spec) -> Llama4Spec:
        """Refused, by decision: the one published Llama 4 FP8 (``…-Maverick-17B-128E-Instruct-FP8``) is
        compressed-tensors over every MoE layer, not Meta's fbgemm layout, so no folder written from Meta's
        shards can be laid out as a published one; the dequantized conversion is exact instead."""
        raise UnsupportedError(
            f"{spec.folder.root}: --keep-fp8 is not offered for Llama 4 — the published Maverick FP8 is a "
            "different artifact (compressed-tensors, every MoE layer) that Meta's fbgemm shards cannot become; "
            "drop --keep-fp8 to convert the exactly dequantized bf16 model."
        )

    def tied_rows(self, spec: Llama4Spec) -> None:
        return None

    def meta_layout_from_hf(self, config: dict[str, Any], root: Any, hf_names: set[str], **options: Any) -> Any:
        """The way back: the Meta checkpoint an HF folder becomes (``plan.MetaLayout``)."""
        from .to_meta import layout_from_hf

        return layout_from_hf(config, root, hf_names, **options)

    def reshard_layout(self, spec: Llama4Spec, mp: int) -> Any:
        """The way back: recipes reading ``spec`` and the layout of the same model at ``mp`` shards."""
        from .to_meta import reshard_layout

        return reshard_layout(spec, mp)

    def details(self, spec: Llama4Spec) -> dict[str, Any]:
        p = spec.params
        return {
            "release": "Llama 4",
            "variant": spec.variant,
            "size": spec.size,
            "instruct": spec.instruct,
            "instruct_reason": spec.instruct_reason,
            "layers": p.n_layers,
            "dim": p.dim,
            "heads": p.n_heads,
            "kv_heads": p.n_kv_heads,
            "vocab_size": spec.vocab_size,
            "experts": p.moe.num_experts if p.moe else 0,
            "moe_layers": [i for i in range(p.n_layers) if p.is_moe_layer(i)],
            "moe_intermediate_size": p.moe_hidden_dim if p.moe else None,
            "dense_intermediate_size": p.dense_hidden_dim,
            "vision": p.vision is not None,
        }


FAMILY = Llama4Family()
