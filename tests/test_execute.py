"""The executor: verbatim byte ranges are copied in the kernel, and the buffered fallback gives the same bytes."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from conftest import tiny

import llama_convert
from llama_convert.testing.synth import synthesize


def test_kernel_copy_and_buffered_fallback_write_identical_files(tmp_path, monkeypatch):
    src = synthesize(tmp_path / "Llama3.1-8B", tiny("llama3.1-8b", tokenizer="small-tiktoken"))
    llama_convert.convert(src, tmp_path / "fast", verify=False)

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    llama_convert.convert(src, tmp_path / "slow", verify=False)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes(), name


def test_writeback_drops_pages_behind_it_except_the_range_to_keep(tmp_path, monkeypatch):
    """The stream drops what it wrote from the page cache (memory stays flat), but not a tensor read back right
    after the stream (a tied embedding compared with the head a remote source fetches last)."""
    from llama_convert.formats import stream
    from llama_convert.formats.hf.safetensors_writer import SafetensorsWriter

    dropped: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def advise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED:
            dropped.append((offset, offset + length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(stream, "WRITEBACK_WINDOW", 1 << 16)
    sizes = {"a": 5 << 16, "kept": 3 << 16 | 100, "b": 6 << 16}
    entries = [(name, "U8", (n,), n) for name, n in sizes.items()]
    writer = SafetensorsWriter(tmp_path / "m.safetensors", entries, keep_cached=["kept"])
    for n in sizes.values():  # in pieces, as a stream writes; one piece longer than a window
        for piece in (3 << 15, *[1 << 14] * ((n - (3 << 15)) >> 14), (n - (3 << 15)) % (1 << 14)):
            writer.write(np.ones(piece, dtype=np.uint8))
    writer.close()
    if stream._sync_file_range() is None:
        pytest.skip("no sync_file_range here: nothing is dropped")
    header = (tmp_path / "m.safetensors").stat().st_size - sum(sizes.values())
    kept = (header + sizes["a"], header + sizes["a"] + sizes["kept"])
    assert dropped and all(end <= kept[0] or start >= kept[1] for start, end in dropped)
    covered = sum(end - start for start, end in dropped)
    assert covered >= sum(sizes.values()) - sizes["kept"] - 3 * stream.WRITEBACK_WINDOW  # the rest is dropped


def _recording_writeback(monkeypatch) -> list[tuple[int, int, int]]:
    """sync_file_range replaced by a recorder of (offset, length, flags), writeback windows of 64 KiB."""
    from llama_convert.formats import stream

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        stream, "_sync_file_range", lambda: lambda fd, offset, n, flags: calls.append((offset, n, flags))
    )
    monkeypatch.setattr(stream, "WRITEBACK_WINDOW", 1 << 16)
    return calls


def test_a_resumed_file_is_written_back_where_its_writes_go(tmp_path, monkeypatch):
    """A file an interrupted run left is appended to after the bytes it kept: writeback windows start there
    (starting at 0 flushed nothing the run wrote, and dirty pages piled up until the kernel throttled it)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    from llama_convert.formats.gguf.writer import GGUFStreamWriter, TensorEntry

    calls = _recording_writeback(monkeypatch)
    tensors = [TensorEntry(f"t{i}", (1 << 16,), GGMLQuantizationType.I8, 1 << 16) for i in range(8)]

    def writer() -> GGUFWriter:
        w = GGUFWriter(None, "llama")  # type: ignore[arg-type]
        w.add_uint32("test.value", 7)
        return w

    first = GGUFStreamWriter(tmp_path / "m.gguf", writer(), tensors)
    for _ in range(3):
        first.write(np.ones(1 << 16, dtype=np.int8))
        first.end_tensor()
    first.sync()
    kept = (tmp_path / "m.gguf").stat().st_size
    os.close(first._fd)  # killed: nothing more of this run
    calls.clear()
    again = GGUFStreamWriter(tmp_path / "m.gguf", writer(), tensors, resume=(3, kept))
    assert again.resumed
    for _ in range(5):
        again.write(np.ones(1 << 16, dtype=np.int8))
        again.end_tensor()
    assert calls and min(offset for offset, _, _ in calls) >= kept
    assert max(offset + n for offset, n, _ in calls) <= (tmp_path / "m.gguf").stat().st_size
    os.close(again._fd)
