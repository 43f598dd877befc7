"""Remote sources against a real S3 endpoint on 127.0.0.1 (moto's server, started and stopped here):
streamed by range reads into the same bytes as the local conversion, checksums computed on the bytes
read, and one sentence for a missing bucket, a missing prefix or refused credentials."""

from __future__ import annotations

import contextlib
import filecmp
import functools
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, tiny

from llama_convert import convert
from llama_convert.cli import main as cli_main
from llama_convert.errors import ChecksumError, InputError, MissingFileError

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(tmp: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (its spool files in ``tmp``); returns it and its endpoint."""
    port = _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "TMPDIR": str(tmp), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's server did not start")


def stop_moto(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def aws_env(endpoint: str, key: str = "testing") -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def upload(client, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[str]:
    proc, endpoint = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield endpoint
    finally:
        stop_moto(proc)


@pytest.fixture
def aws(s3, monkeypatch):
    for name, value in aws_env(s3).items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=s3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # Small objects: moto's server reads a whole object for every range request.
    synth = tiny("llama3.2-1b", tokenizer="small-tiktoken", head_dim=16)
    return make_checkpoint(tmp_path_factory.mktemp("src"), "Llama-3.2-1B-Instruct", synth)


@pytest.fixture
def small_reads(monkeypatch):
    """Parts, blocks and copy chunks of a few KiB, so that a small checkpoint takes every path of a big one
    (concurrent parts, cached blocks, chunked copies with read-ahead, gaps hashed in order)."""
    from llama_convert.formats import stream
    from llama_convert.formats.storage import remote

    monkeypatch.setattr(remote, "PART_BYTES", 1 << 20)
    monkeypatch.setattr(remote, "BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(remote, "AHEAD_BYTES", 1536 << 10)
    monkeypatch.setattr(stream, "COPY_CHUNK", 3 << 20)


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def _written_bytes() -> int:
    """Bytes this process passed to write(2) so far (/proc/self/io ``wchar``: any file, any filesystem)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.mark.parametrize("reads", ["direct", "fsspec"])
def test_s3_prefix_converts_to_the_same_bytes_as_the_local_folder(
    aws, checkpoint, tmp_path, small_reads, reads, monkeypatch
):
    """Bulk reads go over plain HTTP on URLs the store signs; through s3fs's own reads (where a proxy is in
    the way) the bytes are the same."""
    from llama_convert.formats.storage import RemotePath, store

    if reads == "fsspec":
        monkeypatch.setattr(store, "direct_ranges", lambda protocol, fs: None)
    assert (RemotePath.from_url("s3://models/m").store.direct is not None) == (reads == "direct")
    aws.create_bucket(Bucket="models")
    upload(aws, checkpoint, "models", "meta/Llama-3.2-1B-Instruct")
    local = convert(checkpoint, tmp_path / "local")
    before = _written_bytes()
    remote_result = convert("s3://models/meta/Llama-3.2-1B-Instruct", tmp_path / "remote")
    written = _written_bytes() - before
    _same_tree(tmp_path / "local", tmp_path / "remote")
    assert remote_result.verified and local.verified
    assert remote_result.spec.instruct  # the prefix's name is naming evidence, as a folder's is
    output = sum(p.stat().st_size for p in (tmp_path / "remote").iterdir())
    assert written - output < 4 << 20  # no hidden download cache: only the output (and the journal) is written
    assert cli_main(["verify", "s3://models/meta/Llama-3.2-1B-Instruct", "-q"]) == 0


def test_s3_prefix_to_gguf_is_the_local_file(aws, checkpoint, tmp_path):
    aws.create_bucket(Bucket="gguf")
    upload(aws, checkpoint, "gguf", "Llama-3.2-1B-Instruct")
    convert(checkpoint, tmp_path / "local.gguf")
    convert("s3://gguf/Llama-3.2-1B-Instruct", tmp_path / "remote.gguf")
    assert filecmp.cmp(tmp_path / "local.gguf", tmp_path / "remote.gguf", shallow=False)


def test_a_flipped_byte_in_the_bucket_is_caught_by_the_checksum(aws, checkpoint, tmp_path, small_reads):
    aws.create_bucket(Bucket="flipped")
    upload(aws, checkpoint, "flipped", "m")
    data = bytearray((checkpoint / "consolidated.00.pth").read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a weight: the file still parses
    aws.put_object(Bucket="flipped", Key="m/consolidated.00.pth", Body=bytes(data))
    with pytest.raises(ChecksumError, match=r"consolidated\.00\.pth has md5 .*download consolidated\.00\.pth again"):
        convert("s3://flipped/m", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert cli_main(["s3://flipped/m", str(tmp_path / "out2"), "-q"]) == 5
    assert not (tmp_path / "out2").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left either
    assert cli_main(["verify", "s3://flipped/m", "-q"]) == 5


def test_a_missing_bucket_or_prefix_is_one_sentence(aws, tmp_path, capsys):
    with pytest.raises(MissingFileError, match=r"^s3://no-such-bucket/m does not exist"):
        convert("s3://no-such-bucket/m", tmp_path / "out")
    aws.create_bucket(Bucket="empty")
    assert cli_main(["s3://empty/nothing/here", str(tmp_path / "out")]) == 3
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: s3://empty/nothing/here does not exist") and message.count("\n") == 0


def test_refused_credentials_are_one_sentence(tmp_path, monkeypatch, capsys):
    # A second server that checks credentials: every request signed with an unknown key is refused.
    proc, endpoint = start_moto(tmp_path / "moto", INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        for name, value in aws_env(endpoint, key="AKIAUNKNOWNKEY000000").items():
            monkeypatch.setenv(name, value)
        with pytest.raises(InputError, match=r"^s3://models/m could not be read: access was refused .*AWS_PROFILE"):
            convert("s3://models/m", tmp_path / "out")
        assert cli_main(["s3://models/m", str(tmp_path / "out")]) == 3
        assert "access was refused" in capsys.readouterr().err
    finally:
        stop_moto(proc)
    assert not (tmp_path / "out").exists()


def test_a_missing_backend_is_named_with_its_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_gcsfs(name, *args, **kwargs):
        if name == "gcsfs":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    from llama_convert.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match=r"gs:// sources need the gcsfs package; .*llama-convert\[gcs\]"):
        convert("gs://bucket/model", tmp_path / "out")


def test_an_hf_folder_on_s3_converts_like_the_local_folder(aws, checkpoint, tmp_path):
    hf = tmp_path / "Llama-3.2-1B-Instruct-hf"  # the name is evidence (GGUF's general.finetune): the same
    convert(checkpoint, hf)
    aws.create_bucket(Bucket="hf-models")
    upload(aws, hf, "hf-models", "Llama-3.2-1B-Instruct-hf")
    convert(hf, tmp_path / "local.gguf")
    convert("s3://hf-models/Llama-3.2-1B-Instruct-hf", tmp_path / "remote.gguf")
    assert filecmp.cmp(tmp_path / "local.gguf", tmp_path / "remote.gguf", shallow=False)


class _Flaky:
    """A real fsspec filesystem whose first reads fail the way a dropped connection does."""

    def __init__(self, fs, failures: int) -> None:
        self.fs, self.failures, self.calls = fs, failures, 0

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def cat_file(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionResetError("connection reset by peer")
        return self.fs.cat_file(*args, **kwargs)


def test_transient_errors_are_retried_and_refusals_are_not():
    import fsspec

    from llama_convert.formats.storage import RemotePath, RemoteStore
    from llama_convert.formats.storage.backends import BACKENDS

    memory = fsspec.filesystem("memory", skip_instance_cache=True)
    memory.pipe("/bucket/m/params.json", b"{}")
    flaky = _Flaky(memory, failures=2)
    path = RemotePath(RemoteStore(BACKENDS["s3"], flaky, backoff=0.01), "bucket/m/params.json")
    assert path.read_bytes() == b"{}" and flaky.calls == 3
    gone = RemotePath(RemoteStore(BACKENDS["s3"], _Flaky(memory, 0), backoff=0.01), "bucket/m/nothing")
    with pytest.raises(MissingFileError, match=r"^s3://bucket/m/nothing does not exist"):
        gone.read_bytes()
    always = RemotePath(RemoteStore(BACKENDS["s3"], _Flaky(memory, 99), attempts=3, backoff=0.01), "bucket/m/x")
    with pytest.raises(InputError, match=r"^s3://bucket/m/x could not be read \(ConnectionResetError"):
        always.read_bytes()


def test_a_watched_read_hashes_the_fetched_bytes_not_the_callers_buffer(tmp_path):
    """The hash of a remote file runs on a thread of its own, after the read returned; the caller may already
    have changed its buffer (dequantized or permuted in place), so the watcher is given the fetched bytes."""
    import hashlib
    import os

    from fsspec.implementations.memory import MemoryFileSystem

    from llama_convert.formats.storage.backends import BACKENDS
    from llama_convert.formats.storage.remote import RemotePath, RemoteStore
    from llama_convert.verify_remote import HashOnRead

    fs = MemoryFileSystem()
    data = os.urandom(3 << 20)
    fs.pipe_file("/bucket/blob", data)
    path = RemotePath(RemoteStore(BACKENDS["s3"], fs), "/bucket/blob")
    watcher = HashOnRead(path, len(data))
    path.store.watch(path.key, watcher)
    source = path.open_bytes()
    try:
        for offset, size in ((0, 100), (100, 2 << 20), ((2 << 20) + 100, 1000)):  # cached and large reads
            out = bytearray(size)
            source.read_into(offset, memoryview(out))
            assert bytes(out) == data[offset : offset + size]
            out[:] = bytes(size)  # the caller reuses its buffer at once
        assert watcher.hexdigest() == hashlib.md5(data).hexdigest()
    finally:
        source.close()
        watcher.close()


@contextlib.contextmanager
def _watched_memory_file(data: bytes):
    """A remote file of ``data`` (fsspec's memory store) opened for reads, its hash watching them, and the
    list of byte counts the store fetched."""
    from fsspec.implementations.memory import MemoryFileSystem

    from llama_convert.formats.storage.backends import BACKENDS
    from llama_convert.formats.storage.remote import RemotePath, RemoteStore
    from llama_convert.verify_remote import HashOnRead

    fs = MemoryFileSystem()
    fs.pipe_file("/bucket/blob", data)
    path = RemotePath(RemoteStore(BACKENDS["s3"], fs), "/bucket/blob")
    fetched: list[int] = []
    fetch = path.store.fetch

    def counting(key, ranges):
        fetched.append(sum(end - start for start, end in ranges))
        return fetch(key, ranges)

    path.store.fetch = counting  # type: ignore[method-assign]
    watcher = HashOnRead(path, len(data))
    path.store.watch(path.key, watcher)
    source = path.open_bytes()
    try:
        yield source, watcher, fetched
    finally:
        source.close()
        watcher.close()


def test_a_pass_in_file_order_fetches_each_byte_once_and_hashes_the_gaps_from_the_parts(monkeypatch):
    """Reading a file as a conversion does (large reads in order with small gaps between them, small reads in
    between) fetches every byte once: small reads and the gaps' bytes (zip headers the conversion skips)
    come from the read-ahead's parts, and the hash is computed from those parts too."""
    from llama_convert.formats.storage import remote

    monkeypatch.setattr(remote, "PART_BYTES", 256 << 10)
    monkeypatch.setattr(remote, "AHEAD_BYTES", 1 << 20)
    monkeypatch.setattr(remote, "BLOCK_BYTES", 64 << 10)
    data = os.urandom(9 << 20)
    with _watched_memory_file(data) as (source, watcher, fetched):
        offset, reads = 0, 0
        while offset < len(data) - (1 << 20):
            size = (700 << 10) if reads % 3 else 100  # two large reads, then a small one (a norm)
            pieces = source.read_pieces(offset, size)
            assert b"".join(bytes(p) for _, p in pieces) == data[offset : offset + size]
            starts = [o for o, _ in pieces]
            assert starts == [offset + sum(len(p) for _, p in pieces[:i]) for i in range(len(pieces))]
            offset += size + 64  # a header's worth of bytes nobody asks for
            reads += 1
        assert watcher.hexdigest() == hashlib.md5(data).hexdigest()
        assert source._ahead
    assert not [n for n in fetched if n < 64 << 10]  # no gap fetched on its own, no small read either
    assert sum(fetched) <= len(data) + remote.AHEAD_BYTES  # and the read-ahead past the last read
    assert source._ahead == []  # closed: nothing left in flight


def test_reads_out_of_order_still_give_the_bytes_and_the_hash():
    data = os.urandom(40 << 20)
    with _watched_memory_file(data) as (source, watcher, _):
        for offset, size in ((0, 9 << 20), (30 << 20, 9 << 20), (9 << 20, 9 << 20), (5, 100), (18 << 20, 12 << 20)):
            out = bytearray(size)
            source.read_into(offset, memoryview(out))
            assert bytes(out) == data[offset : offset + size]
        assert watcher.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_remote_checkpoint_index_is_fetched_once_per_run(aws, checkpoint):
    from llama_convert.formats.meta.torch_zip import TorchCheckpoint
    from llama_convert.formats.storage import RemotePath

    aws.create_bucket(Bucket="index")
    upload(aws, checkpoint, "index", "m")
    shard = RemotePath.from_url("s3://index/m/consolidated.00.pth")
    with TorchCheckpoint(shard) as first:
        requests = shard.store.requests
        with TorchCheckpoint(shard) as second:  # detection, planning and the stream each open the shard
            assert shard.store.requests == requests  # the central directory and headers are not asked again
            assert list(second.tensors) == list(first.tensors)
            name = next(iter(first.tensors))
            np.testing.assert_array_equal(second.read_rows(name, 0, 1), first.read_rows(name, 0, 1))


@pytest.mark.parametrize("lanes", [True, False])
def test_shards_watched_side_by_side_verify_and_catch_a_flipped_byte(aws, tmp_path, monkeypatch, small_reads, lanes):
    """Every shard watched (as a full-size shard is) and hashed in md5lanes' shared lanes, or with OpenSSL per
    file: the MP2 output is the local one, the checklist is verified from the bytes read, and a flipped byte
    in the second shard stops the run with nothing written."""
    from llama_convert import md5lanes, verify, verify_remote

    if lanes and not md5lanes.available():
        pytest.skip("md5lanes is not built here")
    monkeypatch.setattr(verify_remote, "_SMALL", 0)
    monkeypatch.setattr(verify_remote, "QUEUED_BYTES", 256 << 10)  # many times over: every feed's budget released
    monkeypatch.setattr(verify_remote, "MIN_QUEUED", 64 << 10)
    monkeypatch.setattr(verify, "LANES", lanes)
    made: list[int] = []
    shared = verify_remote.SharedLanes
    monkeypatch.setattr(verify_remote, "SharedLanes", lambda n: made.append(n) or shared(n))
    source = make_checkpoint(tmp_path / "src", "Llama-3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken", mp=2))
    aws.create_bucket(Bucket="sides")
    upload(aws, source, "sides", "m")
    convert(source, tmp_path / "local")
    result = _within(60, convert, "s3://sides/m", tmp_path / "remote")
    assert result.verified
    _same_tree(tmp_path / "local", tmp_path / "remote")
    assert made == ([4] if lanes else [])  # two shards, params.json and tokenizer.model (all watched at _SMALL = 0)

    data = bytearray((source / "consolidated.01.pth").read_bytes())
    data[len(data) // 2] ^= 0x10
    aws.put_object(Bucket="sides", Key="m/consolidated.01.pth", Body=bytes(data))
    with pytest.raises(ChecksumError, match=r"consolidated\.01\.pth has md5"):
        convert("s3://sides/m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _within(seconds: float, fn, *args):
    """fn(*args) on a daemon thread: a run that hangs fails the test instead of the suite."""
    import threading

    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{getattr(fn, '__name__', fn)} did not finish in {seconds} s"
    return out[0]


@pytest.mark.parametrize("lanes", [True, False])
def test_a_watched_file_fed_far_past_its_budget_is_hashed_whole(lanes):
    """Each fed chunk's budget comes back once the chunk is hashed, by OpenSSL at once or by the shared lanes
    later: feeding many times the budget never waits for good."""
    from llama_convert import md5lanes
    from llama_convert.verify_remote import HashOnRead, SharedLanes

    if lanes and not md5lanes.available():
        pytest.skip("md5lanes is not built here")
    data = os.urandom(3 << 20)
    shared = SharedLanes(2) if lanes else None
    watched = HashOnRead(None, len(data), queued=100 << 10, digest=shared.lane(1) if shared else None)  # type: ignore[arg-type]

    def feed_all() -> str:
        for at in range(0, len(data), 40 << 10):
            watched.feed(at, memoryview(data)[at : at + (40 << 10)])
        return watched.hexdigest()

    try:
        assert _within(30, feed_all) == hashlib.md5(data).hexdigest()
    finally:
        watched.close()
        if shared is not None:
            shared.close()


def test_shared_lanes_give_each_file_its_md5_whatever_the_threads_and_chunks():
    import random
    import threading

    from llama_convert import md5lanes
    from llama_convert.verify_remote import SharedLanes

    if not md5lanes.available():
        pytest.skip("md5lanes is not built here")
    files = [os.urandom(random.Random(j).randrange(0, 5 << 20)) for j in range(5)]
    lanes = SharedLanes(len(files))
    released = [0] * len(files)

    def release(j: int, n: int) -> None:
        released[j] += n

    def feed(j: int) -> None:
        lane, view, at, rng = lanes.lane(j), memoryview(files[j]), 0, random.Random(j)
        while at < len(view):
            n = rng.choice((1, 63, 64, 65, 4096, 1 << 20, 3 << 20))
            piece = view[at : at + n]
            lane.update(piece, functools.partial(release, j, len(piece)))
            at += len(piece)
            if rng.random() < 0.3:
                lane.settle(1 << 20)

    try:
        threads = [threading.Thread(target=feed, args=(j,)) for j in range(len(files))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        digests = [lanes.lane(j).hexdigest() for j in range(len(files))]
    finally:
        lanes.close()
    assert digests == [hashlib.md5(f).hexdigest() for f in files]
    assert released == [len(f) for f in files]  # every handed-over chunk's callback ran once it was hashed


def test_a_hashing_error_in_the_shared_lanes_reaches_every_file(monkeypatch):
    from llama_convert import md5lanes
    from llama_convert.verify_remote import SharedLanes

    if not md5lanes.available():
        pytest.skip("md5lanes is not built here")
    lanes = SharedLanes(2)
    monkeypatch.setattr(lanes._lanes, "update", lambda chunks: (_ for _ in ()).throw(MemoryError("no room")))
    released: list[int] = []
    try:
        lanes.lane(0).update(memoryview(b"x" * 100), lambda: released.append(0))
        for j in (0, 1):
            with pytest.raises(MemoryError, match="no room"):
                lanes.lane(j).hexdigest()
    finally:
        lanes.close()
    assert released == [0]  # the budget is released all the same


def test_closing_the_shared_lanes_releases_what_was_not_hashed(monkeypatch):
    """A cancelled run: chunks still waiting are dropped, their callbacks run (no feed waits forever)."""
    import threading

    from llama_convert import md5lanes
    from llama_convert.verify_remote import SharedLanes

    if not md5lanes.available():
        pytest.skip("md5lanes is not built here")
    lanes = SharedLanes(2)
    gate = threading.Event()
    update = lanes._lanes.update
    monkeypatch.setattr(lanes._lanes, "update", lambda chunks: (gate.wait(), update(chunks)))
    released: list[int] = []
    for j in range(6):
        lanes.lane(j % 2).update(memoryview(bytes(3 << 20)), functools.partial(released.append, j))
    closing = threading.Thread(target=lanes.close)
    closing.start()
    gate.set()
    closing.join(10)
    assert not closing.is_alive()
    assert sorted(released) == list(range(6))
