"""Multi-buffer MD5 (``llama_convert/_md5lanes.c`` + ``md5lanes.py``) gives hashlib's digests for any number of
streams of any lengths fed in any pieces, its saved states continue in a new hasher, every build of the C code
(AVX2, generic vectors, plain C) agrees, and checksum verification in lanes finds what the hashlib path finds."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from llama_convert import md5lanes, verify
from llama_convert.errors import InputError
from llama_convert.verify import verify_checksums

pytestmark = pytest.mark.skipif(not md5lanes.available(), reason="llama_convert._md5lanes is not built")

EDGES = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 4096, 4097]


def _isas() -> list[str]:
    if not md5lanes.available():
        return ["none"]
    return ["avx2", "vector"] if md5lanes._c.isa() == "avx2" else [md5lanes._c.isa()]


@pytest.fixture(params=_isas())
def isa(request):
    before = md5lanes._c.isa()
    md5lanes._c.isa(request.param)
    yield request.param
    md5lanes._c.isa(before)


def _feed(hasher: md5lanes.Md5Lanes, data: list[bytes], rng: random.Random, *, save_every: int = 0) -> None:
    """Feed every lane its data in random pieces (some lanes get nothing in a round), optionally moving each lane
    to a saved state every few rounds."""
    pos = [0] * len(data)
    rounds = 0
    while any(p < len(d) for p, d in zip(pos, data, strict=True)):
        chunks: list[bytes | None] = []
        for j, d in enumerate(data):
            k = rng.choice([0, 1, 3, 63, 64, 65, 128, 500, 4096])
            chunks.append(d[pos[j] : pos[j] + k] if pos[j] < len(d) and rng.random() < 0.9 else None)
            pos[j] += len(chunks[-1] or b"")
        hasher.update(chunks)
        rounds += 1
        if save_every and rounds % save_every == 0:
            for j in range(hasher.n):
                hasher.reset(j, hasher.state(j))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9, 16, 17])
def test_lanes_equal_hashlib(n, isa):
    rng = random.Random(n)
    lengths = [rng.choice([*EDGES, rng.randrange(30_000)]) for _ in range(n)]
    data = [rng.randbytes(length) for length in lengths]
    hasher = md5lanes.Md5Lanes(n)
    _feed(hasher, data, rng)
    assert [hasher.hexdigest(j) for j in range(n)] == [hashlib.md5(d).hexdigest() for d in data]
    assert [hasher.position(j) for j in range(n)] == lengths


def test_every_edge_length_in_one_update(isa):
    data = [os.urandom(n) for n in EDGES]
    hasher = md5lanes.Md5Lanes(len(data))
    hasher.update(data)
    assert [hasher.hexdigest(j) for j in range(len(data))] == [hashlib.md5(d).hexdigest() for d in data]
    hasher.update([b"more"] * len(data))  # a digest does not end the stream
    assert hasher.hexdigest(3) == hashlib.md5(data[3] + b"more").hexdigest()


def test_very_unequal_lengths(isa):
    data = [os.urandom(n) for n in (3_000_000, 0, 64, 1_000_001, 5)]
    hasher = md5lanes.Md5Lanes(len(data))
    hasher.update(data)
    assert [hasher.hexdigest(j) for j in range(len(data))] == [hashlib.md5(d).hexdigest() for d in data]


def test_saved_states_continue_in_another_hasher(isa):
    """A state saved mid-stream (mid-block too) in every lane, restored in a new hasher with lanes in another
    order, gives the digest of the whole stream."""
    rng = random.Random(5)
    data = [rng.randbytes(rng.randrange(1, 20_000)) for _ in range(8)]
    cut = [rng.randrange(len(d)) for d in data]
    first = md5lanes.Md5Lanes(8)
    first.update([d[:c] for d, c in zip(data, cut, strict=True)])
    states = [first.state(j) for j in range(8)]
    assert all(md5lanes.is_state(s) for s in states)
    second = md5lanes.Md5Lanes(8)
    for j in range(8):
        second.reset(7 - j, states[j])
    second.update([data[7 - j][cut[7 - j] :] for j in range(8)])
    assert [second.hexdigest(7 - j) for j in range(8)] == [hashlib.md5(d).hexdigest() for d in data]
    again = md5lanes.Md5Lanes(8)
    _feed(again, data, rng, save_every=2)
    assert [again.hexdigest(j) for j in range(8)] == [hashlib.md5(d).hexdigest() for d in data]


def test_foreign_or_torn_states_are_refused():
    hasher = md5lanes.Md5Lanes(1)
    hasher.update([b"x" * 70])
    state = hasher.state(0)
    openssl_like = bytes(92)
    assert not md5lanes.is_state(openssl_like)
    for bad in (openssl_like, state[:-1], state[: len(md5lanes.MAGIC) + 3], state + b"y"):
        with pytest.raises(ValueError):
            hasher.reset(0, bad)


def test_update_refuses_short_buffers():
    states = bytearray(32)
    with pytest.raises(ValueError, match="lane 1 has 63 bytes"):
        md5lanes._c.update(states, [bytes(64), bytes(63)], [1, 1])
    with pytest.raises(ValueError):
        md5lanes._c.update(states, [None, bytes(64)], [1, 1])
    with pytest.raises(ValueError):
        md5lanes._c.update(bytearray(31), [bytes(64), bytes(64)], [1, 1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("cc"), reason="needs a Linux C compiler")
@pytest.mark.parametrize("define", ["-DMD5LANES_SCALAR", "-DMD5LANES_NO_AVX2", "-DMD5LANES_NO_SHUFFLEVECTOR"])
def test_other_builds_equal_hashlib(tmp_path, define):
    """The plain C build (what compilers without vector types get), the build without AVX2, and the one with
    GCC 9's __builtin_shuffle."""
    source = Path(md5lanes.__file__).with_name("_md5lanes.c")
    target = tmp_path / f"_md5lanes{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    flags = ["-O2", "-Wall", "-Werror", define, "-shared", "-fPIC"]
    subprocess.run(["cc", *flags, f"-I{include}", str(source), "-o", str(target)], check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("_md5lanes", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.isa() == {"-DMD5LANES_SCALAR": "scalar", "-DMD5LANES_NO_AVX2": "vector"}.get(
        define, md5lanes._c.isa()
    )
    rng = random.Random(9)
    data = [rng.randbytes(rng.choice([*EDGES, rng.randrange(9000)])) for _ in range(11)]
    padded = [d + b"\x80" + bytes((55 - len(d)) % 64) + struct.pack("<Q", 8 * len(d)) for d in data]
    states = bytearray(struct.pack("=4I", 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476) * len(data))
    module.update(states, padded, [len(p) // 64 for p in padded])
    digests = [struct.pack("<4I", *struct.unpack_from("=4I", states, 16 * j)).hex() for j in range(len(data))]
    assert digests == [hashlib.md5(d).hexdigest() for d in data]


# Files in lanes


def _files(folder: Path, sizes: list[int], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i, size in enumerate(sizes):
        paths.append(folder / f"consolidated.{i:02d}.pth")
        paths[-1].write_bytes(rng.randbytes(size))
    return paths


def test_hash_files_with_more_files_than_lanes(tmp_path):
    """Files of very unequal sizes, more than there are lanes: each lane takes the next file when its own ends;
    progress adds up, and each file is announced as it ends."""
    chunk = 4096
    sizes = [0, 1, 3 * chunk, 10 * chunk + 5, 64, 2 * chunk, 17, chunk - 1, 5 * chunk, 100, 7, 33 * chunk + 63]
    paths = _files(tmp_path, sizes)
    seen, done = [], {}
    digests = md5lanes.hash_files(
        paths, chunk_size=chunk, state_every=1 << 30, progress=seen.append, on_done=done.__setitem__, lanes=4
    )
    want = [hashlib.md5(p.read_bytes()).hexdigest() for p in paths]
    assert digests == want and done == dict(enumerate(want))
    assert sum(seen) == sum(sizes) and all(n > 0 for n in seen)
    assert md5lanes.hash_files(paths, chunk_size=chunk, state_every=1 << 30, drop_cache=True) == want


def test_hash_files_saves_states_a_rerun_continues(tmp_path):
    chunk = 1024
    paths = _files(tmp_path, [40 * chunk, 7 * chunk + 3, 0, 25 * chunk + 1], seed=1)
    states: list[tuple[int, int, bytes]] = []
    want = md5lanes.hash_files(paths, chunk_size=chunk, state_every=4 * chunk, on_state=lambda *s: states.append(s))
    assert want == [hashlib.md5(p.read_bytes()).hexdigest() for p in paths]
    assert {i for i, _, _ in states} == {0, 1, 3} and all(o % (4 * chunk) == 0 for _, o, _ in states)
    for i, offset, state in states[:: max(1, len(states) // 6)]:
        seen: list[int] = []
        got = md5lanes.hash_files(
            paths, chunk_size=chunk, state_every=1 << 30, starts={i: (offset, state)}, progress=seen.append
        )
        assert got == want and sum(seen) == sum(p.stat().st_size for p in paths) - offset
    # a state at another offset than it says, or an OpenSSL state: that file is hashed from byte 0
    i, offset, state = states[1]
    for start in ((offset + 64, state), (offset, bytes(92))):
        seen = []
        assert (
            md5lanes.hash_files(paths, chunk_size=chunk, state_every=1 << 30, starts={i: start}, progress=seen.append)
            == want
        )
        assert sum(seen) == sum(p.stat().st_size for p in paths)


def _model(folder: Path, sizes: list[int]) -> Path:
    paths = _files(folder, sizes, seed=len(sizes))
    (folder / "checklist.chk").write_text(
        "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths)
    )
    return folder


@pytest.mark.parametrize("n", [8, 11])
def test_verify_in_lanes_names_the_one_corrupted_shard(tmp_path, monkeypatch, n):
    monkeypatch.setattr(verify, "CHUNK_SIZE", 4096)
    calls = []
    real = md5lanes.hash_files
    monkeypatch.setattr(md5lanes, "hash_files", lambda paths, **kw: calls.append(len(paths)) or real(paths, **kw))
    model = _model(tmp_path / "m", [30_000 + 4096 * i for i in range(n)])
    bad = model / "consolidated.05.pth"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad.write_bytes(bytes(data))
    files: list[str] = []
    report = verify_checksums(model, on_file=lambda name, e, a: files.append(name))
    assert calls == [n]
    assert [m[0] for m in report.mismatched] == ["consolidated.05.pth"]
    assert report.mismatched[0][2] == hashlib.md5(bytes(data)).hexdigest()
    assert sorted(files) == sorted(report.checked) and len(files) == n
    assert report.bytes_hashed == sum(p.stat().st_size for p in model.glob("*.pth"))


def test_verify_resumes_in_lanes_openssl_states_too(tmp_path, monkeypatch):
    """Lane states saved by a killed run continue in lanes; so do OpenSSL states of a run without lanes."""
    from llama_convert import md5state

    monkeypatch.setattr(verify, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(verify, "STATE_EVERY", 8192)
    model = _model(tmp_path / "m", [50_000, 40_000, 30_000])
    states: dict[str, tuple[int, bytes]] = {}
    assert verify_checksums(model, on_state=lambda name, o, s: states.setdefault(name, (o, s))).ok
    assert set(states) == {"consolidated.00.pth", "consolidated.01.pth", "consolidated.02.pth"}
    assert all(md5lanes.is_state(s) for _, s in states.values())
    starts: list[dict] = []
    real = md5lanes.hash_files
    monkeypatch.setattr(md5lanes, "hash_files", lambda paths, **kw: starts.append(kw["starts"]) or real(paths, **kw))
    seen: list[int] = []
    report = verify_checksums(model, partial=states, progress=seen.append)
    assert report.ok and sum(seen) == 120_000 - sum(o for o, _ in states.values())
    if not md5state.saveable():
        return
    ssl = md5state.Md5()
    ssl.update((model / "consolidated.00.pth").read_bytes()[: 8192 + 100])  # mid-block
    partial = {"consolidated.00.pth": (8292, ssl.state())}
    seen = []
    assert verify_checksums(model, partial=partial, progress=seen.append).ok and sum(seen) == 120_000 - 8292
    assert md5lanes.is_state(starts[-1][0][1])  # continued in lanes


def test_states_move_between_lanes_and_openssl():
    from llama_convert import md5state

    if not md5state.saveable():
        pytest.skip("this Python's OpenSSL has no MD5_Init/MD5_Update: no OpenSSL states")
    data = os.urandom(5000)
    for cut in (0, 1, 63, 64, 1000, 4999):
        lanes = md5lanes.Md5Lanes(1)
        lanes.update([data[:cut]])
        ssl = md5state.Md5(md5lanes.to_openssl(lanes.state(0)))
        ssl.update(data[cut:])
        assert ssl.hexdigest() == hashlib.md5(data).hexdigest()
        assert md5lanes.from_openssl(md5lanes.to_openssl(lanes.state(0))) == lanes.state(0)
    assert md5lanes.to_openssl(bytes(92)) is None and md5lanes.from_openssl(lanes.state(0)) is None
    assert md5lanes.from_openssl(b"short") is None


def test_verify_in_lanes_read_error_and_cancel(tmp_path, monkeypatch):
    import threading
    from concurrent.futures import CancelledError

    model = _model(tmp_path / "m", [10_000, 20_000])
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        verify_checksums(model, cancel=cancel)

    real_open = open

    def failing_open(path, *args, **kwargs):  # a read error on one shard, as a failing disk gives
        f = real_open(path, *args, **kwargs)
        if Path(path).name == "consolidated.00.pth":
            f.close()
            raise OSError(5, "Input/output error")
        return f

    monkeypatch.setattr(md5lanes, "open", failing_open, raising=False)
    with pytest.raises(InputError, match=r"Cannot read .*consolidated.00.pth \(Input/output error\)"):
        verify_checksums(model)
    with pytest.raises(md5lanes.LaneReadError) as caught:
        md5lanes.hash_files([model / "consolidated.01.pth", model], chunk_size=4096, state_every=1 << 30)
    assert caught.value.index == 1 and isinstance(caught.value.error, IsADirectoryError)


def test_hash_file_continues_a_lane_state(tmp_path):
    """A lane state handed to the one-file path (a remote file, a rerun without the extension) continues as an
    OpenSSL state where OpenSSL's are saveable, else from byte 0; never mistaken for OpenSSL's own."""
    from llama_convert import md5state

    path = _files(tmp_path, [20_000])[0]
    lanes = md5lanes.Md5Lanes(1)
    lanes.update([path.read_bytes()[:8192]])
    seen: list[int] = []
    digest = verify.hash_file(path, start=(8192, lanes.state(0)), progress=seen.append)
    assert digest == hashlib.md5(path.read_bytes()).hexdigest()
    assert sum(seen) == (20_000 - 8192 if md5state.saveable() else 20_000)
    with pytest.raises(ValueError):
        md5lanes.Md5Lanes(md5lanes.MAX_LANES + 1)
