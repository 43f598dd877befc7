"""One small test per failure the mutation campaign (tests/fuzz_campaign.py) found: each damaged input now
ends with one ``error:`` sentence naming the file, a documented exit code, and nothing left behind."""

from __future__ import annotations

import gc
import json
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny

import llama_convert
from llama_convert.cli import main
from llama_convert.testing.synth import synthesize


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-regressions")
    meta = synthesize(root / "Llama3.2-1B-Instruct", tiny("llama3.2-1b", head_dim=4, tokenizer="small-tiktoken"))
    hf = root / "hf"
    llama_convert.convert(meta, hf)
    return {"meta": meta, "hf": hf}


@pytest.fixture
def meta(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["meta"], tmp_path / "in" / pristine["meta"].name))


@pytest.fixture
def hf(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["hf"], tmp_path / "in" / "hf"))


def refused(capsys, argv: list, code: int, *fragments: str) -> str:
    """Run the CLI; expect exit ``code`` with one error line holding ``fragments``, and no litter beside DST."""
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    if argv[0] == "convert":
        dst = Path(argv[2])
        assert not dst.exists() and not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]
    return err


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))  # NaN and Infinity are written as Python's json writes them


# --- params.json --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("ffn_dim_multiplier", float("inf"), "expected a finite number"),  # was OverflowError
        ("ffn_dim_multiplier", float("nan"), "expected a finite number"),  # was ValueError
        ("norm_eps", float("nan"), "expected a finite number"),  # was converted, NaN in config.json
        ("norm_eps", -1e-5, "expected a positive number"),
        ("multiple_of", 0, "expected a positive number"),  # was ZeroDivisionError
        ("rope_theta", float("-inf"), "expected a finite number"),
    ],
)
def test_params_non_finite_or_non_positive(capsys, meta, tmp_path, key, value, fragment):
    edit_json(meta / "params.json", lambda d: d.update({key: value}))
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "params.json", repr(key), fragment)


def test_params_null_takes_the_default(capsys, meta, tmp_path):
    edit_json(meta / "params.json", lambda d: d.update(multiple_of=None, n_kv_heads=None))  # was TypeError
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "params.json implies")


def test_params_implausible_size_is_refused_at_once(capsys, meta, tmp_path):
    edit_json(meta / "params.json", lambda d: d.update(n_layers=2**21))  # was minutes and 10 GiB
    started = time.perf_counter()
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "params.json", "'n_layers' is 2097152, implausibly")
    assert time.perf_counter() - started < 5


def test_params_number_of_too_many_digits(capsys, meta, tmp_path):
    (meta / "params.json").write_text('{"dim": ' + "1" * 5000 + "}")  # json raises ValueError, not JSONDecodeError
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "params.json is not valid JSON")


def test_params_with_fewer_layers_than_the_shards(capsys, meta, tmp_path):
    edit_json(meta / "params.json", lambda d: d.update(n_layers=1))  # was "not a Llama text model" (exit 4)
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "layers.1.", "beyond the 1 layers params.json")


# --- side jobs and staging ------------------------------------------------------------------------------


def test_failing_checklist_on_meta_to_meta_leaves_no_open_archive(capsys, meta, tmp_path, monkeypatch):
    """The background verification failed before the first tensor: the shard archives were left open and
    zipfile's finalizer later wrote into a closed file ("Exception ignored in ZipFile.__del__")."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    lines = (meta / "checklist.chk").read_text().splitlines()
    (meta / "checklist.chk").write_text("\n".join([*lines[:1], lines[1][:20]]) + "\n")
    refused(capsys, ["convert", meta, tmp_path / "meta", "-q", "--to", "meta", "--mp", "1"], 3, "checklist.chk line 2")
    gc.collect()
    assert not unraisable


def test_side_job_failure_leaves_no_staging_folder(capsys, meta, tmp_path):
    """The tokenizer (a side job) failed while verification was still recording into the staging journal."""
    lines = (meta / "tokenizer.model").read_bytes().split(b"\n")
    (meta / "tokenizer.model").write_bytes(b"\n".join([*lines[:230], lines[229], *lines[230:]]))
    refused(capsys, ["convert", meta, tmp_path / "out", "-q", "--no-verify"], 3, "tokenizer.model line 231")
    rehashed = [ln for ln in (meta / "checklist.chk").read_text().splitlines() if not ln.endswith("tokenizer.model")]
    (meta / "checklist.chk").write_text("\n".join(rehashed) + "\n")
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "tokenizer.model line 231")


# --- checklist.chk --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda line: line * 1000,  # a name longer than the filesystem allows: was exit 8 (OSError)
        lambda line: line[:34] + "../../etc/passwd",  # a file outside the folder
    ],
)
def test_checklist_line_that_names_no_file_of_the_folder(capsys, meta, damage):
    lines = (meta / "checklist.chk").read_text().splitlines()
    (meta / "checklist.chk").write_text("\n".join([damage(lines[0]), *lines[1:]]) + "\n")
    refused(capsys, ["verify", meta, "-q"], 3, "checklist.chk line 1 is not a '<md5>  <name>' checksum line")


def test_checklist_name_damaged_says_the_checklist_lists_it(capsys, meta):
    text = (meta / "checklist.chk").read_text().replace("consolidated.00.pth", "consolidatef.00.pth")
    (meta / "checklist.chk").write_text(text)
    refused(capsys, ["verify", meta, "-q"], 5, "consolidatef.00.pth is missing (the checklist lists it)")


# --- config.json, generation_config.json ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.update(rope_scaling=float("nan")), "'rope_scaling' is nan"),  # was TypeError, not iterable
        (lambda d: d["rope_scaling"].update(factor="x"), "'rope_scaling.factor' is 'x'"),
        (lambda d: d.update(architectures=-(2**31)), "'architectures' is -2147483648"),  # inspect: was TypeError
        (lambda d: d.update(num_hidden_layers=[2]), "'num_hidden_layers' is [2]"),
        (lambda d: d.update(rms_norm_eps=float("inf")), "'rms_norm_eps' is inf"),
        (lambda d: d.update(vocab_size=2**40), "'vocab_size' is 1099511627776"),
        (lambda d: d.update(eos_token_id=2**63), "'eos_token_id'"),
    ],
)
@pytest.mark.parametrize("command", ["gguf", "meta", "inspect"])
def test_config_value_of_the_wrong_type(capsys, hf, tmp_path, change, fragment, command):
    edit_json(hf / "config.json", change)
    argv = ["inspect", hf] if command == "inspect" else ["convert", hf, tmp_path / f"out.{command}", "-q"]
    if command == "meta":
        argv[2] = tmp_path / "meta"
    refused(capsys, argv, 3, "config.json", fragment)


def test_config_without_a_key_gguf_records(capsys, hf, tmp_path):
    edit_json(hf / "config.json", lambda d: d.pop("max_position_embeddings"))  # was KeyError
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "config.json lacks max_position_embeddings")


def test_config_without_heads_is_not_a_tensor_without_a_place(capsys, hf, tmp_path):
    edit_json(hf / "config.json", lambda d: d.pop("num_attention_heads"))  # was "no place for in GGUF" (exit 4)
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "config.json has num_attention_heads = None")


def test_generation_config_that_is_not_an_object(capsys, hf, tmp_path):
    (hf / "generation_config.json").write_text("NaN")  # was AttributeError: 'float' object has no attribute 'get'
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "generation_config.json does not hold")


# --- tokenizer.json, tokenizer_config.json ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["model"]["vocab"].update({"x": []}), "model.vocab['x']"),  # was unhashable type: 'list'
        (lambda d: d["model"]["vocab"].update({"x": "1e400"}), "model.vocab['x']"),  # was ValueError
        (lambda d: d.update(post_processor=2**64 + 7), "'post_processor'"),  # was AttributeError
        (lambda d: d.update(added_tokens=float("-inf")), "'added_tokens'"),  # was TypeError
        (lambda d: d["added_tokens"].__setitem__(0, 0), "'added_tokens[0]'"),  # was AttributeError
        (lambda d: d["model"].update(merges=0.5), "'model.merges'"),
        (lambda d: d["model"].pop("vocab"), "'model.vocab' is None"),  # was KeyError
    ],
)
@pytest.mark.parametrize("target", ["out.gguf", "meta"])
def test_tokenizer_json_of_the_wrong_shape(capsys, hf, tmp_path, change, fragment, target):
    edit_json(hf / "tokenizer.json", change)
    refused(capsys, ["convert", hf, tmp_path / target, "-q"], 3, "tokenizer.json", fragment)


def test_tokenizer_json_without_added_tokens(capsys, hf, tmp_path):
    edit_json(hf / "tokenizer.json", lambda d: d.update(added_tokens=None))  # bpe_tokens: was TypeError
    code = main(["convert", str(hf), str(tmp_path / "out.gguf"), "-q"])
    assert code in (0, 3) and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["added_tokens_decoder"].update({"529": 2**31}), "added_tokens_decoder['529']"),
        (lambda d: d.update(add_bos_token=float("nan")), "'add_bos_token' is nan"),
        (lambda d: d.update(eos_token=[1]), "'eos_token' is [1]"),
        (lambda d: d.update(chat_template={"a": 1}), "'chat_template'"),
    ],
)
def test_tokenizer_config_of_the_wrong_shape(capsys, hf, tmp_path, change, fragment):
    edit_json(hf / "tokenizer_config.json", change)
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "tokenizer_config.json", fragment)


# --- safetensors headers --------------------------------------------------------------------------------


def _edit_header(path: Path, change) -> None:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        # A shape of negative sizes whose product is the byte range's: was read with a negative row count.
        (lambda h: h["model.norm.weight"].update(shape=[-1, -h["model.norm.weight"]["shape"][0]]), "bad header"),
        (lambda h: h["model.norm.weight"].update(data_offsets=h["model.norm.weight"]["data_offsets"][::-1]), "ends"),
        (lambda h: h["model.norm.weight"].update(dtype=["BF16"]), "bad header entry"),  # was unhashable
        (lambda h: h.update(__metadata__=[1]), "__metadata__"),  # was AttributeError
        (lambda h: h["model.norm.weight"].update(shape=[1.5]), "bad header entry"),
    ],
)
def test_safetensors_header_that_lies(capsys, hf, tmp_path, change, fragment):
    _edit_header(hf / "model.safetensors", change)
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "model.safetensors", fragment)


def test_safetensors_tensor_shape_disagreeing_with_config_names_the_file(capsys, hf, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_header(hf / "model.safetensors", lambda h: h[name].update(shape=h[name]["shape"][::-1]))
    refused(capsys, ["convert", hf, tmp_path / "meta", "-q"], 3, "model.safetensors: " + name, "config.json implies")


def test_safetensors_foreign_tensor_names_the_file(capsys, hf, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    _edit_header(hf / "model.safetensors", lambda h: h.update({name.replace("k_proj", "k_prob"): h[name]}))
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 4, "model.safetensors holds", "k_prob")


def test_safetensors_renamed_tensor_is_missing_from_the_weights(capsys, hf, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    _edit_header(hf / "model.safetensors", lambda h: h.update({name.replace("k_proj", "k_prob"): h.pop(name)}))
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, f"lacks {name}", "(weights: model.safetensors)")


# --- tokenizer.model --------------------------------------------------------------------------------------


def test_sentencepiece_bos_piece_that_breaks_the_template(capsys, tmp_path, sentencepiece_model):
    """A bit flip turned "<s>" into "<s:" (a valid protobuf): tokenizers' template parser raised ValueError."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sentencepiece_model.read_bytes())
    proto.pieces[proto.trainer_spec.bos_id].piece = "<s:"
    src = synthesize(
        tmp_path / "llama-2-7b", tiny("llama2-7b", head_dim=4, tokenizer=sentencepiece_model, vocab_size=512)
    )
    (src / "tokenizer.model").write_bytes(proto.SerializeToString())
    refused(capsys, ["inspect", src], 3, "tokenizer.model has a bos piece '<s:'")


# --- torch zip + pickle ---------------------------------------------------------------------------------


def _rewrite_pickle(shard: Path, change) -> None:
    """Replace the shard's data.pkl by ``change(data.pkl)``; the archive stays valid and checklist.chk agrees."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(shard) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(shard, "w") as zf:
        for info, content in members:
            zf.writestr(info, change(content) if info.filename.endswith("data.pkl") else content)
    checklist = shard.parent / "checklist.chk"
    md5 = hashlib.md5(shard.read_bytes()).hexdigest()
    lines = [f"{md5}  {shard.name}" if ln.endswith(shard.name) else ln for ln in checklist.read_text().splitlines()]
    checklist.write_text("\n".join(lines) + "\n")


def test_pickle_without_the_embedding_is_named_not_a_key_error(capsys, meta, tmp_path):
    """The tying probe read tok_embeddings.weight before the layout check said it was missing (KeyError)."""
    key = b"tok_embeddings.weight"
    _rewrite_pickle(meta / "consolidated.00.pth", lambda pkl: pkl.replace(key, b"tok_embeddings.weigh2"))
    refused(capsys, ["inspect", meta], 3, "consolidated.00.pth has no tok_embeddings.weight")
    refused(capsys, ["convert", meta, tmp_path / "out", "-q"], 3, "consolidated.00.pth has no tok_embeddings.weight")


def _tensor_pickle(shape: tuple, stride: tuple, offset: int, numel: int = 16) -> bytes:
    """torch.save's pickle of ``{"w": tensor}`` over bfloat16 storage "0", written opcode by opcode."""

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def s(text: str) -> bytes:
        return b"X" + struct.pack("<I", len(text)) + text.encode()

    storage = b"(" + s("storage") + b"ctorch\nBFloat16Storage\n" + s("0") + s("cpu") + i(numel) + b"tQ"
    sizes = b"(" + b"".join(map(i, shape)) + b"t(" + b"".join(map(i, stride)) + b"t"
    args = b"(" + storage + i(offset) + sizes + b"\x89ccollections\nOrderedDict\n)RtR"
    return b"\x80\x02}" + s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"s."


@pytest.mark.parametrize(
    ("shape", "stride", "offset"), [((-4, 4), (4, 1), 0), ((4, 4), (-4, 1), 12), ((2, 2), (2,), 0)]
)
def test_pickle_with_negative_sizes_or_strides(tmp_path, shape, stride, offset):
    """A negative size with a small enough span passed the bounds check (numpy then raised ValueError)."""
    import zipfile

    from llama_convert.errors import InputError
    from llama_convert.formats.meta.torch_zip import TorchCheckpoint

    def shard(name: str, pkl: bytes) -> Path:
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/data/0", bytes(32))
        return tmp_path / name

    assert TorchCheckpoint(shard("good.pth", _tensor_pickle((4, 4), (4, 1), 0))).tensors["w"].shape == (4, 4)
    with pytest.raises(InputError, match="tensor w has a negative size, stride or offset"):
        TorchCheckpoint(shard("bad.pth", _tensor_pickle(shape, stride, offset)))


def test_config_vocabulary_smaller_than_the_tokenizer_names_config_json(capsys, hf, tmp_path):
    edit_json(hf / "config.json", lambda d: d.update(vocab_size=1))
    refused(capsys, ["convert", hf, tmp_path / "meta", "-q"], 3, "tokenizer.json has", "vocab_size 1 (config.json)")


# --- a Hub snapshot's own files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "change", "fragment"),
    [
        ("generation_config.json", lambda d: d.update(eos_token_id=[[[[-2.5]]]]), "'eos_token_id'"),  # unhashable
        ("config.json", lambda d: d.update(rope_scaling=[]), "'rope_scaling' is []"),
    ],
)
def test_hub_snapshot_file_of_the_wrong_shape(capsys, pristine, tmp_path, name, change, fragment):
    snapshot = tmp_path / "Llama-3.2-1B-Instruct"
    shutil.copytree(pristine["meta"], snapshot / "original")
    for file in ("config.json", "generation_config.json"):
        shutil.copy(pristine["hf"] / file, snapshot / file)
    edit_json(snapshot / name, change)
    refused(capsys, ["convert", snapshot, tmp_path / "out", "-q"], 3, name, fragment)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["pre_tokenizer"].update(pretokenizers=-1),  # was TypeError: 'int' object is not iterable
        lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(pattern="x"),  # was AttributeError
    ],
)
def test_tokenizer_json_pre_tokenizer_of_the_wrong_shape(capsys, hf, tmp_path, change):
    edit_json(hf / "tokenizer.json", change)
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 4, "tokenizer.json does not pre-tokenize as Llama 3")


def test_safetensors_shapes_that_disagree_with_config_are_refused_before_gguf(capsys, hf, tmp_path):
    """HF → GGUF wrote a file with the transposed tensor (llama.cpp cannot load it) and exited 0."""
    name = "model.layers.0.self_attn.k_proj.weight"
    _edit_header(hf / "model.safetensors", lambda h: h[name].update(shape=h[name]["shape"][::-1]))
    refused(
        capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "model.safetensors: " + name, "config.json implies"
    )


def test_config_with_fewer_layers_than_the_weights_is_refused_before_gguf(capsys, hf, tmp_path):
    edit_json(hf / "config.json", lambda d: d.update(num_hidden_layers=1))
    refused(capsys, ["convert", hf, tmp_path / "out.gguf", "-q"], 3, "model.layers.1.", "beyond the layers config.json")


def test_hub_snapshot_generation_config_without_eos_names_the_file(capsys, pristine, tmp_path):
    snapshot = tmp_path / "Llama-3.2-1B-Instruct"
    shutil.copytree(pristine["meta"], snapshot / "original")
    for file in ("config.json", "generation_config.json"):
        shutil.copy(pristine["hf"] / file, snapshot / file)
    edit_json(snapshot / "generation_config.json", lambda d: d.update(eos_token_id=[]))
    refused(capsys, ["convert", snapshot, tmp_path / "out", "-q"], 3, "generation_config.json (eos ids [])")


# --- Llama 4 params.json --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["moe_args"].update(capacity_factor=-1.0), "expected a positive number"),  # ZeroDivisionError
        (lambda d: d.update(ffn_exp=float("nan")), "expected a finite number"),  # ValueError from int(nan)
    ],
)
def test_llama4_params_that_break_the_expert_width(tmp_path, change, fragment):
    from llama_convert.errors import InputError
    from llama_convert.families.llama4.params import parse_llama4_params
    from llama_convert.testing.llama4 import SCOUT_PARAMS

    params = json.loads(json.dumps(SCOUT_PARAMS))
    change(params)
    with pytest.raises(InputError, match=fragment):
        parse_llama4_params(params, tmp_path / "params.json").moe_hidden_dim  # noqa: B018


@pytest.mark.parametrize("target", ["out.gguf", "meta"])
def test_config_intermediate_size_that_disagrees_names_the_weights(capsys, hf, tmp_path, target):
    """Was refused as an implausible ffn_dim_multiplier of a params.json the folder does not have."""
    edit_json(hf / "config.json", lambda d: d.update(intermediate_size=d["intermediate_size"] * 1000))
    refused(capsys, ["convert", hf, tmp_path / target, "-q"], 3, "model.safetensors: ", "config.json implies")


def test_heads_that_the_shards_do_not_divide_name_params_json(capsys, tmp_path, sentencepiece_model):
    spec = tiny("llama2-13b", head_dim=4, tokenizer=sentencepiece_model, vocab_size=512)  # MP2
    src = synthesize(tmp_path / "llama-2-13b", spec)
    edit_json(src / "params.json", lambda d: d.update(n_heads=1))
    refused(capsys, ["convert", src, tmp_path / "out", "-q", "--no-verify"], 4, "1 KV heads of params.json")


def test_hub_snapshot_eos_list_with_a_null(capsys, pristine, tmp_path):
    snapshot = tmp_path / "Llama-3.2-1B-Instruct"
    shutil.copytree(pristine["meta"], snapshot / "original")
    for file in ("config.json", "generation_config.json"):
        shutil.copy(pristine["hf"] / file, snapshot / file)
    edit_json(snapshot / "generation_config.json", lambda d: d.update(eos_token_id=[128001, None]))  # TypeError
    refused(capsys, ["convert", snapshot, tmp_path / "out", "-q"], 3, "generation_config.json", "'eos_token_id'")
