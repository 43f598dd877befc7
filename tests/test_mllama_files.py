"""Llama 3.2 Vision metadata files: config values as published, processor, tokenizer and chat templates."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llama_convert.dtypes import dtype_by_name
from llama_convert.families.mllama import hf_config, tokenizer
from llama_convert.families.mllama.params import VisionParams, cross_attention_schedule, hf_layer_indices
from llama_convert.testing.synth import bundled_llama3_tokenizer

BF16 = dtype_by_name("bfloat16")
TOKENIZER = bundled_llama3_tokenizer()
needs_tokenizer = pytest.mark.skipif(TOKENIZER is None, reason="llama-models (Meta's tokenizer.model) not installed")
BASELINE_PYTHON = os.environ.get("LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON")
# transformers 4.47.1's official mllama converter, tokenizer part only, run in its own interpreter.
OFFICIAL_TOKENIZER = """
import sys
from transformers.models.mllama.convert_mllama_weights_to_hf import write_tokenizer
write_tokenizer(sys.argv[1], sys.argv[2], instruct=sys.argv[3] == "instruct")
"""


def release(size: str) -> VisionParams:
    """The published models' shapes (Meta's params.json plus the hard-coded vision encoder)."""
    text = {
        "11B": {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 1024, "n_cross": 8},
        "90B": {"dim": 8192, "n_layers": 80, "n_heads": 64, "multiple_of": 4096, "n_cross": 20},
    }[size]
    return VisionParams(
        **text,
        n_kv_heads=8,
        vocab_size=128256,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-5,
        rope_theta=500000.0,
        use_scaled_rope=True,
        tile_size=560,
        max_tiles=4,
        vision_width=1280,
        vision_layers=32,
        vision_global_layers=8,
        vision_output_dim=7680,
        image_rows=8,
    )


# Transcribed from the published meta-llama Llama-3.2-11B-Vision-Instruct / 90B-Vision-Instruct config.json
# (transformers 4.45.0.dev0 dumps): every key that does not depend on the model size.
PUBLISHED_TEXT = {
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "pad_token_id": 128004,
    "dropout": 0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 131072,
    "model_type": "mllama_text_model",
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "max_length": 20,
    "top_k": 50,
    "return_dict": True,
}
PUBLISHED_VISION = {
    "attention_heads": 16,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "image_size": 560,
    "intermediate_layers_indices": [3, 7, 15, 23, 30],
    "intermediate_size": 5120,
    "max_num_tiles": 4,
    "model_type": "mllama_vision_model",
    "norm_eps": 1e-05,
    "num_channels": 3,
    "num_global_layers": 8,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
    "vision_output_dim": 7680,
    "tie_word_embeddings": True,
    "bos_token_id": None,
}
PUBLISHED_SIZES = {
    "11B": {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 40},
    "90B": {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_hidden_layers": 100},
}
PUBLISHED_CROSS = {"11B": list(range(3, 40, 5)), "90B": list(range(3, 100, 5))}
PUBLISHED_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "MllamaImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_image_tiles": 4,
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 560, "width": 560},
}


@pytest.mark.parametrize("size", ["11B", "90B"])
def test_config_equals_the_published_one(size):
    config = hf_config.config_json(release(size), BF16, instruct=True)
    assert config["architectures"] == ["MllamaForConditionalGeneration"]
    assert config["image_token_index"] == 128256 and config["model_type"] == "mllama"
    text, vision = config["text_config"], config["vision_config"]
    assert {k: text[k] for k in PUBLISHED_TEXT} == PUBLISHED_TEXT
    assert {k: text[k] for k in PUBLISHED_SIZES[size]} == PUBLISHED_SIZES[size]
    assert text["cross_attention_layers"] == PUBLISHED_CROSS[size]
    assert {k: vision[k] for k in PUBLISHED_VISION} == PUBLISHED_VISION
    # the same generic keys in both sub-configs, as the published dumps have them
    assert list(text) == sorted(text) and list(vision) == sorted(vision)
    assert hf_config.config_json(release(size), BF16, instruct=False)["text_config"]["eos_token_id"] == 128001


def test_cross_attention_positions_follow_metas_fusion_schedule():
    from mllama_fixture import _meta_multimodal

    meta_text = _meta_multimodal().CrossAttentionTransformerText
    for n_layers, n_cross in [(32, 8), (80, 20), (8, 2), (7, 3), (5, 5), (40, 1)]:
        holder = type("Holder", (), {"n_llama_layers": n_layers})()
        schedule = meta_text._init_fusion_schedule(holder, n_cross)
        assert cross_attention_schedule(n_layers, n_cross) == schedule
        selfs, cross = hf_layer_indices(n_layers, n_cross)
        # Meta runs cross layer j just before self layer schedule[j]: in one list it precedes it directly.
        order = sorted([(s, "self", i) for i, s in enumerate(selfs)] + [(c, "cross", j) for j, c in enumerate(cross)])
        for j, s in enumerate(schedule):
            position = order.index((cross[j], "cross", j))
            assert order[position + 1] == (selfs[s], "self", s)


def test_config_and_generation_config_load_in_transformers(tmp_path):
    from transformers import GenerationConfig, MllamaConfig

    (tmp_path / "config.json").write_text(json.dumps(hf_config.config_json(release("11B"), BF16, instruct=True)))
    gen = hf_config.generation_config_json(instruct=True)
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    config = MllamaConfig.from_pretrained(tmp_path)
    assert config.text_config.cross_attention_layers == PUBLISHED_CROSS["11B"]
    assert config.vision_config.intermediate_layers_indices == [3, 7, 15, 23, 30]
    assert config.image_token_index == 128256
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert (loaded.temperature, loaded.top_p, loaded.eos_token_id, loaded.pad_token_id) == (
        0.6,
        0.9,
        [128001, 128008, 128009],
        128004,
    )


def test_preprocessor_config_is_the_published_one():
    assert hf_config.preprocessor_config_json(release("11B")) == PUBLISHED_PREPROCESSOR


@pytest.fixture(scope="module")
def processor_folder(tmp_path_factory) -> Path:
    if TOKENIZER is None:
        pytest.skip("llama-models (Meta's tokenizer.model) not installed")
    folder = tmp_path_factory.mktemp("mllama-processor")
    p = release("11B")
    (folder / "config.json").write_text(json.dumps(hf_config.config_json(p, BF16, instruct=True)))
    (folder / "preprocessor_config.json").write_text(json.dumps(hf_config.preprocessor_config_json(p)))
    for name, data in tokenizer.tokenizer_files(TOKENIZER, "instruct").items():
        (folder / name).write_bytes(data)
    return folder


def test_autoprocessor_is_mllama_and_makes_model_inputs(processor_folder):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(processor_folder)
    assert type(processor).__name__ == "MllamaProcessor"
    image = Image.fromarray((np.random.default_rng(0).random((300, 700, 3)) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="np")
    assert inputs["pixel_values"].shape == (1, 1, 4, 3, 560, 560)
    assert inputs["input_ids"][0].tolist().count(128256) == 1
    assert inputs["input_ids"][0].tolist().count(128000) == 1  # the template's; the tokenizer adds none
    assert inputs["cross_attention_mask"].shape[:3] == (1, inputs["input_ids"].shape[1], 1)
    # 700 × 300 fits 1 tile high, 2 wide (then padded): HF's aspect-ratio id of (1, 2) is 2
    assert inputs["aspect_ratio_ids"].tolist() == [[2]]


@needs_tokenizer
def test_tokenizer_matches_metas_and_puts_image_at_128256(processor_folder):
    from llama_models.llama3.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    meta = Tokenizer(TOKENIZER)
    ours = AutoTokenizer.from_pretrained(processor_folder)
    assert len(ours) == 128257
    assert ours.convert_tokens_to_ids("<|image|>") == 128256
    assert ours.convert_ids_to_tokens([128005, 128011, 128255]) == [
        "<|step_id|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_246|>",  # as in the published tokenizer.json
    ]
    assert meta.special_tokens["<|image|>"] == 128011  # Meta's own id, rewritten to 128256 by its chat formatter
    for text in ["Describe this image in two sentences.", "  héllo\n\nworld 12345 ¿qué?", "def f(x):\n\treturn x"]:
        assert ours.encode(text) == meta.encode(text, bos=False, eos=False)  # no BOS of its own, as published
    assert ours.pad_token == "<|finetune_right_pad_id|>" and ours.eos_token == "<|eot_id|>"


@needs_tokenizer
def test_instruct_template_gives_metas_dialog_tokens(processor_folder):
    from llama_models.datatypes import RawMediaItem, RawMessage, RawTextItem
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer
    from PIL import Image
    from transformers import AutoTokenizer

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    meta = ChatFormat(Tokenizer(TOKENIZER))
    dialog = [RawMessage(role="user", content=[RawMediaItem(data=png.getvalue()), RawTextItem(text="What is it?")])]
    expected = meta.encode_dialog_prompt(dialog).tokens
    ours = AutoTokenizer.from_pretrained(processor_folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    rendered = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.encode(rendered) == expected
    assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"] == expected
    with pytest.raises(Exception, match="incompatible with system messages"):
        ours.apply_chat_template([{"role": "system", "content": "Be brief."}, *messages], tokenize=False)
    text_only = ours.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False, date_string="26 Jul 2024"
    )
    assert text_only == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@needs_tokenizer
def test_guard_template_puts_the_image_first_and_lists_the_categories():
    from transformers import PreTrainedTokenizerFast

    files = tokenizer.tokenizer_files(TOKENIZER, "guard")
    template = json.loads(files["tokenizer_config.json"])["chat_template"]
    assert template == tokenizer.chat_template("guard")
    from tokenizers import Tokenizer as RawTokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=RawTokenizer.from_str(files["tokenizer.json"].decode()))
    tok.chat_template = template
    messages = [{"role": "user", "content": [{"type": "text", "text": "How do I bake bread?"}, {"type": "image"}]}]
    rendered = tok.apply_chat_template(messages, tokenize=False, excluded_category_keys=["S6"])
    assert rendered.startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|> Task: Check if there is unsafe "
        "content in 'User' messages"
    )
    assert "S5: Defamation.\nS7: Privacy." in rendered and "S13: Elections.\n<END UNSAFE" in rendered
    assert rendered.endswith(
        "User: How do I bake bread?\n\n<END CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST User "
        "message in the above conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second "
        "line must include a comma-separated list of violated categories. <|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>"
    )
    assert "chat_template.json" in files and "chat_template.json" not in tokenizer.tokenizer_files(TOKENIZER, "base")


def test_params_read_flat_and_nested_cross_attention_count(tmp_path):
    from llama_convert.errors import InputError, UnsupportedError
    from llama_convert.families.mllama.params import is_vision_params, parse_vision_params

    shapes = {
        "vision_model.vision_encoder.class_embedding": (1280,),
        "vision_model.vision_projection.weight": (4096, 7680),
        "text_model.learnable_embedding.weight": (1, 4096),
        **{f"vision_model.vision_encoder.transformer.resblocks.{i}.ln_1.weight": (1280,) for i in range(32)},
        **{f"vision_model.vision_encoder.global_transformer.resblocks.{i}.ln_1.weight": (1280,) for i in range(8)},
    }
    flat = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
            "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
            "use_scaled_rope": True, "vision_chunk_size": 560, "vision_max_num_chunks": 4,
            "vision_num_cross_attention_layers": 8}  # fmt: skip
    assert parse_vision_params(flat, shapes, tmp_path / "params.json", mp=8) == release("11B")
    nested = {k: v for k, v in flat.items() if k != "vision_num_cross_attention_layers"}
    nested["vision_model"] = {"cross_attention_adapter": {"num_layers": 8}}
    assert is_vision_params(nested) and not is_vision_params({"dim": 4096})
    assert parse_vision_params(nested, shapes, tmp_path / "params.json", mp=8).n_cross == 8
    with pytest.raises(InputError, match="vision_num_cross_attention_layers"):
        parse_vision_params({**flat, "vision_num_cross_attention_layers": 40}, shapes, tmp_path / "p.json", mp=8)
    wider = {**shapes, "vision_model.vision_projection.weight": (4096, 6400)}
    with pytest.raises(UnsupportedError, match="cannot tell which layers"):
        parse_vision_params(flat, wider, tmp_path / "params.json", mp=8)


@needs_tokenizer
@pytest.mark.skipif(BASELINE_PYTHON is None, reason="LLAMA_CONVERT_TRANSFORMERS_4_47_PYTHON is not set")
@pytest.mark.parametrize("variant", ["base", "instruct"])
def test_tokenizer_encodes_as_the_official_converters(variant, tmp_path):
    from transformers import AutoTokenizer

    official = tmp_path / "official"
    argv = [BASELINE_PYTHON, "-c", OFFICIAL_TOKENIZER, str(TOKENIZER), str(official), variant]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours_dir = tmp_path / "ours"
    ours_dir.mkdir()
    for name, data in tokenizer.tokenizer_files(TOKENIZER, variant).items():
        (ours_dir / name).write_bytes(data)
    ours_json, official_json = (json.loads((d / "tokenizer.json").read_text()) for d in (ours_dir, official))
    assert ours_json["post_processor"] == official_json["post_processor"]  # a byte-level one that adds nothing
    ours, theirs = AutoTokenizer.from_pretrained(ours_dir), AutoTokenizer.from_pretrained(official)
    texts = ["Hi there", "<|image|>If I had", "<|begin_of_text|><|image|>x", "a <|image|> b\n\n<|eot_id|>", ""]
    for text in texts:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
    assert ours(texts[0], texts[1])["input_ids"] == theirs(texts[0], texts[1])["input_ids"]
