"""The offline Llama 4 chat template gives the ids Meta's ChatFormat (llama_models.llama4) gives.

Meta's chat_format module imports its image preprocessing, which imports torchvision; torchvision
cannot be installed beside the CPU torch here. Text dialogs never reach that code, so the import
is satisfied by an empty placeholder module registered only while chat_format is imported (and only
when torchvision is absent). Image placeholders are compared through Meta's own ``_encode_image``
and transformers' own ``Llama4Processor._prompt_split_image``, which need no pixels.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
from llama4_fixtures import TOKENIZER_MODEL, tokenizer_files
from llama_models.datatypes import RawMessage, RawTextItem, StopReason, ToolCall
from llama_models.llama4.args import Size, VisionArgs
from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer


def _import_chat_format():
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("llama_models.llama4.chat_format")
    placeholder = types.ModuleType("torchvision")
    placeholder.transforms = types.ModuleType("torchvision.transforms")
    placeholder.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    modules = (placeholder, placeholder.transforms, placeholder.transforms.functional)
    sys.modules.update(dict(zip(names, modules, strict=True)))
    try:
        return importlib.import_module("llama_models.llama4.chat_format")
    finally:
        for name in names:
            sys.modules.pop(name, None)


chat_format = _import_chat_format()


@pytest.fixture(scope="module")
def meta():
    return chat_format.ChatFormat(MetaTokenizer(TOKENIZER_MODEL))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tok")
    for name, data in tokenizer_files(instruct=True).items():
        (folder / name).write_bytes(data)
    return AutoTokenizer.from_pretrained(folder)


def _render(hf, messages: list[dict], **kwargs) -> list[int]:
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return hf(text, add_special_tokens=False)["input_ids"]


def _meta(meta, messages: list[RawMessage]) -> list[int]:
    return meta.encode_dialog_prompt(messages).tokens


WEATHER_CALL = ToolCall(call_id="c1", tool_name="get_weather", arguments={"city": "Paris", "unit": "celsius"})

DIALOGS = {
    "user only": (
        [{"role": "user", "content": "What is the capital of France?"}],
        [RawMessage(role="user", content="What is the capital of France?")],
    ),
    "system, user, assistant, user": (
        [
            {"role": "system", "content": "You are a helpful assistant.\nAnswer briefly."},
            {"role": "user", "content": "Write a haiku about llamas."},
            {"role": "assistant", "content": "Soft wool on the hills,\nquiet eyes watch the sunrise."},
            {"role": "user", "content": "  Now one in 日本語, please 🦙  "},
        ],
        [
            RawMessage(role="system", content="You are a helpful assistant.\nAnswer briefly."),
            RawMessage(role="user", content="Write a haiku about llamas."),
            RawMessage(
                role="assistant",
                content="Soft wool on the hills,\nquiet eyes watch the sunrise.",
                stop_reason=StopReason.end_of_turn,
            ),
            RawMessage(role="user", content="  Now one in 日本語, please 🦙  "),
        ],
    ),
    "tool call and result": (
        [
            {"role": "system", "content": "You can call functions."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                    }
                ],
            },
            {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
        ],
        [
            RawMessage(role="system", content="You can call functions."),
            RawMessage(role="user", content="Weather in Paris?"),
            RawMessage(role="assistant", content="", stop_reason=StopReason.end_of_message, tool_calls=[WEATHER_CALL]),
            RawMessage(role="tool", content='{"temperature": 21, "sky": "clear"}'),
        ],
    ),
    "ipython role and code": (
        [
            {"role": "user", "content": "Run:\n```python\nprint(sum(range(10)))\n```"},
            {"role": "assistant", "content": "Sure.\n"},
            {"role": "ipython", "content": "45\n"},
        ],
        [
            RawMessage(role="user", content="Run:\n```python\nprint(sum(range(10)))\n```"),
            RawMessage(role="assistant", content="Sure.\n", stop_reason=StopReason.end_of_turn),
            RawMessage(role="tool", content="45\n"),
        ],
    ),
    # Meta encodes each text item on its own; a template renders one string, so items must meet
    # where the pre-tokenizer splits anyway (here: before a space-led word). Items ending in
    # whitespace tokenize differently in any string template, the published one included.
    "content as a list of text items": (
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "first part"}, {"type": "text", "text": " and second"}],
            }
        ],
        [RawMessage(role="user", content=[RawTextItem(text="first part"), RawTextItem(text=" and second")])],
    ),
}


@pytest.mark.parametrize("name", list(DIALOGS))
def test_dialog_ids_equal_meta_chat_format(hf, meta, name):
    ours, theirs = DIALOGS[name]
    assert _render(hf, ours) == _meta(meta, theirs)


@pytest.mark.parametrize("name", list(DIALOGS))
def test_chat_template_tokenized_by_transformers_gives_metas_ids(hf, meta, name):
    # apply_chat_template(tokenize=True): what users call; the template writes the one BOS
    ours, theirs = DIALOGS[name]
    ids = hf.apply_chat_template(ours, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert ids == _meta(meta, theirs) and ids.count(200000) == 1


def test_tokenizer_call_gives_metas_completion_ids(hf, meta):
    # a plain prompt, as Meta's completion path encodes it: BOS, then the text (Llama4Processor adds none)
    text = "The color of the sky is blue but sometimes it can also be"
    assert hf(text)["input_ids"] == meta.encode_content(text).tokens


@pytest.mark.parametrize("tiles", [(1, 1), (2, 3)])
def test_image_placeholders_expand_to_metas_image_tokens(hf, meta, tiles):
    import torch
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    vision = VisionArgs(
        image_size=Size(height=336, width=336),
        patch_size=Size(height=14, width=14),
        dim=1408,
        n_layers=1,
        n_heads=16,
        mlp_ratio=4.0,
        output_dim=4096,
        pixel_shuffle_ratio=0.5,
    )
    meta.vision_args = vision  # _encode_image reads only these sizes
    chunks = tiles[0] * tiles[1] + (1 if tiles != (1, 1) else 0)  # tiles plus Meta's global view
    image = chat_format.TransformedImage(image_tiles=torch.zeros(chunks, 3, 336, 336), aspect_ratio=tiles)
    question = "What is in this picture?"
    expected = [
        *[meta.tokenizer.special_tokens["<|begin_of_text|>"]],
        *meta._encode_header("user"),
        *meta._encode_image(image),
        *meta.tokenizer.encode(question, bos=False, eos=False),
        meta.tokenizer.special_tokens["<|eot|>"],
        *meta._encode_header("assistant"),
    ]
    text = hf.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    per_chunk = (336 // 14) ** 2 // 4
    expanded = text.replace("<|image|>", Llama4Processor._prompt_split_image(None, tiles, per_chunk), 1)
    assert hf(expanded, add_special_tokens=False)["input_ids"] == expected


def test_tools_are_listed_in_the_first_user_message(hf):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = hf.apply_chat_template(
        [{"role": "user", "content": "Weather?"}], tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|begin_of_text|><|header_start|>user<|header_end|>\n\nGiven the following functions")
    assert '"name": "get_weather"' in text and text.endswith(
        "Weather?<|eot|><|header_start|>assistant<|header_end|>\n\n"
    )
