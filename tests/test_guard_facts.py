"""Llama Guard facts in guard.py against Meta's own tables (llama_models sku_list) and the published values."""

from __future__ import annotations

import math

import pytest
from llama_models.sku_list import all_registered_models
from llama_models.sku_types import CheckpointQuantizationFormat

from llama_convert.errors import UnsupportedError
from llama_convert.families.llama.guard import GUARDS, guard_facts

# Meta's model ids: each Guard release and the Llama release it is built on (its model card says which).
META_ID = {"guard2-8b": "Llama-Guard-2-8B", "guard3-8b": "Llama-Guard-3-8B", "guard3-1b": "Llama-Guard-3-1B"}
BASE_ID = {"guard2-8b": "Llama-3-8B", "guard3-8b": "Llama3.1-8B", "guard3-1b": "Llama3.2-1B"}
ARCH_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "norm_eps", "rope_theta")


def meta_model(model_id: str):
    (model,) = [
        m
        for m in all_registered_models()
        if m.core_model_id.value == model_id and m.quantization_format == CheckpointQuantizationFormat.bf16
    ]
    return model


def ffn_width(args: dict) -> int:
    """FFN hidden width as Meta's reference FeedForward computes it from params.json."""
    hidden = int(2 * (4 * args["dim"]) / 3)
    hidden = int(args.get("ffn_dim_multiplier", 1.0) * hidden)
    return args["multiple_of"] * math.ceil(hidden / args["multiple_of"])


@pytest.mark.parametrize("kind", list(GUARDS))
def test_architecture_is_metas(kind):
    meta = meta_model(META_ID[kind]).arch_args
    ours = GUARDS[kind].params
    assert {k: ours[k] for k in ARCH_KEYS} == {k: meta[k] for k in ARCH_KEYS}
    assert ours["ffn_dim_multiplier"] == meta["ffn_dim_multiplier"]
    assert ours["multiple_of"] == meta["multiple_of"]
    assert ffn_width(ours) == ffn_width(meta)


@pytest.mark.parametrize("kind", list(GUARDS))
def test_shaped_like_its_base_release(kind):
    """Same widths, depth, heads and vocabulary as the Llama release it is built on (what detection sees)."""
    base = meta_model(BASE_ID[kind]).arch_args
    ours = GUARDS[kind].params
    assert {k: ours[k] for k in ARCH_KEYS} == {k: base[k] for k in ARCH_KEYS}
    assert ffn_width(ours) == ffn_width(base)
    assert ours["vocab_size"] == base["vocab_size"] == 128256
    assert GUARDS[kind].shaped_like == {"guard2-8b": "3", "guard3-8b": "3.1", "guard3-1b": "3.2"}[kind]


def test_guard3_vocabulary_and_context_are_metas():
    for kind in ("guard3-8b", "guard3-1b"):
        meta = meta_model(META_ID[kind])
        assert GUARDS[kind].params["vocab_size"] == meta.arch_args["vocab_size"]
        assert GUARDS[kind].context_length == meta.max_seq_length == 131072


def test_guard2_departs_from_llama_models_where_it_contradicts_the_tokenizer():
    """llama_models lists Guard 2 with Llama 2's vocabulary and a 4096 context; Guard 2 ships the Llama 3
    tokenizer (128,256 ids) on a Llama 3 8B, so guard.py keeps Llama 3 8B's vocabulary and context."""
    meta = meta_model(META_ID["guard2-8b"])
    assert (meta.arch_args["vocab_size"], meta.max_seq_length) == (32000, 4096)
    base = meta_model(BASE_ID["guard2-8b"])
    assert GUARDS["guard2-8b"].params["vocab_size"] == base.arch_args["vocab_size"]
    assert GUARDS["guard2-8b"].context_length == base.max_seq_length == 8192


def test_guard3_1b_config_departs_from_llama32_1b():
    """Published Llama-Guard-3-1B config: untied, rope factor 8 (Llama 3.2 1B: tied, 32), 131072 positions."""
    facts = GUARDS["guard3-1b"]
    assert facts.config_overrides["tie_word_embeddings"] is False
    assert dict(facts.config_overrides["rope_scaling"]) == {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }
    assert facts.generation_eos == (128001, 128008, 128009)
    assert facts.context_length == 131072
    assert facts.tokenizer_eos == "<|eot_id|>"


def test_guard3_8b_config_is_llama31s_whatever_the_params_say():
    facts = GUARDS["guard3-8b"]
    assert facts.config_overrides["max_position_embeddings"] == 131072
    assert facts.config_overrides["rope_scaling"]["factor"] == 8.0
    assert facts.config_overrides["rope_scaling"]["rope_type"] == "llama3"
    assert "tie_word_embeddings" not in facts.config_overrides
    # Meta's table lists Guard 3 8B without use_scaled_rope, unlike Llama 3.1 8B: the reason for the override.
    assert meta_model(META_ID["guard3-8b"]).arch_args["use_scaled_rope"] is False
    assert meta_model(BASE_ID["guard3-8b"]).arch_args["use_scaled_rope"] is True


def test_guard2_tokenizer_ends_like_llama3_base():
    facts = GUARDS["guard2-8b"]
    assert (facts.tokenizer_eos, facts.generation_eos, dict(facts.config_overrides)) == (
        "<|end_of_text|>",
        (128001,),
        {},
    )


def test_hazard_category_lists():
    names = {kind: [name for _, name in facts.categories] for kind, facts in GUARDS.items()}
    assert [code for code, _ in GUARDS["guard3-8b"].categories] == [f"S{i}" for i in range(1, 15)]
    assert names["guard3-8b"][4] == "Defamation." and names["guard3-8b"][-1] == "Code Interpreter Abuse."
    assert names["guard3-1b"] == names["guard3-8b"][:13]  # the 1B card: the 13 MLCommons hazards, no S14
    assert [code for code, _ in GUARDS["guard2-8b"].categories] == [f"S{i}" for i in range(1, 12)]
    assert "Defamation." not in names["guard2-8b"] and "Elections." not in names["guard2-8b"]
    assert names["guard2-8b"][4] == "Specialized Advice." and names["guard2-8b"][-1] == "Sexual Content."


SMALL = {"dim": 256, "n_layers": 2}  # a shrunk test checkpoint: only its name can say which Guard it is


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        (("Llama-Guard-3-1B",), "guard3-1b"),
        (("original", "Llama-Guard-3-1B"), "guard3-1b"),  # Hub snapshot: the repository's name
        (("models--meta-llama--Llama-Guard-3-8B",), "guard3-8b"),
        (("Meta-Llama-Guard-3-8B",), "guard3-8b"),  # PurpleLlama's download.sh folder
        (("Meta-Llama-Guard-2-8B",), "guard2-8b"),
        (("llama-guard-2",), "guard2-8b"),
        (("llama_guard_3_1b",), "guard3-1b"),
    ],
)
def test_guard_facts_by_name(names, kind):
    assert guard_facts(names, **SMALL).kind == kind


@pytest.mark.parametrize("kind", ["guard3-1b", "guard3-8b"])
def test_guard_facts_sizeless_name_at_published_width(kind):
    p = GUARDS[kind].params
    assert guard_facts(("Llama Guard 3",), dim=p["dim"], n_layers=p["n_layers"]).kind == kind


@pytest.mark.parametrize("names", [("Llama-3.1-8B-Instruct",), ("original",), ("Llama3.2-1B",), ()])
def test_guard_facts_none_without_a_guard_name(names):
    assert guard_facts(names, **SMALL) is None


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (("Llama-Guard-3",), "Llama Guard 3,"),  # no size, unpublished width
        (("Llama-Guard-3-11B-Vision",), "Llama Guard 3 11B,"),
        (("Llama-Guard-4-12B",), "Llama Guard 4 12B,"),
    ],
)
def test_guard_facts_refuses_what_it_cannot_tell(names, said):
    with pytest.raises(UnsupportedError, match=f"names {said} which is not a Llama Guard text checkpoint"):
        guard_facts(names, **SMALL)
