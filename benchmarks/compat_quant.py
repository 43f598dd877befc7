"""Our quantized GGUF (Meta → Q4_K_M, …) vs llama.cpp's own ``llama-quantize``, and the mixture tables.

llama.cpp is not a dependency of llama-convert. This script builds ``llama-quantize`` with CMake from the
llama-cpp-python 0.3.36 sdist (llama.cpp 0c1e570; ``GGML_NATIVE=OFF``, Release: no FMA, so ggml-quants.c
rounds as our numpy kernels do) unless ``--quantize`` names a built one, and uses that sdist's
``convert_hf_to_gguf.py`` + ``gguf-py`` in a venv of its own (``--python``; set-up: COMPAT_LLAMACPP.md).

``e2e`` — for Llama 3.1 8B-shaped (width 256: ffn rows of 896 are not whole super-blocks, so they fall back),
Llama 3.2 1B-shaped (tied embeddings, ffn 1024), Llama 3.1 70B-shaped (80 layers, MP8, width 256: the 70B
rule) and Llama 2 7B chat-shaped (SentencePiece, ffn 704) checkpoints, each with its release's real
tokenizer, and Llama 4 Scout- and Maverick-shaped ones (``4-scout``: 16 experts in each of 8 layers, MP1;
``4-maverick``: 128 experts in every other one of 4 layers, MP2; Meta's reference model, width 256, experts of
416 rows so that ffn_down falls back, Meta's Llama 4 tokenizer; text model only, no projector), and every file
type:

1. synthesize the Meta checkpoint and convert it to a Hugging Face folder with llama-convert;
2. llama.cpp: ``convert_hf_to_gguf.py --outtype bf16`` of that folder, then ``llama-quantize IN OUT TYPE 2``;
3. ours: ``llama_convert.convert(meta, out.gguf, outtype=TYPE)`` (and, for ``--hf-types``, the HF folder → GGUF);
4. compare every tensor (name, order, type, shape, bytes) and every metadata key (order, type, value) except
   the naming keys of the Meta route (llama.cpp derives them from the HF folder's name, we from the model's).

``tables`` — llama-quantize's per-tensor types for small GGUF files written with gguf-py whose tensors are
named as llama.cpp names them (dense 32 layers, 80 layers with GQA, tied embeddings, narrow rows, Llama 4-like
MoE with 16 and 128 experts and shared experts, an 8-expert llama): ``tests/data/quants/mixture_<case>.json``,
which ``tests/test_quant_mixture.py`` checks ``mixture.choose_types`` against.

    python benchmarks/compat_quant.py tables [--quantize BIN] [--workdir DIR]
    python benchmarks/compat_quant.py e2e --converter .../convert_hf_to_gguf.py --python VENV/bin/python \\
        [--quantize BIN] [--workdir DIR] [--models 3.1-8b-instruct,...] [--types q4_k_m,...]

Results: ``benchmarks/results/compat_quant.md``; exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TYPES = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k")
TYPES += ("q4_0", "q4_1", "q5_0", "q5_1")
TABLE_TYPES = (*TYPES, "q8_0")  # our q8_0 is the converter's (llama-quantize's differs in key and tensor order)
TABLES = HERE.parent / "tests" / "data" / "quants"
NAMING_KEYS = frozenset(
    {"general.name", "general.basename", "general.finetune", "general.size_label", "general.version",
     "general.organization"}
)  # fmt: skip
E2E = {"3.1-8b-instruct": 8, "3.2-1b": 8, "3.1-70b-mp8": 4, "2-7b-chat": 8}  # case → head_dim
E2E_LAYERS = {"3.1-70b-mp8": 80}
# Llama 4 cases: release params (llama_convert.testing.llama4) shrunk → (kind, MP, seed, layers, experts, folder).
LLAMA4_E2E = {
    "4-scout": ("scout", 1, 40, 8, 16, "Llama-4-Scout-17B-16E-Instruct"),
    "4-maverick": ("maverick", 2, 41, 4, 128, "Llama-4-Maverick-17B-128E-Instruct"),
}


# --- building llama-quantize -------------------------------------------------------------------------


def build_quantize(workdir: Path, source: Path | None) -> Path:
    """``llama-quantize`` built from the sdist's llama.cpp (fetched with ``pip download`` unless ``source``)."""
    binary = workdir / "build" / "bin" / "llama-quantize"
    if binary.exists():
        return binary
    if source is None:
        dist = workdir / "dist"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "llama-cpp-python==0.3.36", "-d", str(dist)], check=True)
        (archive,) = dist.glob("llama_cpp_python-*.tar.gz")
        subprocess.run(["tar", "xzf", str(archive), "-C", str(workdir)], check=True)
        (source,) = workdir.glob("llama_cpp_python-*/vendor/llama.cpp")
    flags = ["-DGGML_NATIVE=OFF", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_OPENMP=OFF"]
    flags += [f"-DLLAMA_{x}=OFF" for x in ("CURL", "BUILD_TESTS", "BUILD_EXAMPLES", "BUILD_SERVER")]
    subprocess.run(["cmake", "-S", str(source), "-B", str(workdir / "build"), *flags], check=True)
    subprocess.run(["cmake", "--build", str(workdir / "build"), "--target", "llama-quantize", "-j2"], check=True)
    return binary


def quantize(binary: Path, src: Path, dst: Path, outtype: str, log: Path) -> float:
    """Run llama-quantize with 2 threads; seconds taken."""
    started = time.perf_counter()
    with open(log, "wb") as f:
        subprocess.run([str(binary), str(src), str(dst), outtype.upper(), "2"], stdout=f, stderr=f, check=True)
    return time.perf_counter() - started


# --- reading files -----------------------------------------------------------------------------------


def read_gguf(path: Path) -> tuple[list[tuple[str, Any]], list[tuple[str, str, list[int], str]]]:
    """Metadata as [(key, (types, value))] in file order, tensors as [(name, type, shape, sha256)] in order.
    (llama-convert's header parser: gguf's GGUFReader takes minutes on a Llama 3 vocabulary here.)"""
    import hashlib

    from llama_convert.formats.gguf.reader import read_header

    fields, infos = read_header(path)
    meta = []
    for key, (types, value) in fields.items():
        if isinstance(value, list):
            value = hashlib.sha256(json.dumps(value).encode()).hexdigest()
        meta.append((key, (types, value)))
    tensors = []
    with open(path, "rb") as f:
        for t in infos:
            f.seek(t.offset)
            digest = hashlib.sha256(f.read(t.nbytes)).hexdigest()
            tensors.append((t.name, t.qtype.name, list(t.shape), digest))
    return meta, tensors


def compare(theirs: Path, ours: Path, *, naming_too: bool) -> list[str]:
    """Differences between two GGUF files (empty when they agree)."""
    (m1, t1), (m2, t2) = read_gguf(theirs), read_gguf(ours)
    if not naming_too:
        m1 = [kv for kv in m1 if kv[0] not in NAMING_KEYS]
        m2 = [kv for kv in m2 if kv[0] not in NAMING_KEYS]
    diffs = []
    if [k for k, _ in m1] != [k for k, _ in m2]:
        diffs.append(f"metadata keys/order: llama.cpp {[k for k, _ in m1]}, ours {[k for k, _ in m2]}")
    d1, d2 = dict(m1), dict(m2)
    diffs += [f"metadata {k}: llama.cpp {d1[k]}, ours {d2[k]}" for k in d1 if k in d2 and d1[k] != d2[k]]
    if [t[0] for t in t1] != [t[0] for t in t2]:
        diffs.append("tensor names/order differ")
    by2 = {t[0]: t for t in t2}
    for name, qtype, shape, digest in t1:
        other = by2.get(name)
        if other is None:
            continue
        if (qtype, shape) != (other[1], other[2]):
            diffs.append(f"tensor {name}: llama.cpp {qtype} {shape}, ours {other[1]} {other[2]}")
        elif digest != other[3]:
            diffs.append(f"tensor {name} ({qtype}): bytes differ")
    return diffs


# --- tables: llama-quantize's mixture on synthetic GGUF files ----------------------------------------


def _layer(i: int, d: int, ff: int, q: int, kv: int, moe: int = 0, shared: bool = False) -> list[tuple]:
    p = f"blk.{i}."
    out = [(p + "attn_norm.weight", (d,)), (p + "ffn_norm.weight", (d,))]
    out += [(p + "attn_q.weight", (q, d)), (p + "attn_k.weight", (kv, d)), (p + "attn_v.weight", (kv, d))]
    out += [(p + "attn_output.weight", (d, q))]
    if moe:
        out += [(p + "ffn_gate_inp.weight", (moe, d))]
        out += [(p + f"ffn_{k}_exps.weight", (moe, ff, d)) for k in ("gate", "up")]
        out += [(p + "ffn_down_exps.weight", (moe, d, ff))]
        if shared:
            out += [(p + f"ffn_{k}_shexp.weight", (ff, d)) for k in ("gate", "up")]
            out += [(p + "ffn_down_shexp.weight", (d, ff))]
    else:
        out += [(p + "ffn_gate.weight", (ff, d)), (p + "ffn_up.weight", (ff, d)), (p + "ffn_down.weight", (d, ff))]
    return out


def table_cases() -> dict[str, dict[str, Any]]:
    """Synthetic models: facts and [(name, numpy-order shape)]. Rows are few; row widths are what counts."""
    cases = {}

    def dense(key, layers, heads, kv_heads, d, ff, *, tied=False, arch="llama", vocab=16, moe=None):
        tensors = [("token_embd.weight", (vocab, d)), ("output_norm.weight", (d,))]
        tensors += [] if tied else [("output.weight", (vocab, d))]
        hd = 8
        for i in range(layers):
            m = moe(i) if moe else (0, False)
            tensors += _layer(i, d, ff, heads * hd, kv_heads * hd, *m)
        n_expert = max((moe(i)[0] for i in range(layers)), default=0) if moe else 0
        facts = {"n_layer": layers, "n_head": heads, "n_head_kv": kv_heads, "n_expert": n_expert, "arch": arch}
        cases[key] = {"facts": facts, "tensors": tensors}

    dense("dense32", 32, 32, 8, 256, 768)
    dense("llama70b", 80, 64, 8, 256, 512)
    dense("tied16", 16, 32, 8, 256, 1024, tied=True)
    dense("narrow", 8, 12, 4, 96, 200)  # rows of 96 (not whole 256s) and 200 (not even whole 32s)
    dense("narrow_tied", 4, 12, 4, 96, 288, tied=True)
    dense("moe16", 8, 40, 8, 256, 256, arch="llama4", moe=lambda i: (16, True))  # Scout-like
    dense("moe128", 8, 40, 8, 256, 256, arch="llama4", moe=lambda i: (128, True) if i % 2 else (0, False))
    dense("moe8", 8, 32, 8, 256, 512, moe=lambda i: (8, False))  # Mixtral-like llama: the 8-expert rules
    return cases


def write_case_gguf(path: Path, case: dict[str, Any]) -> list[tuple[str, list[int], str]]:
    """A GGUF file llama-quantize accepts: the architecture's required keys, F32 1-D tensors, F16 others."""
    from gguf import GGUFWriter

    facts, rng = case["facts"], np.random.default_rng(0)
    arch = facts["arch"]
    w = GGUFWriter(path, arch)
    d = next(s[1] for n, s in case["tensors"] if n == "token_embd.weight")
    w.add_block_count(facts["n_layer"])
    w.add_context_length(4096)
    w.add_embedding_length(d)
    w.add_feed_forward_length(256)
    w.add_head_count(facts["n_head"])
    w.add_head_count_kv(facts["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_key_length(8)  # head_dim 8 (q rows = heads × 8), whatever the width
    w.add_value_length(8)
    w.add_file_type(1)
    if facts["n_expert"]:
        w.add_expert_count(facts["n_expert"])
        w.add_expert_used_count(1)
    if arch == "llama4":
        w.add_expert_feed_forward_length(256)
        w.add_interleave_moe_layer_step(1)
    listed = []
    for name, shape in case["tensors"]:
        one_d = len(shape) == 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight"))
        data = rng.standard_normal(shape).astype(np.float32 if one_d else np.float16)
        w.add_tensor(name, data)
        listed.append((name, list(shape), "F32" if one_d else "F16"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return listed


def make_tables(args: argparse.Namespace) -> int:
    from llama_convert.formats.gguf.reader import read_header

    binary = args.quantize or build_quantize(args.workdir, args.source)
    for key, case in table_cases().items():
        src = args.workdir / f"table-{key}.gguf"
        listed = write_case_gguf(src, case)
        types = {}
        for outtype in args.types.split(","):
            out = args.workdir / f"table-{key}.{outtype}.gguf"
            quantize(binary, src, out, outtype, args.workdir / f"table-{key}.{outtype}.log")
            got = {t.name: t.qtype.name for t in read_header(out)[1]}
            types[outtype] = [got[name] for name, _, _ in listed]
            out.unlink()
        src.unlink()
        data = {"made_by": "benchmarks/compat_quant.py tables (llama-quantize, llama.cpp 0c1e570)", **case}
        data["tensors"] = [list(t) for t in listed]
        data["types"] = {k: " ".join(v) for k, v in types.items()}
        (args.out_tables / f"mixture_{key}.json").write_text(json.dumps(data, indent=0) + "\n")
        print(key, "written", flush=True)
    return 0


# --- e2e: our files vs llama-quantize's ----------------------------------------------------------------


def e2e(args: argparse.Namespace) -> int:
    import compat_llamacpp as base

    import llama_convert
    from llama_convert.testing.synth import synthesize

    binary = args.quantize or build_quantize(args.workdir, args.source)
    types, hf_types = args.types.split(","), args.hf_types.split(",") if args.hf_types else []
    models = args.models.split(",")
    cases = [c for c in base.CASES if c.key in models] + [k for k in LLAMA4_E2E if k in models]
    llama2 = any(getattr(c, "family", "") == "llama2" for c in cases)
    spm = base.train_sentencepiece(args.workdir / "spm") if llama2 else None
    rows, failed = [], 0
    for case in cases:
        key = case if isinstance(case, str) else case.key
        work = args.workdir / key
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if isinstance(case, str):
            src, hf_name = synthesize_llama4(case, work)
        else:
            base.HEAD_DIM, base.N_LAYERS = E2E[case.key], E2E_LAYERS.get(case.key, 2)
            src, hf_name = synthesize(work / case.folder, base.synth_spec(case, spm)), case.hf_name
        hf = work / "hf" / hf_name
        hf.parent.mkdir()
        llama_convert.convert(src, hf)
        bf16 = work / "llamacpp.bf16.gguf"
        args.outtype = "bf16"
        rc, _ = base.run_converter(args, hf, bf16, work / "convert.log")
        if rc:
            rows.append((key, "bf16", [f"llama.cpp's converter exited {rc}"], 0.0, 0.0))
            failed += 1
            continue
        for outtype in types:
            theirs, ours = work / f"llamacpp.{outtype}.gguf", work / f"ours.{outtype}.gguf"
            c_seconds = quantize(binary, bf16, theirs, outtype, work / f"quantize.{outtype}.log")
            started = time.perf_counter()
            llama_convert.convert(src, ours, to="gguf", outtype=outtype.upper(), mmproj=False)
            our_seconds = time.perf_counter() - started
            diffs = compare(theirs, ours, naming_too=False)
            if outtype in hf_types:
                from_hf = work / f"ours-from-hf.{outtype}.gguf"
                llama_convert.convert(hf, from_hf, outtype=outtype, mmproj=False)
                diffs += [f"from HF: {d}" for d in compare(theirs, from_hf, naming_too=True)]
                from_hf.unlink()
            rows.append((key, outtype, diffs, c_seconds, our_seconds))
            failed += bool(diffs)
            print(key, outtype, "same" if not diffs else f"{len(diffs)} differences", flush=True)
            theirs.unlink()
            ours.unlink()
        shutil.rmtree(work, ignore_errors=True)
    report = markdown(rows, base.versions(args), hf_types)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 1 if failed else 0


def synthesize_llama4(case: str, work: Path) -> tuple[Path, str]:
    """A Llama 4 checkpoint in Meta's layout (Meta's reference model, ``tests/llama4_fixtures.py``) of the
    release's params shrunk: width 256 with 8 heads over 2 KV heads (rows of 256: K-quants apply; GQA 4), routed
    and shared experts of 416 rows (``multiple_of`` 32: ffn_down rows fall back), the release's expert count
    and interleaving, Meta's real Llama 4 tokenizer (202,048 tokens) and a 3-layer vision tower (the fewest
    llama.cpp's converter names). Returns the folder and the Hugging Face folder's name."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import llama4_fixtures as fx

    from llama_convert.testing.llama4 import MAVERICK_PARAMS, SCOUT_PARAMS

    kind, mp, seed, layers, experts, folder = LLAMA4_E2E[case]
    release = SCOUT_PARAMS if kind == "scout" else MAVERICK_PARAMS
    params = {**release, "dim": 256, "n_layers": layers, "n_heads": 8, "n_kv_heads": 2, "multiple_of": 32}
    params["moe_args"] = {**release["moe_args"], "num_experts": experts}
    params["vision_args"] = {**fx.gguf_params(kind)["vision_args"]}
    fx.init_model_parallel(work.parent)
    fx.cpu_threads()
    return fx.make_checkpoint(work / folder, kind, mp=mp, seed=seed, params=params), folder + "-hf"


def markdown(rows: list[tuple], info: dict[str, str], hf_types: list[str]) -> str:
    lines = [
        "# Quantized GGUF: llama-convert (Meta → GGUF) vs llama-quantize of llama.cpp's bf16 GGUF",
        "",
        "`benchmarks/compat_quant.py e2e` (what it compares: the script's docstring). Ran with: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + f". HF folder → GGUF also compared (all keys) for: {', '.join(hf_types) or 'none'}.",
        "Seconds are indicative (a shared 2-core machine; tiny models, where our start-up dominates).",
        "",
        "| model | type | tensors (name, order, type, shape, bytes) and metadata (naming keys excluded) | "
        "llama-quantize s | ours s |",
        "|---|---|---|---|---|",
    ]
    for key, outtype, diffs, c_s, our_s in rows:
        verdict = "identical" if not diffs else f"**{len(diffs)} differences**"
        lines.append(f"| {key} | {outtype.upper()} | {verdict} | {c_s:.1f} | {our_s:.1f} |")
    bad = [(k, o, d) for k, o, diffs, _, _ in rows for d in diffs[:10]]
    if bad:
        lines += ["", "## Differences", ""] + [f"- **{k} {o}**: {d}" for k, o, d in bad]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("tables", "e2e", "build"))
    parser.add_argument("--quantize", type=Path, help="a built llama-quantize (else built into --workdir)")
    parser.add_argument("--source", type=Path, help="the sdist's vendor/llama.cpp (else fetched)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "compat_quant")
    parser.add_argument("--converter", type=Path)
    parser.add_argument("--python", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(E2E))
    parser.add_argument("--types", help=f"default: {','.join(TYPES)} (tables: also q8_0)")
    parser.add_argument("--hf-types", default="q4_k_m")
    parser.add_argument("--out-tables", type=Path, default=TABLES)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compat_quant.md")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "build":
        print(build_quantize(args.workdir, args.source))
        return 0
    args.types = args.types or ",".join(TABLE_TYPES if args.command == "tables" else TYPES)
    if args.command == "tables":
        return make_tables(args)
    if args.converter is None or args.python is None:
        parser.error("e2e needs --converter and --python (llama.cpp's convert_hf_to_gguf.py and its venv)")
    args.converter = args.converter.resolve()
    return e2e(args)


if __name__ == "__main__":
    sys.exit(main())
