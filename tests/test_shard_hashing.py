"""Shard files hashed in md5lanes' lanes while written: hashlib's MD5 and zlib's CRC-32 of each file, whatever
the order and sizes of the writes, and states that move between the lanes and OpenSSL for resumed runs."""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from llama_convert import md5lanes
from llama_convert.formats.meta.shard_hashing import LaneHashes, ThreadMd5
from llama_convert.formats.meta.torch_zip_writer import RunningCrc
from llama_convert.formats.meta.writer import HashedFile, MetaShardWriter
from llama_convert.md5state import saveable

pytestmark = pytest.mark.skipif(not md5lanes.available(), reason="md5lanes is not built")


def _writes(rng: np.random.Generator, files: int, count: int) -> list[tuple[int, bytes, bool]]:
    """Writes of mixed sizes (headers of a few bytes to blocks of a MiB) to the files in a shuffled order."""
    out = []
    for _ in range(count):
        size = int(rng.choice([1, 30, 64, 100, 4096, 70_001, 1 << 20]))
        out.append((int(rng.integers(files)), rng.bytes(size), bool(rng.integers(2))))
    return out


@pytest.mark.parametrize("files", [1, 3, 8, 17])
def test_lane_hashes_give_every_files_md5_and_crc(files):
    rng = np.random.default_rng(files)
    writes = _writes(rng, files, 120)
    with ThreadPoolExecutor(1) as thread:
        lanes = LaneHashes(files, thread)
        hashes = [lanes.file(j) for j in range(files)]
        crcs = [RunningCrc() for _ in range(files)]
        for j, data, with_crc in writes:
            hashes[j].add(memoryview(data), crcs[j] if with_crc else None)
        digests = [h.hexdigest() for h in hashes]
    for j in range(files):
        mine = b"".join(d for k, d, _ in writes if k == j)
        assert digests[j] == hashlib.md5(mine).hexdigest()
        assert crcs[j].value == zlib.crc32(b"".join(d for k, d, c in writes if k == j and c))


@pytest.mark.parametrize("cut", [0, 1, 63, 64, 65, 100_003])
def test_a_lane_state_continues_in_lanes_and_in_openssl(cut):
    data = os.urandom(250_000)
    with ThreadPoolExecutor(1) as thread:
        first = LaneHashes(2, thread).file(1)
        first.add(memoryview(data[:cut]), None)
        state = first.state()
        assert state is not None and md5lanes.is_state(state)
        again = LaneHashes(3, thread).file(2)
        assert again.restore(state)
        again.add(memoryview(data[cut:]), None)
        assert again.hexdigest() == hashlib.md5(data).hexdigest()
        if saveable():  # an OpenSSL state (what an earlier run saved) continues in the lanes, and back
            ssl = ThreadMd5(thread)
            assert ssl.restore(state)
            ssl.add(memoryview(data[cut:]), None)
            assert ssl.hexdigest() == hashlib.md5(data).hexdigest()
            ssl = ThreadMd5(thread)
            ssl.add(memoryview(data[:cut]), None)
            lane = LaneHashes(1, thread).file(0)
            assert lane.restore(ssl.state())
            lane.add(memoryview(data[cut:]), None)
            assert lane.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_state_that_is_neither_is_not_used():
    with ThreadPoolExecutor(1) as thread:
        assert not LaneHashes(1, thread).file(0).restore(b"not a state")
        assert not ThreadMd5(thread).restore(md5lanes.MAGIC + b"torn")


def test_a_resumed_shard_continues_from_a_lane_state_without_reading_it(tmp_path, monkeypatch):
    from llama_convert.formats.meta import writer as meta_writer

    path = tmp_path / "shard.pth"
    head, tail = os.urandom(300_000), os.urandom(200_000)
    with ThreadPoolExecutor(1) as thread:
        f = HashedFile(path, LaneHashes(1, thread).file(0))
        f.write(head)
        state = f.md5_state()
        f.finish()
        with open(path, "ab") as g:
            g.write(b"bytes after the checkpoint that the rerun cuts off")
        monkeypatch.setattr(meta_writer, "open", lambda *a, **k: pytest.fail("kept bytes were read"), raising=False)
        resumed = HashedFile(path, LaneHashes(1, thread).file(0), keep=len(head), md5_state=state)
        resumed.write(tail)
        assert resumed.finish() == hashlib.md5(head + tail).hexdigest()
    assert path.read_bytes() == head + tail


def test_the_shard_writer_hashes_in_lanes_by_default(tmp_path, monkeypatch):
    from llama_convert.dtypes import DTYPES

    used = []
    original = LaneHashes._hash
    monkeypatch.setattr(LaneHashes, "_hash", lambda self, batch: used.append(len(batch)) or original(self, batch))
    writer = MetaShardWriter(tmp_path, 4)
    rows = np.arange(4 * 1000 * 64, dtype=np.uint16).reshape(4000, 64)
    for rank, sink in enumerate(writer.open_tensor("w", DTYPES["bfloat16"], [(1000, 64)] * 4)):
        sink.write(rows[rank * 1000 : (rank + 1) * 1000].copy())
    writer.close_tensor()
    digests = writer.finish()
    assert used and set(used) == {4}
    for rank in range(4):
        name = f"consolidated.{rank:02d}.pth"
        assert digests[name] == hashlib.md5((tmp_path / name).read_bytes()).hexdigest()
