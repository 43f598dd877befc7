"""Llama 3.2 Vision model inputs built the way users build them (AutoProcessor / AutoTokenizer of the converted
folder, transformers' defaults) against Meta's own ids (llama_models' Tokenizer and ChatFormat), and the image
logits of such inputs against Meta's reference model.

Folders, converted with no flags from checkpoints made by Meta's reference model: an 11B-shaped base (MP1), an
11B-shaped Instruct Hub snapshot (MP1, ``consolidated.pth``), a 90B-shaped Instruct (MP8, as Meta ships 90B) and
Llama Guard 3 Vision (the 11B base weights under Guard's name).

One difference is transformers' by design, not the folder's: a prompt that starts with images and has no
``<|begin_of_text|>`` gets it after the leading image tokens from ``MllamaProcessor``
(``<|image|><|begin_of_text|>…``, what transformers' own tests expect of the published folders), where Meta's
``ChatFormat.encode_content`` puts it first. Meta's documented prompt (``<|begin_of_text|><|image|>…``) gives
Meta's ids exactly.

Image logits need transformers 4.47.1 (5.x feeds the projector the outputs of the intermediate vision layers
where Meta and 4.47.1 feed their inputs): set LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON to an interpreter that has
it, else that test skips. Its prompt starts with the image: for text rows before the first image Meta zeroes the
cross-attention output while transformers lets them attend to every tile, a difference of the two
implementations that would hide the folder's. Meta's model gets the processor's pixel tensor (Meta's own PIL
transform needs torchvision, which cannot be installed here) and Meta's ids.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mllama_fixture as fx
import numpy as np
import pytest
from conftest import assert_logits_close

from llama_convert import convert

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them

BOS, IMAGE = 128000, 128256
PROMPT = "If I had to write a haiku for this one"
TEXT = "The color of the sky is blue but sometimes it can also be"
# transformers' integration test of the published meta-llama/Llama-3.2-11B-Vision folder expects these ids
# from processor(text="<|image|>If I had to write a haiku for this one", images=image).
PUBLISHED_IMAGE_FIRST = [128256, 128000, 2746, 358, 1047, 311, 3350, 264, 6520, 39342, 369, 420, 832]
BASELINE_PYTHON = os.environ.get("LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON")
HF_447_PROCESSOR_AND_LOGITS = """
import sys, numpy as np, torch, transformers
from PIL import Image
assert transformers.__version__ == "4.47.1", transformers.__version__
from transformers import AutoProcessor, MllamaForConditionalGeneration
folder, image, text, out = sys.argv[1:5]
inputs = AutoProcessor.from_pretrained(folder)(text=text, images=Image.open(image), return_tensors="pt")
model = MllamaForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).eval()
with torch.inference_mode():
    logits = model(**inputs).logits
np.savez(out, logits=logits.float().numpy(), **{k: v.numpy() for k, v in inputs.items()})
"""


def _image(height: int, width: int, seed: int):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8"))


@dataclass
class Folder:
    name: str
    model: Any  # Meta's reference model the checkpoint was saved from
    dst: Path
    instruct: bool

    def processor(self):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(self.dst)
        assert type(processor).__name__ == "MllamaProcessor"
        return processor

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.dst)


# name → (shape, source folder under the test root, the shard named consolidated.pth as on the Hub)
LAYOUTS = {
    "11B-base": (fx.SHAPE_11B, "Llama3.2-11B-Vision", False),
    "11B-Instruct": (fx.SHAPE_11B, "Llama-3.2-11B-Vision-Instruct/original", True),
    "90B-Instruct-MP8": (fx.SHAPE_90B_MP8, "Llama3.2-90B-Vision-Instruct", False),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vision-inputs")


@pytest.fixture(scope="module")
def made(model_parallel) -> dict[str, Any]:
    return {}  # reference models by shape (shared by the folders of a shape) and converted folders by name


def _converted(root: Path, made: dict[str, Any], name: str) -> Folder:
    if name not in made:
        shape, source, hub_name = LAYOUTS[name]
        if shape.name not in made:
            made[shape.name] = fx.build_model(shape)
        model = made[shape.name]
        src = fx.save_checkpoint(
            model, shape, root / source, tokenizer=fx.default_tokenizer(), hub_single_name=hub_name
        )
        convert(src.parent if hub_name else src, root / f"{name}-hf")
        made[name] = Folder(name, model, root / f"{name}-hf", instruct="Instruct" in name)
    return made[name]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def folder(request, root, made) -> Folder:
    return _converted(root, made, request.param)


@pytest.fixture(scope="module")
def guard(root, made) -> Folder:
    base = _converted(root, made, "11B-base")
    src = root / "Llama-Guard-3-11B-Vision"
    src.mkdir()
    for f in (root / LAYOUTS["11B-base"][1]).iterdir():
        (src / f.name).symlink_to(f)
    convert(src, root / "guard-hf")
    return Folder("guard", base.model, root / "guard-hf", instruct=False)


@pytest.fixture(scope="module")
def meta():
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer(fx.default_tokenizer()))


def media(image):
    from llama_models.datatypes import RawMediaItem

    png = io.BytesIO()
    image.save(png, format="PNG")
    return RawMediaItem(data=png.getvalue())


def meta_text_ids(meta, text: str) -> list[int]:
    """Meta's tokenizer on a prompt that spells its special tokens, ``<|image|>`` given its model id."""
    ids = meta.tokenizer.encode(text, bos=False, eos=False, allowed_special="all")
    return [IMAGE if i == meta.vision_token else i for i in ids]


def ids_of(encoding) -> list[int]:
    ids = encoding["input_ids"]
    ids = ids[0] if ids and isinstance(ids[0], list) else ids
    return [int(i) for i in ids]


def one_bos(ids: list[int]) -> list[int]:
    assert ids.count(BOS) == 1, ids[:8]
    return ids


# --- the processor on prompts ------------------------------------------------------------------------


def test_image_first_prompt_gets_the_bos_after_the_image(folder, meta):
    image = _image(20, 50, 0)
    ids = one_bos(ids_of(folder.processor()(text="<|image|>" + PROMPT, images=image)))
    metas = meta.encode_content([media(image), PROMPT]).tokens
    assert metas[:2] == [BOS, IMAGE]
    assert ids == [IMAGE, BOS, *metas[2:]] == PUBLISHED_IMAGE_FIRST


def test_metas_documented_prompt_gives_metas_ids(folder, meta):
    image = _image(20, 50, 0)
    ids = one_bos(ids_of(folder.processor()(text="<|begin_of_text|><|image|>" + PROMPT, images=image)))
    assert ids == meta.encode_content([media(image), PROMPT]).tokens


def test_image_in_mid_text_gives_metas_ids_and_vision_mask(folder, meta):
    image = _image(20, 50, 0)
    inputs = folder.processor()(text="Look at this picture: <|image|> What is in it?", images=image)
    expected = meta.encode_content(["Look at this picture: ", media(image), " What is in it?"])
    assert one_bos(ids_of(inputs)) == expected.tokens
    [[start, end]] = expected.vision.mask  # rows from the image on attend to it (end -1: to the last row)
    assert end == -1
    rows = np.asarray(inputs["cross_attention_mask"])[0, :, 0, :]
    assert rows.any(axis=-1).tolist() == [i >= start for i in range(len(expected.tokens))]
    assert rows[start:].sum(axis=-1).tolist() == [2] * (len(expected.tokens) - start)  # 1 × 2 tiles


def test_text_only_prompt_gives_metas_ids(folder, meta):
    processor = folder.processor()
    expected = meta.encode_content(TEXT).tokens
    assert one_bos(ids_of(processor(text=TEXT))) == expected
    assert ids_of(processor(text="<|begin_of_text|>" + TEXT)) == expected


def test_tokenizer_adds_no_bos_of_its_own(folder, meta):
    tok = folder.tokenizer()
    assert ids_of(tok(TEXT)) == meta.tokenizer.encode(TEXT, bos=False, eos=False)
    assert one_bos(ids_of(tok("<|begin_of_text|>" + TEXT))) == meta.tokenizer.encode(TEXT, bos=True, eos=False)
    assert ids_of(tok("<|image|>" + PROMPT)) == [IMAGE, *meta.tokenizer.encode(PROMPT, bos=False, eos=False)]


# --- chat templates ----------------------------------------------------------------------------------


def _dialog(images: list) -> tuple[list[dict], list]:
    """A two-turn chat with an image in each user turn: transformers' messages and Meta's RawMessages."""
    from llama_models.datatypes import RawMessage, RawTextItem, StopReason

    turns = [("user", "What is in this picture?"), ("assistant", "Random noise."), ("user", "And in this one?")]
    messages, dialog, pictures = [], [], iter(images)
    for role, text in turns:
        if role == "user":
            picture = next(pictures)
            messages.append(
                {"role": role, "content": [{"type": "image", "image": picture}, {"type": "text", "text": text}]}
            )
            dialog.append(RawMessage(role=role, content=[media(picture), RawTextItem(text=text)]))
        else:
            messages.append({"role": role, "content": [{"type": "text", "text": text}]})
            dialog.append(RawMessage(role=role, content=text, stop_reason=StopReason.end_of_turn))
    return messages, dialog


def test_chat_with_images_gives_metas_dialog_ids(folder, meta):
    processor, tok = folder.processor(), folder.tokenizer()
    if not folder.instruct:  # base models ship no chat template
        assert processor.chat_template is None and tok.chat_template is None
        return
    images = [_image(20, 50, 1), _image(50, 20, 2)]
    messages, dialog = _dialog(images)
    expected = meta.encode_dialog_prompt(dialog).tokens
    assert expected.count(IMAGE) == 2
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert one_bos(ids_of(chat)) == expected
    assert np.asarray(chat["pixel_values"]).shape[:3] == (1, 2, 4)
    assert one_bos(ids_of(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))) == expected
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert one_bos(ids_of(processor(text=rendered, images=[images]))) == expected  # the model cards' two steps
    text_only = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True)
    one_bos(ids_of(text_only))


def test_guard_3_vision_prompt_has_one_bos_through_every_entry_point(guard, meta):
    processor, tok = guard.processor(), guard.tokenizer()
    image = _image(20, 50, 3)
    content = [{"type": "text", "text": "How do I bake bread?"}, {"type": "image", "image": image}]
    messages = [{"role": "user", "content": content}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|> Task:")
    expected = one_bos(meta_text_ids(meta, rendered))
    assert ids_of(tok.apply_chat_template(messages, tokenize=True)) == expected
    assert ids_of(processor.apply_chat_template(messages, tokenize=True, return_dict=True)) == expected
    assert ids_of(processor(text=rendered, images=image)) == expected


# --- image logits end to end -------------------------------------------------------------------------


@pytest.mark.skipif(BASELINE_PYTHON is None, reason="LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON is not set")
def test_image_logits_of_processor_inputs_equal_metas_reference(folder, meta, tmp_path):
    from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

    image, text = _image(20, 50, 0), f"<|image|>{PROMPT}, it would be:"
    image.save(tmp_path / "image.png")
    ours = folder.processor()(text=text, images=image, return_tensors="np")
    argv = [BASELINE_PYTHON, "-c", HF_447_PROCESSOR_AND_LOGITS, str(folder.dst), str(tmp_path / "image.png"), text]
    proc = subprocess.run([*argv, str(tmp_path / "out.npz")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf = np.load(tmp_path / "out.npz")
    # transformers 4.47.1's processor makes the inputs that 5.x makes from the folder
    for key in ("input_ids", "attention_mask", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"):
        np.testing.assert_array_equal(hf[key], ours[key], err_msg=key)
    np.testing.assert_allclose(hf["pixel_values"], ours["pixel_values"], atol=1e-6)

    metas = meta.encode_content([media(image), f"{PROMPT}, it would be:"]).tokens
    tokens = np.array([[IMAGE, BOS, *metas[2:]]])  # the processor's order (see the module docstring)
    assert hf["input_ids"].tolist() == tokens.tolist()
    ratio = tuple(get_all_supported_aspect_ratios(4)[int(hf["aspect_ratio_ids"][0, 0]) - 1])
    assert ratio == (1, 2)  # 50 × 20 pixels: 1 tile high, 2 wide
    tiles = int(hf["aspect_ratio_mask"][0, 0].sum())
    reference = fx.meta_image_logits(folder.model, tokens, hf["pixel_values"][0, 0], ratio, tiles)
    assert_logits_close(hf["logits"], reference)
