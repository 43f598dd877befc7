"""Llama 4 → GGUF (text ``<stem>.gguf`` and vision projector ``mmproj-<stem>.gguf``) against llama.cpp.

The table (tests/data/gguf_llama4_llamacpp.json) was captured by ``benchmarks/compat_llama4_gguf.py --capture``
from llama.cpp's ``convert_hf_to_gguf.py`` (with and without ``--mmproj``) run on our Hugging Face output of
two fixed-seed checkpoints in Meta's layout (``llama4_fixtures.GGUF_CASES``: Scout-like, every layer MoE, MP1;
Maverick-like, dense and MoE layers interleaved, MP2; 3 vision layers). Here the same checkpoints are
regenerated from the same seeds and converted by us, from Meta's shards and from our Hugging Face folder:
every tensor (name, type, shape, sha256 of its bytes) and every metadata key (types and value; the naming keys
only from the Hugging Face folder, whose name llama.cpp derives them from) must be llama.cpp's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import llama4_fixtures as fx
import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

import llama_convert
from llama_convert.errors import UnsupportedError
from llama_convert.formats.gguf.reader import read_header, verify_gguf

TABLE = json.loads((Path(__file__).parent / "data" / "gguf_llama4_llamacpp.json").read_text())
NAMING_KEYS = {"general.name", "general.basename", "general.finetune", "general.size_label"}


def _fingerprint(value: Any) -> Any:
    """As benchmarks/compat_gguf.py stores a value: arrays as length + sha256 of their JSON, floats exact."""
    if isinstance(value, list):
        text = json.dumps([v if not isinstance(v, float) else float(np.float32(v)).hex() for v in value])
        return {"len": len(value), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    if isinstance(value, float):
        return {"f32": float(np.float32(value)).hex()}
    return value


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata and tensors as the table stores them. The header is parsed by llama-convert's reader (gguf's
    GGUFReader takes minutes on a 200k-token vocabulary); ``test_read_gguf_agrees_with_gguf_reader`` checks
    that it reads what GGUFReader reads."""
    fields, infos = read_header(path)
    meta = {name: [types, _fingerprint(value)] for name, (types, value) in fields.items()}
    tensors = {}
    with open(path, "rb") as f:
        for t in infos:
            f.seek(t.offset)
            tensors[t.name] = [t.qtype.name, list(t.shape), hashlib.sha256(f.read(t.nbytes)).hexdigest()]
    return meta, tensors


def read_gguf_with_gguf_py(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    reader = GGUFReader(path)
    meta = {
        f.name: [[GGUFValueType(t).name for t in f.types], _fingerprint(f.contents())]
        for f in reader.fields.values()
        if not f.name.startswith("GGUF.")
    }
    tensors = {
        t.name: [
            t.tensor_type.name,
            [int(s) for s in reversed(t.shape)],
            hashlib.sha256(np.ascontiguousarray(t.data).view(np.uint8).tobytes()).hexdigest(),
        ]
        for t in reader.tensors
    }
    return meta, tensors


def assert_same(path: Path, expected: dict[str, Any], *, naming: bool) -> None:
    meta, tensors = read_gguf(path)
    want = expected["metadata"]
    skip = set() if naming else NAMING_KEYS
    assert {k: v for k, v in meta.items() if k not in skip} == {k: v for k, v in want.items() if k not in skip}
    assert tensors == expected["tensors"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(Meta checkpoint, our Hugging Face folder of it) per case, named as when the table was captured."""
    root = tmp_path_factory.mktemp("l4gguf")
    fx.init_model_parallel(root)
    fx.cpu_threads()
    out = {}
    for case in fx.GGUF_CASES:
        src = fx.make_gguf_case(case, root / case)
        hf = root / case / "hf" / (fx.GGUF_CASES[case][3] + "-hf")
        llama_convert.convert(src, hf)
        out[case] = (src, hf)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(fx.GGUF_CASES))
@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_meta_to_gguf_equals_llamacpp(tmp_path, sources, case, outtype):
    src, _ = sources[case]
    out = tmp_path / "model.gguf"
    result = llama_convert.convert(src, out, to="gguf", outtype=outtype)
    assert result.files == ("model.gguf", "mmproj-model.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmproj-model.gguf", "model.gguf"]
    assert_same(out, TABLE[case][outtype]["text"], naming=False)
    assert_same(tmp_path / "mmproj-model.gguf", TABLE[case][outtype]["mmproj"], naming=False)
    assert verify_gguf(tmp_path / "mmproj-model.gguf").metadata["clip.vision.block_count"] == 3
    assert verify_gguf(out).arch == "llama4"


@pytest.mark.slow
def test_read_gguf_agrees_with_gguf_reader(tmp_path, sources):
    """The fast header parser used above reads what gguf-py's GGUFReader reads (on the projector file, which
    GGUFReader reads quickly; on a 200k-token vocabulary it needs minutes)."""
    src, _ = sources["scout"]
    out = tmp_path / "model.gguf"
    llama_convert.convert(src, out, to="gguf", outtype="q8_0")
    mmproj = tmp_path / "mmproj-model.gguf"
    assert read_gguf(mmproj) == read_gguf_with_gguf_py(mmproj)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(fx.GGUF_CASES))
@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_hf_to_gguf_equals_llamacpp_naming_included(tmp_path, sources, case, outtype):
    _, hf = sources[case]
    out = tmp_path / "model.gguf"
    llama_convert.convert(hf, out, outtype=outtype)
    assert_same(out, TABLE[case][outtype]["text"], naming=True)
    assert_same(tmp_path / "mmproj-model.gguf", TABLE[case][outtype]["mmproj"], naming=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(fx.GGUF_CASES))
def test_f16_equals_llamacpp(tmp_path, sources, case):
    src, hf = sources[case]
    for label, source in (("meta", src), ("hf", hf)):
        llama_convert.convert(source, tmp_path / f"{label}.gguf", to="gguf", outtype="f16")
        assert_same(tmp_path / f"{label}.gguf", TABLE[case]["f16"]["text"], naming=label == "hf")
        mmproj = TABLE[case]["f16"]["mmproj"]  # its patch embedding is F16 here, F32 otherwise
        assert_same(tmp_path / f"mmproj-{label}.gguf", mmproj, naming=label == "hf")


@pytest.mark.slow
def test_no_mmproj_and_plan(tmp_path, sources):
    src, hf = sources["maverick"]
    planned = llama_convert.plan(src, tmp_path / "m.gguf", to="gguf", outtype="q8_0")
    assert [c.prefix for c in planned.companions] == ["mmproj-"]
    assert planned.companions[0].arch == "clip" and "mmproj-" in "\n".join(planned.lines())
    assert planned.to_json()["companions"][0]["arch"] == "clip"
    exps = {t.entry.name: t for t in planned.tensors if "_exps" in t.entry.name}
    assert len(exps["blk.1.ffn_gate_exps.weight"].recipes) == 6  # one recipe per expert, stacked
    assert "blk.0.ffn_gate_exps.weight" not in exps  # Maverick's even layers are dense
    assert {t.entry.name: t.entry.qtype.name for t in planned.tensors}["blk.1.ffn_gate_inp.weight"] == "F32"
    for source in (src, hf):
        out = tmp_path / f"{source.name}.gguf"
        result = llama_convert.convert(source, out, outtype="bf16", mmproj=False, to="gguf")
        assert result.files == (out.name,)
        assert not out.with_name("mmproj-" + out.name).exists()
        assert_same(out, TABLE["maverick"]["bf16"]["text"], naming=source == hf)


@pytest.mark.slow
def test_dense_llama4_is_refused(tmp_path, sources):
    """A Llama 4 without experts (Llama Guard 4's shape) does not load in llama.cpp: refused, nothing written."""
    _, hf = sources["scout"]
    dense = tmp_path / "dense"
    shutil.copytree(hf, dense)
    config = json.loads((dense / "config.json").read_text())
    config["text_config"].update(num_local_experts=0, moe_layers=[])
    (dense / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match=r"dense Llama 4 .*llama\.cpp's llama4 architecture does not load"):
        llama_convert.convert(dense, tmp_path / "d.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


def _checkpoints_of(name: str, convert, monkeypatch) -> int:
    """How many checkpoints of the file ``name`` ``convert()`` records (its journal's own count)."""
    from llama_convert import resume

    seen: list[str] = []
    original = resume.Journal.checkpoint

    def counted(self, key, files, position):
        seen.append(key)
        original(self, key, files, position)

    with monkeypatch.context() as patch:
        patch.setattr(resume.Journal, "checkpoint", counted)
        convert()
    return seen.count(name)


@pytest.mark.slow
def test_a_run_killed_in_the_mmproj_file_continues_to_the_same_bytes(tmp_path, sources, monkeypatch):
    import subprocess
    import sys

    from test_resume_routes import _killed, _same

    src, _ = sources["scout"]
    reference = tmp_path / "reference" / "out.gguf"
    convert = lambda: llama_convert.convert(src, reference, outtype="q8_0")  # noqa: E731
    main_file = _checkpoints_of("out.gguf", convert, monkeypatch)
    dst = tmp_path / "resumed" / "out.gguf"
    # the main file's checkpoints, its record as complete, then the mmproj file's first checkpoint
    _killed(["convert", str(src), str(dst), "-q", "--outtype", "q8_0"], after=main_file + 2)
    assert (dst.parent / ".out.gguf.llama-convert-partial").is_dir() and not dst.exists()
    rerun = subprocess.run(
        [sys.executable, "-m", "llama_convert", "convert", str(src), str(dst), "--outtype", "q8_0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed an interrupted run" in rerun.stderr
    _same(reference, dst)
    _same(reference.with_name("mmproj-out.gguf"), dst.with_name("mmproj-out.gguf"))


@pytest.mark.slow
def test_a_run_killed_inside_the_stacked_experts_continues_inside_them(tmp_path, sources):
    """A checkpoint inside ``ffn_*_exps`` (each expert a recipe of its own): the rerun leaves out the experts
    already in the file whole and gives the same bytes."""
    import signal

    from interrupted import run_interrupted
    from test_resume_routes import _last_checkpoint, _same

    src, _ = sources["scout"]
    reference = tmp_path / "reference" / "out.gguf"
    plan = llama_convert.plan(src, reference, mmproj=False)
    llama_convert.convert(src, reference, mmproj=False)
    names = [t.entry.name for t in plan.tensors]
    small = {"llama_convert.execute": {"BLOCK_BYTES": 256}, "llama_convert.routes.gguf_plan": {"CHECKPOINT_BYTES": 512}}
    for attempt, after in enumerate(range(10, 400, 10)):
        dst = tmp_path / f"try{attempt}" / "out.gguf"
        proc = run_interrupted(["convert", str(src), str(dst), "-q", "--no-mmproj"], after=after, settings=small)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        index, in_tensor = _last_checkpoint(dst.parent / ".out.gguf.llama-convert-partial")
        each = plan.tensors[index].entry.nbytes // max(1, len(plan.tensors[index].recipes))
        if "_exps" in names[index] and in_tensor >= each:
            break
    else:
        pytest.fail("no checkpoint fell inside an experts tensor")
    rerun = run_interrupted(["convert", str(src), str(dst), "--no-mmproj"], after=10**9)
    assert rerun.returncode == 0, rerun.stderr
    assert "written part way" in rerun.stderr
    _same(reference, dst)
