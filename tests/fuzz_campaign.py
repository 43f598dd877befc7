"""A seeded mutation campaign over every reader llama-convert owns and every route's inputs.

Each case copies one of a few tiny valid sources (a Llama 3.2 checkpoint with a tiktoken tokenizer, a Llama 2
MP2 checkpoint with a SentencePiece one, the Hugging Face folder of each, a GGUF file), damages one file in one
way (bit flips anywhere or in a header, truncation, JSON values of the wrong type / negative / huge / NaN / inf,
dropped keys, safetensors headers and GGUF header fields that lie, valid but hostile pickles) and runs one
command on it (convert to each target, inspect, verify) in a worker process whose address space is limited
(a header that claims a terabyte cannot be allocated) and whose every case has a time limit. Invariants:
exit 0 or a documented code 2–8, no traceback, one ``error:`` sentence naming the damaged file, nothing left
behind at the destination, no thread left running, and never a converted output from bytes that fail their
checksum.

    python tests/fuzz_campaign.py --seed 1 --cases 5000      # the full campaign (a few minutes per 1000 cases)

``tests/test_fuzz.py`` runs a fast slice of it in the normal suite.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import math
import os
import pickletools
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ADDRESS_SPACE = 3 << 30  # the worker's RLIMIT_AS: far below what a lying header would make us allocate
CASE_SECONDS = 20  # a case taking longer is a failure (the tiny sources convert in well under a second)
DOCUMENTED_CODES = {0, 2, 3, 4, 5, 6, 7, 8}

# --- the sources ------------------------------------------------------------------------------------


def build_sources(root: Path, sentencepiece: Path | None = None) -> dict[str, Path]:
    """The valid inputs every case starts from (built once per work folder; ``sentencepiece``: a small
    SentencePiece tokenizer.model to use instead of training one)."""
    sources = {
        "meta3": root / "src" / "Llama3.2-1B-Instruct",
        "meta2": root / "src" / "llama-2-13b",
        "hf3": root / "src" / "hf3",
        "hf2": root / "src" / "hf2",
        "gguf": root / "src" / "model.gguf",
        "snap": root / "src" / "hub" / "Llama-3.2-1B-Instruct",
        "llama4": root / "src" / "Llama-4-Scout-17B-16E",
    }
    done = root / "src" / ".complete-2"  # bump when the sources change
    if done.exists():
        return sources
    shutil.rmtree(root / "src", ignore_errors=True)
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny

    import llama_convert
    from llama_convert.testing.synth import synthesize, write_small_sentencepiece

    synthesize(sources["meta3"], tiny("llama3.2-1b", head_dim=4, tokenizer="small-tiktoken"))
    spm = sentencepiece or write_small_sentencepiece(root / "src" / "spm", vocab_size=512)
    synthesize(sources["meta2"], tiny("llama2-13b", head_dim=4, tokenizer=spm, vocab_size=512))
    shutil.rmtree(root / "src" / "spm", ignore_errors=True)
    llama_convert.convert(sources["meta3"], sources["hf3"])
    llama_convert.convert(sources["meta2"], sources["hf2"])
    llama_convert.convert(sources["meta3"], sources["gguf"])
    # A Hub snapshot: the repository's config.json and generation_config.json beside original/ (Meta's files).
    shutil.copytree(sources["meta3"], sources["snap"] / "original")
    for name in ("config.json", "generation_config.json"):
        shutil.copy(sources["hf3"] / name, sources["snap"] / name)
    # Llama 4's params.json (read by its own parser after the shared one); the shard is never opened.
    from llama_convert.testing.llama4 import SCOUT_PARAMS

    sources["llama4"].mkdir()
    (sources["llama4"] / "params.json").write_text(json.dumps(SCOUT_PARAMS))
    (sources["llama4"] / "consolidated.00.pth").write_bytes(b"")
    done.touch()
    return sources


# Which commands each source feeds: (name, argv after "<src> <dst>" for convert; None for the dst name).
ROUTES: dict[str, list[tuple[str, list[str], str | None]]] = {
    "meta": [
        ("convert", [], "out"),
        ("convert", ["--outtype", "f16"], "out.gguf"),
        ("convert", ["--to", "meta", "--mp", "1"], "meta"),
        ("inspect", [], None),
        ("verify", [], None),
    ],
    "hf": [("convert", [], "meta"), ("convert", [], "out.gguf"), ("inspect", [], None)],
    "gguf": [("inspect", [], None), ("verify", [], None)],
    "snap": [("convert", [], "out"), ("inspect", [], None)],
    "llama4": [("parse", [], None)],
}

# --- mutations --------------------------------------------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, -1, 0, 1, 3, -(2**31), 2**31, 2**40, 2**63, 2**64 + 7, 10**30, 1e308, 0.5, -2.5,
    "x", "", "Infinity", "1e400", None, True, False, [], [1, 2], {}, {"a": 1}, [[[[[]]]]], "\u0000\ud800" * 3,
]  # fmt: skip


def _flip_bits(data: bytearray, rng: random.Random, lo: int = 0, hi: int | None = None) -> str:
    hi = len(data) if hi is None else min(hi, len(data))
    if hi <= lo:
        return "nothing to flip"
    n = rng.choice([1, 1, 1, 2, 4, 16])
    where = sorted(rng.randrange(lo, hi) for _ in range(n))
    for pos in where:
        data[pos] ^= 1 << rng.randrange(8)
    return f"flipped {n} bit(s) at {where[:4]}"


def _truncate(data: bytearray, rng: random.Random) -> str:
    cut = rng.choice([0, 1, 7, 8, 9, rng.randrange(max(1, len(data))), len(data) // 2, len(data) - 1])
    cut = max(0, min(cut, len(data) - 1))
    del data[cut:]
    return f"truncated to {cut} bytes"


def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i in (0, len(value) - 1) if len(value) > 2 else range(len(value)):
            paths += _json_paths(value[i], (*prefix, i))
    return paths


def _mutate_json_value(doc: Any, rng: random.Random) -> tuple[Any, str]:
    paths = _json_paths(doc)
    # Favour the shallow paths (the keys readers look at first).
    shallow = [p for p in paths if 0 < len(p) <= 2]
    path = rng.choice(shallow if shallow and rng.random() < 0.7 else paths)
    if not path:
        new = rng.choice(HOSTILE_VALUES)
        return new, f"document replaced by {new!r}"
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    op = rng.random()
    if op < 0.2 and isinstance(parent, dict):
        del parent[key]
        return doc, f"dropped {'/'.join(map(str, path))}"
    if op < 0.25 and isinstance(parent, dict):
        parent[f"{key}_"] = parent.pop(key)
        return doc, f"renamed {'/'.join(map(str, path))}"
    old = parent[key]
    if isinstance(old, int | float) and not isinstance(old, bool) and rng.random() < 0.5:
        new = rng.choice([old * 1000, -old, old + 1, old - 1, old * 2**20, old / 3])
    else:
        new = rng.choice(HOSTILE_VALUES)
    parent[key] = new
    return doc, f"{'/'.join(map(str, path))}: {str(old)[:40]!r} -> {new!r}"


def mutate_json(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    raw = bytearray(data)
    op = rng.random()
    if op < 0.1:
        return bytes(raw), _flip_bits(raw, rng)
    if op < 0.15:
        return bytes(raw), _truncate(raw, rng)
    doc = json.loads(data)
    n = 1 if rng.random() < 0.8 else rng.randint(2, 4)
    what = []
    for _ in range(n):
        doc, desc = _mutate_json_value(doc, rng)
        what.append(desc)
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass"), "; ".join(what)


def mutate_bytes(data: bytes, rng: random.Random, header: int = 256) -> tuple[bytes, str]:
    raw = bytearray(data)
    op = rng.random()
    if op < 0.4:
        desc = _flip_bits(raw, rng)
    elif op < 0.7:
        desc = "header: " + _flip_bits(raw, rng, 0, header)
    else:
        desc = _truncate(raw, rng)
    return bytes(raw), desc


def mutate_lines(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Text files of one record a line (tiktoken ranks, checklist.chk)."""
    if rng.random() < 0.4:
        return mutate_bytes(data, rng)
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    op = rng.choice(["drop", "dup", "swap", "garble", "field", "empty", "long"])
    if op == "drop":
        del lines[i]
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "garble":
        lines[i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    elif op == "field":
        parts = lines[i].split(b" ")
        k = rng.randrange(len(parts))
        parts[k] = rng.choice([b"-1", b"99999999999999999999", b"", b"x", b"nan", b"0", b"==", b"../../etc/passwd"])
        lines[i] = b" ".join(parts)
    elif op == "empty":
        lines = [b""]
    else:
        lines[i] = lines[i] * 10000
    return b"\n".join(lines), f"line {i}: {op}"


def _zip_regions(data: bytes) -> list[tuple[int, int, str]]:
    """Byte ranges of a zip's structure: local headers, data.pkl, central directory."""
    regions = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            start = info.header_offset
            regions.append((start, start + 30 + len(info.filename) + 64, f"local header of {info.filename}"))
            if info.filename.endswith("data.pkl"):
                regions.append((start + 30, start + 30 + 64 + info.compress_size, "data.pkl"))
        cd = data.rfind(b"PK\x01\x02", 0, len(data))
        first_cd = data.find(b"PK\x01\x02")
        regions.append((first_cd, len(data), "central directory"))
        del cd
    return regions


def mutate_pth(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    op = rng.random()
    if op < 0.35:
        return _mutate_pickle(data, rng)
    raw = bytearray(data)
    if op < 0.65:
        lo, hi, what = rng.choice(_zip_regions(data))
        return bytes(raw), f"{what}: " + _flip_bits(raw, rng, lo, hi)
    if op < 0.8:
        return bytes(raw), _flip_bits(raw, rng)
    return bytes(raw), _truncate(raw, rng)


def _ops(data: bytes) -> list[tuple[Any, Any, bytes]]:
    ops = list(pickletools.genops(data))
    out = []
    for k, (op, arg, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else len(data)
        out.append((op, arg, data[pos:end]))
    return out


def _int_op(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    body = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(body)]) + body


def _string_op(text: str) -> bytes:
    body = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(body)) + body


_GLOBALS = [
    b"collections\nOrderedDict\n", b"torch._utils\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_parameter\n",
    b"torch._utils\n_rebuild_tensor_v3\n", b"torch\nBFloat16Storage\n", b"torch\nFloatStorage\n",
    b"torch\nBoolStorage\n", b"torch\nbfloat16\n", b"_codecs\nencode\n", b"_io\nBytesIO\n",
    b"torch.storage\nUntypedStorage\n", b"builtins\neval\n", b"torch\nfloat8_e4m3fn\n",
]  # fmt: skip


def _hostile_pickle(rng: random.Random) -> tuple[bytes, str]:
    """Valid pickles that are hostile on their own: deep nesting, huge claimed sizes, wrong arguments."""
    depth = rng.choice([1000, 100_000, 1_000_000])
    kind = rng.choice(["lists", "dicts", "tuple-key", "huge-numel", "huge-shape", "negative-shape", "many-keys"])
    proto = b"\x80\x02"
    if kind == "lists":
        return proto + b"]" * depth + b"a" * (depth - 1) + b".", f"list nested {depth} deep"
    if kind == "dicts":
        body = b"}" + (b"X\x01\x00\x00\x00k}" * depth) + b"s" * depth
        return proto + body + b".", f"dict nested {depth} deep"
    if kind == "tuple-key":
        return proto + b"}" + b"]" * depth + b"a" * (depth - 1) + b"N" + b"s" + b".", "unhashable key"
    if kind == "many-keys":
        n = rng.choice([10_000, 200_000])
        return proto + b"}(" + b"".join(_string_op(f"t{i}") + b"N" for i in range(n)) + b"u.", f"{n} keys"
    sizes = {
        "huge-numel": ([4, 4], [4, 1], 2**62),
        "huge-shape": ([2**40, 2**40], [2**40, 1], 16),
        "negative-shape": ([-4, 4], [4, 1], 16),
    }[kind]
    shape, stride, numel = sizes
    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + b"(" + _string_op("storage") + b"ctorch\nBFloat16Storage\n" + _string_op("0") + _string_op("cpu")
        + _int_op(numel) + b"tQ"
        + _int_op(0)
        + b"(" + b"".join(_int_op(s) for s in shape) + b"t"
        + b"(" + b"".join(_int_op(s) for s in stride) + b"t"
        + b"\x89ccollections\nOrderedDict\n)R"
        + b"tR"
    )  # fmt: skip
    return proto + b"}" + _string_op("tok_embeddings.weight") + tensor + b"s.", kind


def _mutate_pickle(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Rewrite data.pkl (the zip stays valid): an integer, a string or a global changed, or a hostile pickle."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    name, pkl = next((i.filename, b) for i, b in members if i.filename.endswith("data.pkl"))
    if rng.random() < 0.3:
        new, desc = _hostile_pickle(rng)
    else:
        ops = _ops(pkl)
        chosen = rng.randrange(len(ops))
        candidates = [k for k, (op, arg, _) in enumerate(ops) if isinstance(arg, int | str) and op.name != "PROTO"]
        kind = rng.random()
        ints = [k for k in candidates if isinstance(ops[k][1], int) and "PUT" not in ops[k][0].name]
        strs = [k for k in candidates if isinstance(ops[k][1], str) and ops[k][0].name != "GLOBAL"]
        globs = [k for k, (op, _, _) in enumerate(ops) if op.name == "GLOBAL"]
        if kind < 0.5 and ints:
            chosen = rng.choice(ints)
            value = rng.choice([-1, 0, 1, 2**31, 2**40, 2**62, -(2**40), ops[chosen][1] * 2 + 1, 10**40])
            ops[chosen] = (None, None, _int_op(value))
            desc = f"pickle int op {chosen} -> {value}"
        elif kind < 0.75 and strs:
            chosen = rng.choice(strs)
            value = rng.choice(["", "x", "storage", "99", "../x", "layers.0.attention.wq.weight", "\ud800"])
            ops[chosen] = (None, None, _string_op(value))
            desc = f"pickle string op {chosen} -> {value!r}"
        elif kind < 0.9 and globs:
            chosen = rng.choice(globs)
            value = rng.choice(_GLOBALS)
            ops[chosen] = (None, None, b"c" + value)
            desc = f"pickle global op {chosen} -> {value!r}"
        else:
            del ops[chosen]
            desc = f"pickle op {chosen} dropped"
        new = b"".join(raw for _, _, raw in ops)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info, content in members:
            zf.writestr(info, new if info.filename == name else content)
    return out.getvalue(), desc


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        return mutate_bytes(data, rng, header=8 + int.from_bytes(data[:8], "little"))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    op = rng.choice(["offsets", "offsets", "dtype", "shape", "shape", "entry", "length", "json"])
    if op == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[b, a], [a, b + 2], [a - 2, b], [-8, b], [a, 2**62], [0, len(body) + 8], [a, a], [a, b, b], [str(a), b]]
        )
        desc = f"{name}: data_offsets {[a, b]} -> {entry['data_offsets']}"
    elif op == "dtype":
        entry["dtype"] = rng.choice(["F32", "F16", "I64", "BOOL", "F8_E4M3", "Q4", "", None, 7])
        desc = f"{name}: dtype -> {entry['dtype']!r}"
    elif op == "shape":
        shape = list(entry["shape"])
        entry["shape"] = rng.choice(
            [[*shape, 1], shape[::-1], [-s for s in shape], [2**40] * len(shape), [], [0] * len(shape), [1.5], "x"]
        )
        desc = f"{name}: shape {shape} -> {entry['shape']}"
    elif op == "entry":
        header[name] = rng.choice([None, [], 3, {"dtype": "BF16"}, "x"])
        desc = f"{name}: entry -> {header[name]!r}"
    elif op == "json":
        header, desc = _mutate_json_value(header, rng)
    else:
        new_n = rng.choice([0, 1, n - 1, n + 1, 2**40, 2**63, len(data)])
        return new_n.to_bytes(8, "little") + data[8:], f"header length {n} -> {new_n}"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body, desc


def _gguf_fields(data: bytes) -> list[tuple[int, int, str]]:
    """(offset, width, what) of every integer field of a GGUF header: counts, lengths, types, dims, offsets."""
    fields: list[tuple[int, int, str]] = [(4, 4, "version"), (8, 8, "tensor count"), (16, 8, "kv count")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(what: str) -> None:
        nonlocal pos
        fields.append((pos, 8, f"{what} length"))
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(kind: int, what: str) -> None:
        nonlocal pos
        if kind == 8:
            string(what)
        elif kind == 9:
            fields.append((pos, 4, f"{what} array type"))
            item, count = struct.unpack_from("<IQ", data, pos)
            fields.append((pos + 4, 8, f"{what} array count"))
            pos += 12
            for i in range(count):
                value(item, f"{what}[{i}]" if i < 3 else what)
        else:
            fields.append((pos, sizes[kind], what))
            pos += sizes[kind]

    for _ in range(n_kv):
        key_at = pos
        string("key")
        key = data[key_at + 8 : pos].decode()
        fields.append((pos, 4, f"{key} type"))
        kind = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        value(kind, key)
    for _ in range(n_tensors):
        name_at = pos
        string("tensor name")
        name = data[name_at + 8 : pos].decode()
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields.append((pos, 4, f"{name} n_dims"))
        pos += 4
        for d in range(n_dims):
            fields.append((pos, 8, f"{name} dim {d}"))
            pos += 8
        fields.append((pos, 4, f"{name} type"))
        fields.append((pos + 4, 8, f"{name} offset"))
        pos += 12
    return fields


def mutate_gguf(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    op = rng.random()
    if op < 0.3:
        fields = _gguf_fields(data)
        return mutate_bytes(data, rng, header=fields[-1][0] + 12)
    raw = bytearray(data)
    offset, width, what = rng.choice(_gguf_fields(data))
    old = int.from_bytes(raw[offset : offset + width], "little")
    limit = 1 << (8 * width)
    new = rng.choice([0, 1, old + 1, old - 1, old * 2, old + 4096, limit - 1, limit // 2, 0x7FFFFFFF % limit]) % limit
    raw[offset : offset + width] = new.to_bytes(width, "little")
    return bytes(raw), f"{what}: {old} -> {new}"


# What each source's files are, and how to damage them: file name → mutation.
MUTATORS: dict[str, dict[str, Callable[[bytes, random.Random], tuple[bytes, str]]]] = {
    "meta3": {
        "consolidated.00.pth": mutate_pth,
        "params.json": mutate_json,
        "tokenizer.model": mutate_lines,
        "checklist.chk": mutate_lines,
    },
    "meta2": {
        "consolidated.00.pth": mutate_pth,
        "consolidated.01.pth": mutate_pth,
        "params.json": mutate_json,
        "tokenizer.model": mutate_bytes,
        "checklist.chk": mutate_lines,
    },
    "hf3": {
        "config.json": mutate_json,
        "model.safetensors": mutate_safetensors,
        "tokenizer.json": mutate_json,
        "tokenizer_config.json": mutate_json,
        "generation_config.json": mutate_json,
    },
    "hf2": {
        "config.json": mutate_json,
        "model.safetensors": mutate_safetensors,
        "tokenizer.json": mutate_json,
        "tokenizer_config.json": mutate_json,
    },
    "gguf": {"model.gguf": mutate_gguf},
    "snap": {"config.json": mutate_json, "generation_config.json": mutate_json},
    "llama4": {"params.json": mutate_json},
}
KIND_OF = {  # the reader each damaged file exercises: counted per kind in the summary
    "consolidated.00.pth": "torch zip + pickle",
    "consolidated.01.pth": "torch zip + pickle",
    "params.json": "params.json",
    "tokenizer.model": "tokenizer.model",
    "checklist.chk": "checklist.chk",
    "config.json": "config.json",
    "model.safetensors": "safetensors",
    "tokenizer.json": "tokenizer.json",
    "tokenizer_config.json": "tokenizer_config / generation_config",
    "generation_config.json": "tokenizer_config / generation_config",
    "model.gguf": "gguf",
    "snap/config.json": "Hub snapshot config.json / generation_config.json",
    "snap/generation_config.json": "Hub snapshot config.json / generation_config.json",
    "llama4/params.json": "Llama 4 params.json",
}


# --- one case ---------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    source: str
    file: str
    kind: str
    mutation: str = ""
    argv: list[str] = field(default_factory=list)
    code: int | None = None
    seconds: float = 0.0
    problem: str | None = None
    message: str = ""


class _Timeout(BaseException):
    pass


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def plan_case(seed: int, index: int, sources: dict[str, Path]) -> tuple[Case, Path, bytes, bool, bool]:
    """The case ``index`` of campaign ``seed``: which file, its damaged bytes, the command, checksum facts."""
    rng = random.Random(f"{seed}:{index}")
    source = rng.choice(["meta3", "meta3", "meta2", "hf3", "hf3", "hf2", "gguf", "snap", "llama4"])
    file = rng.choice(list(MUTATORS[source]))
    src = sources[source]
    original = (src.parent if source == "gguf" else src).joinpath(file).read_bytes()
    damaged, mutation = MUTATORS[source][file](original, rng)
    rehash = source.startswith("meta") and file != "checklist.chk" and rng.random() < 0.5
    family = {"meta3": "meta", "meta2": "meta", "hf3": "hf", "hf2": "hf"}.get(source, source)
    command, extra, dst = rng.choice(ROUTES[family])
    verify = command not in ("inspect", "parse") and source in ("meta3", "meta2", "snap") and rng.random() < 0.6
    case = Case(index, source, file, KIND_OF.get(f"{source}/{file}", KIND_OF[file]), mutation)
    case.argv = [command, extra, dst, verify, rehash]  # resolved to paths by run_case
    return case, src, damaged, rehash, original != damaged


def _prepare(case_dir: Path, source: str, src: Path, file: str, damaged: bytes, rehash: bool) -> Path:
    if source == "gguf":
        case_dir.mkdir(parents=True)
        (case_dir / file).write_bytes(damaged)
        return case_dir / file
    copy = case_dir / src.name
    shutil.copytree(src, copy, copy_function=os.link)  # hard links: the sources are only ever read
    (copy / file).unlink()
    (copy / file).write_bytes(damaged)
    if rehash and (copy / "checklist.chk").exists():
        lines = (copy / "checklist.chk").read_text().splitlines()
        fixed = [f"{_md5(damaged)}  {file}" if line.endswith(f"  {file}") else line for line in lines]
        (copy / "checklist.chk").unlink()
        (copy / "checklist.chk").write_text("\n".join(fixed) + "\n")
    return copy


def _parse_llama4(folder: Path) -> int:
    """What ``convert`` does with a Llama 4 params.json before it opens a shard, as the CLI reports it."""
    from llama_convert.cli import _exit_code
    from llama_convert.errors import LlamaConvertError
    from llama_convert.families.llama4.params import is_llama4_params, parse_llama4_params
    from llama_convert.formats.meta.folder import find_meta_folder

    try:
        meta = find_meta_folder(folder)
        if is_llama4_params(meta.raw_params):
            p = parse_llama4_params(meta.raw_params, meta.params_path)
            _ = (p.head_dim, p.moe_hidden_dim, p.dense_hidden_dim)
            _ = [(p.is_moe_layer(i), p.is_nope_layer(i)) for i in range(p.n_layers)]
            if p.vision is not None:
                _ = (p.vision.mlp_dim, p.vision.adapter_in_dim, p.vision.n_positions)
    except LlamaConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    return 0


def run_case(seed: int, index: int, sources: dict[str, Path], work: Path) -> Case:
    from llama_convert.cli import main

    case, src, damaged, rehash, changed = plan_case(seed, index, sources)
    command, extra, dst_name, verify, rehash = case.argv
    case_dir = work / f"case-{index}"
    shutil.rmtree(case_dir, ignore_errors=True)
    target = _prepare(case_dir, case.source, src, case.file, damaged, rehash)
    out_dir = case_dir / "dst"
    out_dir.mkdir()
    dst = out_dir / dst_name if dst_name else None
    argv = [command, str(target), *([str(dst)] if dst else []), *(["-q"] if command != "inspect" else []), *extra]
    if command == "convert" and not verify:
        argv.append("--no-verify")
    case.argv = argv
    err, out = io.StringIO(), io.StringIO()
    threads = set(threading.enumerate())
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                case.code = _parse_llama4(target) if command == "parse" else main(argv)
            finally:
                gc.collect()  # what a failed run left unclosed is finalized now, inside this case
    except _Timeout:
        case.problem = f"took longer than {CASE_SECONDS} s"
    except SystemExit as exc:
        case.code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:
        case.problem = f"raised {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    case.seconds = time.perf_counter() - started
    message = err.getvalue().strip()
    case.message = message[:600]
    if case.problem is None:
        case.problem = _check(case, message, dst, out_dir, verify, rehash, changed)
    if case.problem is None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and [t for t in set(threading.enumerate()) - threads if t.is_alive()]:
            time.sleep(0.01)
        left = [t.name for t in set(threading.enumerate()) - threads if t.is_alive()]
        if left:
            case.problem = f"threads left running: {left}"
    shutil.rmtree(case_dir, ignore_errors=True)
    return case


def _check(case: Case, message: str, dst: Path | None, out_dir: Path, verify: bool, rehash: bool, changed: bool):
    if case.code not in DOCUMENTED_CODES:
        return f"exit code {case.code} is not a documented one"
    if "Traceback" in message:
        return "a traceback was printed"
    if case.code != 0:
        if not message.startswith("error: ") or "\n" in message:
            return "the error is not one 'error:' line"
        checklist = case.file == "checklist.chk" and ("checklist" in message or "md5" in message)
        if case.file not in message and not checklist:
            return f"the error does not name {case.file}"
    litter = [p.name for p in out_dir.iterdir() if dst is None or p != dst]
    if litter:
        return f"left behind in the destination's folder: {litter}"
    if dst is not None and case.code == 0 and not dst.exists():
        return "exit 0 without an output"
    if dst is not None and case.code != 0 and dst.exists():
        return "an output was left after a failure"
    listed = case.source.startswith("meta") and case.file != "checklist.chk"
    if case.code == 0 and changed and listed and not rehash and (verify or case.argv[0] == "verify"):
        return "succeeded on bytes that fail their checksum"
    return None


# --- the worker and the campaign ---------------------------------------------------------------------


def _worker(seed: int, start: int, stop: int, work: Path) -> None:
    """Run cases start..stop in this process, one JSON line each on the real stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    def alarm(signum, frame):
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    sources = build_sources(work)
    import llama_convert.cli  # noqa: F401  (imported before the first case's clock starts)

    for index in range(start, stop):
        out.write(json.dumps({"start": index}) + "\n")
        case = run_case(seed, index, sources, work / "cases")
        out.write(json.dumps(asdict(case)) + "\n")


def campaign(
    seed: int,
    cases: int,
    work: Path,
    start: int = 0,
    say: Callable[[str], None] = print,
    sentencepiece: Path | None = None,
) -> dict:
    """Run ``cases`` cases of campaign ``seed`` in worker processes; return counts and failures."""
    work.mkdir(parents=True, exist_ok=True)
    build_sources(work, sentencepiece)
    results: list[dict] = []
    index, stop = start, start + cases
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("LLAMA_CONVERT_DEBUG", None)
    began = time.monotonic()
    while index < stop:
        cmd = [sys.executable, __file__, "--worker", "--seed", str(seed), "--start", str(index), "--stop", str(stop)]
        proc = subprocess.Popen([*cmd, "--work", str(work)], stdout=subprocess.PIPE, text=True, env=env)
        current = None
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
                continue
            results.append(record)
            index = record["index"] + 1
            current = None
            if len(results) % 500 == 0:
                failed = sum(1 for r in results if r.get("problem"))
                say(f"{len(results)} cases in {time.monotonic() - began:.0f} s, {failed} failures")
            if record["problem"]:
                say(f"case {record['index']}: {record['problem']} — {record['kind']}: {record['mutation']}")
        proc.wait()
        if current is not None:  # the worker died inside a case (killed by the kernel, a crash in C code)
            results.append({"index": current, "kind": "?", "problem": f"worker died (status {proc.returncode})"})
            say(f"case {current}: worker died with status {proc.returncode}")
            index = current + 1
        elif index < stop and proc.returncode != 0:
            raise RuntimeError(f"the fuzz worker failed before its first case (status {proc.returncode})")
    kinds = Counter(r.get("kind", "?") for r in results)
    codes = Counter(str(r.get("code")) for r in results)
    by_kind: dict[str, Counter] = {}
    for r in results:
        by_kind.setdefault(r.get("kind", "?"), Counter())[str(r.get("code"))] += 1
    failures = [r for r in results if r.get("problem")]
    slowest = max(results, key=lambda r: r.get("seconds", 0), default={})
    return {
        "seed": seed,
        "cases": len(results),
        "seconds": round(time.monotonic() - began, 1),
        "per_kind": dict(sorted(kinds.items())),
        "exit_codes": dict(sorted(codes.items())),
        "exit_codes_per_kind": {k: dict(sorted(c.items())) for k, c in sorted(by_kind.items())},
        "failures": failures,
        "slowest_case_seconds": round(slowest.get("seconds", 0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.seed, args.start, args.stop, args.work)
        return 0
    import tempfile

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llama-convert-fuzz-")))
        summary = campaign(args.seed, args.cases, work, start=args.start, say=lambda s: print(s, file=sys.stderr))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"seed {summary['seed']}: {summary['cases']} cases in {summary['seconds']} s, "
            f"{len(summary['failures'])} failures; slowest case {summary['slowest_case_seconds']} s"
        )
        for kind, n in summary["per_kind"].items():
            codes = ", ".join(f"{c}: {k}" for c, k in summary["exit_codes_per_kind"][kind].items())
            print(f"  {n:6d}  {kind:<40} exit codes {codes}")
        print("  exit codes: " + ", ".join(f"{c}: {n}" for c, n in summary["exit_codes"].items()))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
