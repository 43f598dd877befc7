"""Offline Llama 3.x chat templates: Meta's token ids, Meta's documented prompts, the published format."""

from __future__ import annotations

import datetime
import importlib.resources
import json
import os
from pathlib import Path

import jinja2
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_models.datatypes import RawMessage
from llama_models.llama3.chat_format import ChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from transformers import AutoTokenizer

from llama_convert.errors import UnsupportedError
from llama_convert.families.llama.chat_templates import chat_template
from llama_convert.families.llama.tokenizer import llama3_tokenizer_files

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

LLAMA_MODELS = importlib.resources.files("llama_models")
META_MODEL = Path(str(LLAMA_MODELS / "llama3" / "tokenizer.model"))

SYSTEM_HEADER = "<|start_header_id|>system<|end_header_id|>\n\n"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def dates(day: str = "26 Jul 2024") -> str:
    return f"Cutting Knowledge Date: December 2023\nToday Date: {day}\n\n"


@pytest.fixture(scope="module")
def meta_format() -> ChatFormat:
    return ChatFormat(MetaTokenizer(META_MODEL))


def _load(tmp_path_factory, version: str):
    folder = tmp_path_factory.mktemp(f"llama{version}")
    files = llama3_tokenizer_files(META_MODEL, version=version, instruct=True, context_length=8192)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tok3(tmp_path_factory):
    return _load(tmp_path_factory, "3")


@pytest.fixture(scope="module")
def tok31(tmp_path_factory):
    return _load(tmp_path_factory, "3.1")


@pytest.fixture(scope="module")
def tok32(tmp_path_factory):
    return _load(tmp_path_factory, "3.2")


def _ids(tok, messages, **kwargs) -> list[int]:
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def _text(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def _meta_ids(meta_format: ChatFormat, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    raw = [RawMessage(role=m["role"], content=m["content"]) for m in messages]
    tokens = meta_format.encode_dialog_prompt(raw).tokens
    if generation_prompt:
        return tokens
    # Meta always appends the assistant header; drop it when no reply is asked for.
    header = meta_format._encode_header("assistant")
    assert tokens[-len(header) :] == header
    return tokens[: -len(header)]


# --- API ----------------------------------------------------------------------------------------------


def test_template_per_version():
    assert chat_template("3", instruct=True).startswith("{#- Llama 3 instruct")
    llama31 = chat_template("3.1", instruct=True)
    assert chat_template("3.3", instruct=True) == llama31
    assert chat_template("3.2", instruct=True) == "{%- set llama_3_2_format = true %}\n" + llama31
    assert not llama31.endswith("\n")


@pytest.mark.parametrize("version", ["1", "2", "code", "3", "3.1", "3.2", "3.3"])
def test_base_models_have_no_template(version):
    assert chat_template(version, instruct=False) is None


def test_llama1_never_has_a_template():
    assert chat_template("1", instruct=True) is None


def test_unknown_version():
    with pytest.raises(UnsupportedError) as info:
        chat_template("4", instruct=True)
    assert str(info.value) == (
        "no chat template is known for Llama version '4'; use one of 1, 2, 3, 3.1, 3.2, 3.3, code."
    )


# --- Llama 3: ids equal Meta's ChatFormat -------------------------------------------------------------

DIALOGS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a pirate. Answer in one sentence."},
        {"role": "user", "content": "Where is the treasure?"},
    ],
    [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And in binary, as code?\n```python\nprint(bin(4))\n```"},
    ],
    [
        {"role": "user", "content": "日本語で挨拶して"},
        {"role": "assistant", "content": "こんにちは！👋"},
        {"role": "user", "content": "Спасибо. I'D like more   spaces\tand tabs."},
        {"role": "assistant", "content": "Sure:  a  b\n\nc"},
    ],
]


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("dialog", DIALOGS, ids=[f"dialog{i}" for i in range(len(DIALOGS))])
def test_llama3_ids_equal_meta_chat_format(tok3, meta_format, dialog, generation_prompt):
    expected = _meta_ids(meta_format, dialog, generation_prompt=generation_prompt)
    assert _ids(tok3, dialog, add_generation_prompt=generation_prompt) == expected


def test_llama3_trims_message_content(tok3, meta_format):
    # Meta's Llama 3 reference ChatFormat stripped each message, and the published template trims it.
    # The ChatFormat now installed with llama-models is the Llama 3.1 one (no strip, plus the ipython
    # role and <|eom_id|>), so it is given the stripped text to compare with.
    padded = [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "\n\tHi there  "}]
    stripped = [{**m, "content": m["content"].strip()} for m in padded]
    assert _ids(tok3, padded, add_generation_prompt=True) == _meta_ids(meta_format, stripped, generation_prompt=True)


def test_llama3_text():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": " U "}]
    rendered = jinja2.Environment().from_string(chat_template("3", instruct=True))
    assert rendered.render(messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>" + ASSISTANT_HEADER
    )


# --- Llama 3.1: Meta's documented prompts (llama_models/llama3_1/prompt_format.md) ----------------------
# Copied from the document (each code block there ends with one extra newline, left out here). The
# published Hugging Face template, which ours renders exactly, differs from these examples in a few
# fixed ways, applied explicitly below: it always writes the two date lines, follows a "Tools:" line
# with a blank line, trims the system message, and writes a tool result as compact JSON.

DOC31_CONVERSATION = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnswer who are you in the form of jeopardy?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DOC31_CONVERSATION_REPLY = 'Here\'s my response\n\n"What is a helpful assistant?"<|eot_id|>'
DOC31_BUILTIN = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    "Tools: brave_search, wolfram_alpha\nCutting Knowledge Date: December 2023\n"
    "Today Date: 21 September 2024\n\nYou are a helpful assistant.\n<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nSearch the web for the latest price of 1oz gold?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DOC31_BUILTIN_REPLY = '<|python_tag|>brave_search.call(query="latest price of 1oz gold")<|eom_id|>'
DOC31_CODE_INTERPRETER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWrite code to check if number is prime, use that to see if "
    "the number 7 is prime<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
DOC31_TOOL_RESULT = """{
    "queryresult": {
        "success": true,
        "inputstring": "100th decimal of pi",
        "pods": [
            {
                "title": "Input interpretation",
                "subpods": [
                    {
                        "title": "",
                        "plaintext": "100th digit | π"
                    }
                ]
            },
            {
                "title": "Nearby digits",
                "subpods": [
                    {
                        "title": "",
                        "plaintext": "...86208998628034825342117067982148086513282306647093..."
                    }
                ]
            },
            {
                "title": "Result",
                "primary": true,
                "subpods": [
                    {
                        "title": "",
                        "plaintext": "7"
                    }
                ]
            }
        ]
    }
}"""
DOC31_BUILTIN_FULL = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    "Tools: brave_search, wolfram_alpha\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "What is the 100th decimal of pi?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    '<|python_tag|>wolfram_alpha.call(query="100th decimal of pi")<|eom_id|>'
    "<|start_header_id|>ipython<|end_header_id|>\n\n\n" + DOC31_TOOL_RESULT + "\n<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DOC31_BUILTIN_FULL_REPLY = "The 100th decimal of pi is 7.<|eot_id|>"
DOC31_FUNCTION_TAG_INSTRUCTIONS = (
    "You have access to the following functions:\n\n"
    "Use the function 'trending_songs' to 'Returns the trending songs on a Music site':\n"
    '{"name": "trending_songs", "description": "Returns the trending songs on a Music site", "parameters": '
    '{"genre": {"description": "The genre of the songs to return", "param_type": "str", "required": false}, '
    '"n": {"description": "The number of songs to return", "param_type": "int", "required": true}}}\n\n'
    "Think very carefully before calling functions.\n"
    "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
    '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
    "Reminder:\n"
    "- If looking for real time information use relevant functions before falling back to brave_search\n"
    "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
    "- Required parameters MUST be specified\n"
    "- Only call one function at a time\n"
    "- Put the entire function call reply on one line"
)
DOC31_FUNCTION_TAG = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 21 September 2024\n\nYou are a helpful assistant.\n"
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + DOC31_FUNCTION_TAG_INSTRUCTIONS + "<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nUse tools to get latest trending songs<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DOC31_FUNCTION_TAG_REPLY = '<function=trending_songs>{"n": 10}</function><|eot_id|>'

# llama_models/llama3_2/text_prompt_format.md, "Zero shot function calling E2E format".
DOC32_SYSTEM = """You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the function can be used, point it out. If the given question lacks the parameters required by the function,
also point it out. You should only return the function call in tools call sections.

If you decide to invoke any of the function(s), you MUST put it in the format of [func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]
You SHOULD NOT include any other text in the response.

Here is a list of functions in JSON format that you can invoke.

[
    {
        "name": "get_weather",
        "description": "Get weather info for places",
        "parameters": {
            "type": "dict",
            "required": [
                "city"
            ],
            "properties": {
                "city": {
                    "type": "string",
                    "description": "The name of the city to get the weather for"
                },
                "metric": {
                    "type": "string",
                    "description": "The metric for weather. Options are: celsius, fahrenheit",
                    "default": "celsius"
                }
            }
        }
    }
]"""  # noqa: E501
DOC32_E2E = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + DOC32_SYSTEM + "<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is the weather in SF?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    '<|python_tag|>[get_weather(city="San Francisco", metric="celsius")]<|eot_id|>'
    '<|start_header_id|>ipython<|end_header_id|>\n\n"25 C"<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DOC32_E2E_REPLY = "The weather in San Francisco is 25 C.<|eot_id|>"

DOCUMENTED = {
    "llama3_1/prompt_format.md": [
        DOC31_CONVERSATION,
        DOC31_CONVERSATION_REPLY,
        DOC31_BUILTIN,
        DOC31_BUILTIN_REPLY,
        DOC31_CODE_INTERPRETER,
        DOC31_BUILTIN_FULL,
        DOC31_BUILTIN_FULL_REPLY,
        DOC31_FUNCTION_TAG,
        DOC31_FUNCTION_TAG_REPLY,
    ],
    "llama3_2/text_prompt_format.md": [DOC32_E2E, DOC32_E2E_REPLY],
}


def with_dates(prompt: str, day: str = "26 Jul 2024") -> str:
    """A documented prompt whose system block lacks the date lines the template always writes."""
    assert prompt.count(SYSTEM_HEADER) == 1
    return prompt.replace(SYSTEM_HEADER, SYSTEM_HEADER + dates(day))


@pytest.mark.parametrize("document", sorted(DOCUMENTED))
def test_copied_examples_are_verbatim(document):
    text = (LLAMA_MODELS / document).read_text(encoding="utf-8")
    for example in DOCUMENTED[document]:
        assert f"```\n{example}\n```" in text


def test_doc_conversation(tok31):
    messages = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Answer who are you in the form of jeopardy?"},
    ]
    prompt = _text(tok31, messages, add_generation_prompt=True, date_string="26 Jul 2024")
    assert prompt == with_dates(DOC31_CONVERSATION)
    reply = {"role": "assistant", "content": DOC31_CONVERSATION_REPLY.removesuffix("<|eot_id|>")}
    assert _text(tok31, [*messages, reply], date_string="26 Jul 2024") == prompt + DOC31_CONVERSATION_REPLY


def test_doc_builtin_tool_call(tok31):
    messages = [
        {"role": "system", "content": "You are a helpful assistant.\n"},
        {"role": "user", "content": "Search the web for the latest price of 1oz gold?"},
    ]
    options = {"builtin_tools": ["brave_search", "wolfram_alpha"], "date_string": "21 September 2024"}
    prompt = _text(tok31, messages, add_generation_prompt=True, **options)
    assert prompt == DOC31_BUILTIN.replace("wolfram_alpha\nCutting", "wolfram_alpha\n\nCutting").replace(
        "assistant.\n<|eot_id|>", "assistant.<|eot_id|>"
    )
    call = _tool_call("brave_search", {"query": "latest price of 1oz gold"})
    assert _text(tok31, [*messages, call], **options) == prompt + DOC31_BUILTIN_REPLY


def test_doc_code_interpreter(tok31):
    messages = [
        {
            "role": "user",
            "content": "Write code to check if number is prime, use that to see if the number 7 is prime",
        }
    ]
    prompt = _text(tok31, messages, add_generation_prompt=True, builtin_tools=["code_interpreter"])
    # code_interpreter is implied by "Environment: ipython" and left off the (then empty) Tools line.
    assert prompt == DOC31_CODE_INTERPRETER.replace(
        "Environment: ipython<|eot_id|>", "Environment: ipython\nTools: \n\n" + dates() + "<|eot_id|>"
    )


def test_doc_builtin_tools_full_interaction(tok31):
    result = json.loads(DOC31_TOOL_RESULT)
    messages = [
        {"role": "user", "content": "What is the 100th decimal of pi?"},
        _tool_call("wolfram_alpha", {"query": "100th decimal of pi"}),
        {"role": "ipython", "content": result},
    ]
    options = {"builtin_tools": ["brave_search", "wolfram_alpha"]}
    prompt = _text(tok31, messages, add_generation_prompt=True, **options)
    expected = DOC31_BUILTIN_FULL.replace(
        "wolfram_alpha\n<|eot_id|>", "wolfram_alpha\n\n" + dates() + "<|eot_id|>"
    ).replace("\n" + DOC31_TOOL_RESULT + "\n", json.dumps(result, ensure_ascii=False))
    assert prompt == expected
    reply = {"role": "assistant", "content": "The 100th decimal of pi is 7."}
    assert _text(tok31, [*messages, reply], **options) == prompt + DOC31_BUILTIN_FULL_REPLY


def test_doc_function_tag_tool_calling(tok31):
    # The <function> format is instructions the caller writes into a user message: the turns after
    # the system block match the document character for character.
    messages = [
        {"role": "system", "content": "You are a helpful assistant.\n"},
        {"role": "user", "content": DOC31_FUNCTION_TAG_INSTRUCTIONS},
        {"role": "user", "content": "Use tools to get latest trending songs"},
    ]
    prompt = _text(tok31, messages, add_generation_prompt=True, date_string="21 September 2024")
    system, turns = prompt.split("<|eot_id|>", 1)
    assert turns == DOC31_FUNCTION_TAG.split("<|eot_id|>", 1)[1]
    assert system == "<|begin_of_text|>" + SYSTEM_HEADER + dates("21 September 2024") + "You are a helpful assistant."
    reply = {"role": "assistant", "content": DOC31_FUNCTION_TAG_REPLY.removesuffix("<|eot_id|>")}
    rendered = _text(tok31, [*messages, reply], date_string="21 September 2024")
    assert rendered == prompt + DOC31_FUNCTION_TAG_REPLY


def test_doc_llama32_tool_round_trip(tok32):
    messages = [
        {"role": "system", "content": DOC32_SYSTEM},
        {"role": "user", "content": "What is the weather in SF?"},
        {"role": "assistant", "content": '<|python_tag|>[get_weather(city="San Francisco", metric="celsius")]'},
        {"role": "tool", "content": "25 C"},  # a string result is written as a JSON string
    ]
    prompt = _text(tok32, messages, add_generation_prompt=True, date_string="26 Jul 2024")
    assert prompt == with_dates(DOC32_E2E)
    reply = {"role": "assistant", "content": "The weather in San Francisco is 25 C."}
    assert _text(tok32, [*messages, reply], date_string="26 Jul 2024") == prompt + DOC32_E2E_REPLY


# --- Llama 3.1: the published format for JSON tools -----------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_JSON = json.dumps(WEATHER_TOOL, indent=4)
RESPOND_FORMAT = (
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)


def _tool_call(name: str, arguments: dict) -> dict:
    return {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def test_tools_in_first_user_message(tok31):
    messages = [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "Weather in Paris? "},
        _tool_call("get_weather", {"city": "Paris"}),
        {"role": "tool", "content": {"temperature_c": 21, "sky": "clear"}},
    ]
    assert _text(tok31, messages, tools=[WEATHER_TOOL], add_generation_prompt=True) == (
        "<|begin_of_text|>"
        + SYSTEM_HEADER
        + "Environment: ipython\n"
        + dates()
        + "Be helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n\n"
        + RESPOND_FORMAT
        + WEATHER_TOOL_JSON
        + "\n\nWeather in Paris?<|eot_id|>"
        + ASSISTANT_HEADER
        + '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        + "<|start_header_id|>ipython<|end_header_id|>\n\n"
        + '{"temperature_c": 21, "sky": "clear"}<|eot_id|>'
        + ASSISTANT_HEADER
    )


def test_tools_in_system_message(tok31):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    rendered = _text(tok31, messages, tools=[WEATHER_TOOL], tools_in_user_message=False, date_string="1 Jan 2025")
    assert rendered == (
        "<|begin_of_text|>"
        + SYSTEM_HEADER
        + "Environment: ipython\n"
        + dates("1 Jan 2025")
        + "You have access to the following functions. To call a function, please respond with JSON for a "
        "function call."
        + RESPOND_FORMAT
        + WEATHER_TOOL_JSON
        + "\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
    )


def test_custom_tool_call_ends_with_eom_in_ipython_mode(tok31):
    messages = [{"role": "user", "content": "Paris?"}, _tool_call("get_weather", {"city": "Paris"})]
    rendered = _text(tok31, messages, tools=[WEATHER_TOOL], builtin_tools=["brave_search"])
    assert rendered.endswith(ASSISTANT_HEADER + '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>')
    assert "Tools: brave_search\n\nCutting" in rendered


def test_one_tool_call_per_message(tok31):
    call = _tool_call("get_weather", {"city": "Paris"})
    call["tool_calls"] *= 2
    with pytest.raises(jinja2.TemplateError, match="exactly one tool call"):
        _text(tok31, [{"role": "user", "content": "Paris?"}, call])


def test_tools_need_a_user_message(tok31):
    with pytest.raises(jinja2.TemplateError, match="first user message"):
        _text(tok31, [{"role": "system", "content": "S"}], tools=[WEATHER_TOOL])


def test_llama31_ids_equal_meta_chat_format(tok31, meta_format):
    # Meta's ChatFormat writes no system header of its own: give it the system text the template writes.
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Lima."},
        {"role": "user", "content": "Population?"},
        {"role": "assistant", "content": '{"name": "lookup", "parameters": {"q": "Lima population"}}'},
        {"role": "tool", "content": '"10 million"'},
    ]
    meta_messages = [{"role": "system", "content": dates() + "You are terse."}, *messages[1:]]
    expected = _meta_ids(meta_format, meta_messages, generation_prompt=True)
    ours = [*messages[:4], _tool_call("lookup", {"q": "Lima population"}), {"role": "tool", "content": "10 million"}]
    assert _ids(tok31, ours, add_generation_prompt=True) == expected


# --- dates -----------------------------------------------------------------------------------------------


def test_llama31_and_33_keep_the_fixed_date(tok31):
    # transformers offers strftime_now; the 3.1/3.3 template does not use it.
    assert dates("26 Jul 2024") in _text(tok31, [{"role": "user", "content": "Hi"}])


def test_llama32_uses_todays_date(tok32):
    before = datetime.datetime.now().strftime("%d %b %Y")
    rendered = _text(tok32, [{"role": "user", "content": "Hi"}])
    after = datetime.datetime.now().strftime("%d %b %Y")
    assert dates(before) in rendered or dates(after) in rendered


def test_llama32_without_strftime_now_falls_back():
    template = jinja2.Environment().from_string(chat_template("3.2", instruct=True))
    rendered = template.render(messages=[{"role": "user", "content": "Hi"}], bos_token="<|begin_of_text|>")
    assert rendered == (
        "<|begin_of_text|>"
        + SYSTEM_HEADER
        + dates()
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )


def test_llama32_has_no_builtin_tools(tok32):
    messages = [{"role": "user", "content": "Gold price?"}, _tool_call("brave_search", {"query": "gold"})]
    rendered = _text(tok32, messages, builtin_tools=["brave_search"], date_string="26 Jul 2024")
    assert rendered == (
        "<|begin_of_text|>" + SYSTEM_HEADER + dates() + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Gold price?<|eot_id|>"
        + ASSISTANT_HEADER
        + '{"name": "brave_search", "parameters": {"query": "gold"}}<|eot_id|>'
    )
