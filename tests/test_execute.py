"""The executor: verbatim byte ranges are copied in the kernel, and the buffered fallback gives the same bytes."""

from __future__ import annotations

import errno
import os

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
