"""Our direct Meta → GGUF conversion vs llama.cpp's ``convert_hf_to_gguf.py`` on our Hugging Face output.

For four release shapes (Llama 3.1 8B Instruct, Llama 3.2 1B with tied embeddings, Llama 3.1 70B in its MP8
layout, Llama 2 7B chat with a SentencePiece tokenizer; head_dim 8, 2 layers, each release's head counts,
KV heads, MP layout, rope settings and real tokenizer — ``compat_llamacpp.py``'s cases) and three output
types (bf16, f16, q8_0) it:

1. synthesizes the Meta checkpoint and converts it with ``llama_convert.convert`` to a Hugging Face folder;
2. runs llama.cpp's converter on that folder (``--outtype``), unchanged, in its own venv;
3. converts the Meta checkpoint straight to GGUF with ``llama_convert.convert(..., to="gguf")``, and the
   Hugging Face folder to GGUF with ``llama_convert.convert(hf, out.gguf)``;
4. reads the files with ``gguf.GGUFReader`` and compares every metadata key (type and value) and every
   tensor (name, type, shape, bytes) of ours with llama.cpp's.

Naming keys (``general.name``, ``basename``, ``finetune``, ``size_label``, ``version``, ``organization``)
of the direct file are listed, not compared: llama.cpp derives them with gguf's ``Metadata`` heuristics
from the Hugging Face folder's name, we derive them with the same heuristics from the detected model's
name. From the Hugging Face folder we derive them from its name as llama.cpp does: there they are compared.

``--capture FILE`` also writes what llama.cpp's files hold (metadata with arrays as length + sha256, and
each tensor's type and shape) as JSON: the test suite's reference table (tests/data/gguf_llamacpp.json).

    python benchmarks/compat_gguf.py --converter /path/to/llama.cpp/convert_hf_to_gguf.py \\
        --python /path/to/lcp-venv/bin/python --workdir /scratch [--capture tests/data/gguf_llamacpp.json]

Set-up of llama.cpp's converter (from the llama-cpp-python sdist, nothing compiled): COMPAT_LLAMACPP.md.
Results: ``benchmarks/results/compat_gguf.md``; exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compat_llamacpp as base  # noqa: E402  (cases, synthesis and converter runner shared with that script)

CASES = ("3.1-8b-instruct", "3.2-1b", "3.1-70b-mp8", "2-7b-chat")
OUTTYPES = ("bf16", "f16", "q8_0")
NAMING_KEYS = frozenset(
    {"general.name", "general.basename", "general.finetune", "general.size_label", "general.version",
     "general.organization"}
)  # fmt: skip


def fingerprint(value: Any) -> Any:
    """A JSON-able stand-in for a metadata value: arrays as length + sha256 of their JSON, floats exact."""
    if isinstance(value, list):
        text = json.dumps([v if not isinstance(v, float) else float(np.float32(v)).hex() for v in value])
        return {"len": len(value), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    if isinstance(value, float):
        return {"f32": float(np.float32(value)).hex()}
    return value


def read_gguf(path: Path, gguf: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata (key → [types, fingerprint]) and tensors (name → [type, shape, sha256 of bytes])."""
    reader = gguf.GGUFReader(path)
    meta = {}
    for f in reader.fields.values():
        if f.name.startswith("GGUF."):
            continue
        meta[f.name] = [[gguf.GGUFValueType(t).name for t in f.types], fingerprint(f.contents())]
    tensors = {}
    for t in reader.tensors:
        data = np.ascontiguousarray(t.data).view(np.uint8).tobytes()
        tensors[t.name] = [t.tensor_type.name, [int(s) for s in reversed(t.shape)], hashlib.sha256(data).hexdigest()]
    return meta, tensors


def compare(theirs: tuple[dict, dict], ours: tuple[dict, dict], *, naming_too: bool = False) -> tuple[list, list]:
    """(differences, naming notes)."""
    (m1, t1), (m2, t2) = theirs, ours
    diffs, naming = [], []
    for key in sorted(set(m1) | set(m2)):
        a, b = m1.get(key), m2.get(key)
        if key in NAMING_KEYS and not naming_too:
            naming.append(f"{key}: llama.cpp {a[1] if a else '—'!r}, ours {b[1] if b else '—'!r}")
        elif a != b:
            diffs.append(f"metadata {key}: llama.cpp {a}, ours {b}")
    for name in sorted(set(t1) | set(t2)):
        if name not in t1 or name not in t2:
            diffs.append(f"tensor {name} only in {'ours' if name in t2 else 'llama.cpp'}")
        elif t1[name][:2] != t2[name][:2]:
            diffs.append(f"tensor {name}: llama.cpp {t1[name][:2]}, ours {t2[name][:2]}")
        elif t1[name][2] != t2[name][2]:
            diffs.append(f"tensor {name}: bytes differ")
    return diffs, naming


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--converter", type=Path, required=True)
    parser.add_argument("--python", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--outtypes", default=",".join(OUTTYPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--capture", type=Path, help="write llama.cpp's metadata/tensor table as JSON")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compat_gguf.md")
    args = parser.parse_args(argv)
    args.converter, args.workdir = args.converter.resolve(), args.workdir.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = base.import_gguf(args.converter)
    import llama_convert
    from llama_convert.testing.synth import synthesize

    cases = [c for c in base.CASES if c.key in args.models.split(",")]
    outtypes = args.outtypes.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    spm = base.train_sentencepiece(args.workdir / "spm") if any(c.family == "llama2" for c in cases) else None
    info = base.versions(args)
    rows, captured, failed = [], {}, 0
    for case in cases:
        work = args.workdir / case.key
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        src = synthesize(work / case.folder, base.synth_spec(case, spm))
        hf = work / "hf" / case.hf_name
        hf.parent.mkdir()
        llama_convert.convert(src, hf)
        for outtype in outtypes:
            theirs_path, ours_path = work / f"llamacpp.{outtype}.gguf", work / f"ours.{outtype}.gguf"
            args.outtype = outtype
            rc, _ = base.run_converter(args, hf, theirs_path, work / f"llamacpp-{outtype}.log")
            llama_convert.convert(src, ours_path, to="gguf", outtype=outtype)
            from_hf_path = work / f"ours-from-hf.{outtype}.gguf"
            llama_convert.convert(hf, from_hf_path, outtype=outtype)
            if rc != 0:
                rows.append((case.key, outtype, False, [f"llama.cpp's converter exited {rc}"], []))
                failed += 1
                continue
            theirs = read_gguf(theirs_path, gguf)
            diffs, naming = compare(theirs, read_gguf(ours_path, gguf))
            diffs += [f"from HF: {d}" for d in compare(theirs, read_gguf(from_hf_path, gguf), naming_too=True)[0]]
            captured.setdefault(case.key, {"folder": case.folder, "preset": case.preset})[outtype] = {
                "metadata": theirs[0],
                # bytes of random weights depend on the synthesizer; rope_freqs' depend only on the config
                "tensors": {n: v if n == "rope_freqs.weight" else v[:2] for n, v in theirs[1].items()},
            }
            rows.append((case.key, outtype, not diffs, diffs, naming))
            failed += bool(diffs)
            print(case.key, outtype, "same" if not diffs else f"{len(diffs)} differences", flush=True)
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# Direct Meta → GGUF vs llama.cpp's converter on our Hugging Face output",
        "",
        "`benchmarks/compat_gguf.py` (what it does: the script's docstring). Ran with: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + ".",
        "",
        "| model | outtype | Meta → GGUF: metadata (naming excluded) | Meta → GGUF: tensors (name, type, shape, "
        "bytes) | HF folder → GGUF: metadata (all keys) and tensors | result |",
        "|---|---|---|---|---|---|",
    ]
    for key, outtype, ok, diffs, _ in rows:
        meta_d = [d for d in diffs if d.startswith("metadata")]
        tens_d = [d for d in diffs if d.startswith("tensor")]
        hf_d = [d for d in diffs if d.startswith("from HF")]
        lines.append(
            f"| {key} | {outtype} | {'equal' if not meta_d else f'{len(meta_d)} differ'} | "
            f"{'equal' if not tens_d else f'{len(tens_d)} differ'} | {'equal' if not hf_d else f'{len(hf_d)} differ'} "
            f"| {'pass' if ok else '**FAIL**'} |"
        )
    lines += ["", "## Naming keys (not compared)", ""]
    for key, outtype, _, _, naming in rows:
        if outtype == outtypes[0]:
            lines.append(f"- **{key}**: " + "; ".join(naming))
    if failed:
        lines += ["", "## Differences", ""]
        lines += [f"- **{k} {o}**: {d}" for k, o, _, diffs, _ in rows for d in diffs[:20]]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    if args.capture:
        captured["_source"] = {k: str(v) for k, v in info.items() if k != "llama-convert"}
        args.capture.write_text(json.dumps(captured, indent=1, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
