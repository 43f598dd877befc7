"""The saveable MD5 gives hashlib's digests, and a resumed shard continues from the saved state (no re-hash)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from llama_convert.formats.meta import writer as meta_writer
from llama_convert.formats.meta.writer import HashedFile
from llama_convert.md5state import Md5, saveable

pytestmark = pytest.mark.skipif(not saveable(), reason="no self-tested OpenSSL MD5 in this process")


@pytest.mark.parametrize("cut", [0, 1, 63, 64, 65, 4096, 100_003])
def test_saved_state_continues_to_hashlibs_digest(cut):
    data = os.urandom(250_000)
    first = Md5()
    first.update(data[:cut])
    second = Md5(first.state())
    second.update(memoryview(data)[cut:])
    assert second.hexdigest() == hashlib.md5(data).hexdigest()
    assert first.hexdigest() == hashlib.md5(data[:cut]).hexdigest()  # hexdigest does not consume the state


def test_read_only_and_array_buffers():
    values = np.arange(10_000, dtype=np.float32)
    h = Md5()
    h.update(values.tobytes())
    h.update(memoryview(values))
    assert h.hexdigest() == hashlib.md5(values.tobytes() * 2).hexdigest()


def test_a_bad_state_is_refused():
    with pytest.raises(ValueError, match="92 bytes"):
        Md5(b"short")


def test_a_resumed_file_continues_from_the_saved_state_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "shard.pth"
    head, tail = os.urandom(300_000), os.urandom(200_000)
    with ThreadPoolExecutor(1) as lane:
        f = HashedFile(path, lane)
        f.write(head)
        state = f.md5_state()
        f.finish()
        with open(path, "ab") as g:
            g.write(b"bytes after the checkpoint that the rerun cuts off")
        monkeypatch.setattr(
            meta_writer, "open", lambda *a, **k: pytest.fail("kept bytes were read again"), raising=False
        )
        resumed = HashedFile(path, lane, keep=len(head), md5_state=state)
        resumed.write(tail)
        digest = resumed.finish()
    assert path.read_bytes() == head + tail
    assert digest == hashlib.md5(head + tail).hexdigest()
