"""Llama Guard 2 and 3 (text): what each release is shaped like, where its published configuration departs
from that shape, its hazard categories and its prompt template.

Only names tell a Guard checkpoint from the Llama it was fine-tuned from; :func:`guard_facts` reads them
(and the published width when a name gives no size) and returns the release's facts.

Sources, with the confidence labels of the project's reference notes ([S] in Meta's source code,
[C] several verbatim public copies agree, [U] not confirmed from a published file):

- Architecture and context length: ``llama_models.sku_list.safety_models()`` and
  ``sku_types.Model.max_seq_length`` [S]. Its Guard 2 entry says ``vocab_size`` 32000, which cannot be:
  Guard 2 ships the Llama 3 tokenizer (128,256 ids); its ``max_seq_length`` of 4096 is not the 8192 of the
  Llama 3 8B it is built on either, so the context length below keeps Llama 3's 8192 [U].
- Templates: the ``chat_template`` of the published ``tokenizer_config.json`` of meta-llama/Meta-Llama-Guard-2-8B,
  Llama-Guard-3-8B and Llama-Guard-3-1B, each taken verbatim from copies that agree [C]. The Guard 2 text is
  also exactly what Meta's ``llama-recipes`` ``build_default_prompt(..., LLAMA_GUARD_2)`` builds [S].
  Meta's Guard 3 prompt code (``PROMPT_TEMPLATE_3``) and the published Guard 3 templates differ in whitespace
  (a space after the header, category names, "<|eot_id|>"); the published templates are what the models
  are served with, so those are shipped.
- Guard 3 1B: untied output layer, rope factor 8 (not Llama 3.2's 32), 131072 positions, generation eos
  ``[128001, 128008, 128009]``, bfloat16 [C]. Guard 3 1B's card lists S1–S13 (no Code Interpreter Abuse),
  and its template carries only those [C]. Guard 3 8B's card and template carry S1–S14 [C].
- Guard 2's card and template: S1–S11 with Llama Guard 2's own names [C]. Tokenizer eos ``<|end_of_text|>``
  (one verbatim copy of its tokenizer_config.json; Llama 3 8B base's too).
- Guard 3 tokenizer eos ``<|eot_id|>`` and the generation configs not named above follow the release the
  model is shaped like [U].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Final, Literal

from ...errors import UnsupportedError

__all__ = ["GUARDS", "GuardFacts", "GuardKind", "guard_chat_template", "guard_facts"]

GuardKind = Literal["guard2-8b", "guard3-8b", "guard3-1b"]

_LLAMA3_ROPE_SCALING_FACTOR_8: Final = MappingProxyType(
    {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }
)

# Hazard categories as the templates print them ("S1: Violent Crimes."). The model cards' tables use longer
# titles for some (e.g. "Sex-Related Crimes"); the models are prompted with these.
_GUARD3_CATEGORIES: Final = (
    ("S1", "Violent Crimes."),
    ("S2", "Non-Violent Crimes."),
    ("S3", "Sex Crimes."),
    ("S4", "Child Exploitation."),
    ("S5", "Defamation."),
    ("S6", "Specialized Advice."),
    ("S7", "Privacy."),
    ("S8", "Intellectual Property."),
    ("S9", "Indiscriminate Weapons."),
    ("S10", "Hate."),
    ("S11", "Self-Harm."),
    ("S12", "Sexual Content."),
    ("S13", "Elections."),
    ("S14", "Code Interpreter Abuse."),
)
# Guard 2's names end in ". " in its template (Meta's code joins "Violent Crimes. " and a newline).
_GUARD2_CATEGORIES: Final = (
    ("S1", "Violent Crimes."),
    ("S2", "Non-Violent Crimes."),
    ("S3", "Sex Crimes."),
    ("S4", "Child Exploitation."),
    ("S5", "Specialized Advice."),
    ("S6", "Privacy."),
    ("S7", "Intellectual Property."),
    ("S8", "Indiscriminate Weapons."),
    ("S9", "Hate."),
    ("S10", "Self-Harm."),
    ("S11", "Sexual Content."),
)


def _params(*, dim: int, n_layers: int, ffn_dim_multiplier: float, multiple_of: int) -> MappingProxyType:
    """params.json architecture values; every Guard release has 32 heads, 8 KV heads and Llama 3's vocabulary."""
    return MappingProxyType(
        {
            "dim": dim,
            "n_layers": n_layers,
            "n_heads": 32,
            "n_kv_heads": 8,
            "vocab_size": 128256,
            "ffn_dim_multiplier": ffn_dim_multiplier,
            "multiple_of": multiple_of,
            "norm_eps": 1e-05,
            "rope_theta": 500000.0,
        }
    )


@dataclass(frozen=True)
class GuardFacts:
    """One Llama Guard release: names, shape, published departures from that shape, prompt."""

    kind: GuardKind
    title: str  # "Llama Guard 3 1B"
    names: tuple[str, ...]  # Meta download folder and Hub repository names
    shaped_like: str  # the Llama release (version string) it was fine-tuned from: tokenizer names, base config
    params: MappingProxyType  # params.json architecture values per Meta's llama_models
    context_length: int  # max_position_embeddings / model_max_length
    categories: tuple[tuple[str, str], ...]
    template: str  # file stem under templates/
    tokenizer_eos: str
    generation_eos: tuple[int, ...]
    # config.json values that differ from those of the release it is shaped like.
    config_overrides: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


GUARDS: Final[MappingProxyType] = MappingProxyType(
    {
        "guard2-8b": GuardFacts(
            kind="guard2-8b",
            title="Llama Guard 2 8B",
            # Meta's Guard 2 download.sh fetches "llama-guard-2/*" into the current folder, so a Meta download
            # may carry no Guard name at all; the Hub repository is Meta-Llama-Guard-2-8B.
            names=("Meta-Llama-Guard-2-8B", "llama-guard-2", "Llama-Guard-2-8B"),
            shaped_like="3",
            params=_params(dim=4096, n_layers=32, ffn_dim_multiplier=1.3, multiple_of=256),
            context_length=8192,
            categories=_GUARD2_CATEGORIES,
            template="guard2",
            tokenizer_eos="<|end_of_text|>",
            generation_eos=(128001,),
        ),
        "guard3-8b": GuardFacts(
            kind="guard3-8b",
            title="Llama Guard 3 8B",
            names=("Llama-Guard-3-8B", "Meta-Llama-Guard-3-8B"),  # the second: PurpleLlama's download.sh
            shaped_like="3.1",
            params=_params(dim=4096, n_layers=32, ffn_dim_multiplier=1.3, multiple_of=1024),
            context_length=131072,
            categories=_GUARD3_CATEGORIES,
            template="guard3",
            tokenizer_eos="<|eot_id|>",
            generation_eos=(128001, 128008, 128009),
            # The published config follows Llama 3.1 8B [U]. Meta's llama_models lists Guard 3 8B with
            # ``use_scaled_rope: False``, so its params.json may lack the flag and the tensors then look
            # Llama 3-shaped; stating the 3.1 values here keeps the config right either way.
            config_overrides=MappingProxyType(
                {"max_position_embeddings": 131072, "rope_scaling": _LLAMA3_ROPE_SCALING_FACTOR_8}
            ),
        ),
        "guard3-1b": GuardFacts(
            kind="guard3-1b",
            title="Llama Guard 3 1B",
            names=("Llama-Guard-3-1B",),
            shaped_like="3.2",
            params=_params(dim=2048, n_layers=16, ffn_dim_multiplier=1.5, multiple_of=256),
            context_length=131072,
            categories=_GUARD3_CATEGORIES[:13],
            template="guard3_1b",
            tokenizer_eos="<|eot_id|>",
            generation_eos=(128001, 128008, 128009),
            # Llama 3.2 1B ties its output layer to the embedding and scales rope by 32; Guard 3 1B has
            # its own output layer and the Llama 3.1 factor.
            config_overrides=MappingProxyType(
                {"rope_scaling": _LLAMA3_ROPE_SCALING_FACTOR_8, "tie_word_embeddings": False}
            ),
        ),
    }
)

# "Llama-Guard-3-1B", "Meta-Llama-Guard-2-8B", "llama-guard-2", "Llama Guard 3": generation, then size if named.
_NAME: Final = re.compile(r"guard[-_ ]?(?P<generation>[234])(?:[-_ ]?(?P<size>\d+)b)?", re.IGNORECASE)


def guard_facts(names: tuple[str, ...], *, dim: int, n_layers: int) -> GuardFacts | None:
    """The Guard release the names say (folder, parents, Hub repository; first match wins), or None.

    Only a name can say "Guard", and only a name or the published width can say 1B or 8B: the tensors of
    Guard 3 1B look like an untied Llama 3.1 (its rope factor is 8, like 3.1's), and Guard 3 8B's params.json
    may not say ``use_scaled_rope`` at all, so the release detection reports for them is not the key.
    """
    match = next((m for m in map(_NAME.search, names) if m), None)
    if match is None:
        return None
    generation, size = int(match["generation"]), match["size"]
    if generation == 2:
        return GUARDS["guard2-8b"]
    if generation == 3 and size in ("1", "8"):
        return GUARDS[f"guard3-{size}b"]
    if generation == 3 and size is None:
        for facts in (GUARDS["guard3-1b"], GUARDS["guard3-8b"]):
            if (dim, n_layers) == (facts.params["dim"], facts.params["n_layers"]):
                return facts
    raise UnsupportedError(
        f"{match.string!r} names Llama Guard {generation}{f' {size}B' if size else ''}, which is not a Llama Guard "
        f"text checkpoint of a published size (dim {dim}, {n_layers} layers); this converts "
        f"{', '.join(f.title for f in GUARDS.values())}: name the folder after one of them (e.g. Llama-Guard-3-1B)."
    )


def guard_chat_template(kind: GuardKind) -> str:
    """The chat template of a Guard release, as its published ``tokenizer_config.json`` carries it.

    Guard 3 1B's adds one branch to the published text: its published template reads only list-of-parts
    content (``[{"type": "text", "text": ...}]``) and silently drops plain-string messages, leaving an empty
    conversation that the model calls "safe"; ours renders a string message as the one-part list.
    """
    try:
        stem = GUARDS[kind].template
    except KeyError:
        raise UnsupportedError(f"no Llama Guard release is called {kind!r}; use one of {', '.join(GUARDS)}.") from None
    text = resources.files(__package__).joinpath("templates").joinpath(f"{stem}.jinja").read_text(encoding="utf-8")
    # The file ends in one newline for editors; the published templates do not.
    return text[:-1] if text.endswith("\n") else text
