"""An MD5 whose running state can be saved and restored, so a resumed run need not hash its kept bytes again.

``hashlib`` cannot export a hash's state. OpenSSL's low-level ``MD5_Init``/``MD5_Update``/``MD5_Final`` keep
it in a plain ``MD5_CTX`` struct, which can be copied as bytes. This module uses them through ctypes when the
process's libcrypto has them, and only after a self-test (a save/restore in mid-stream gives hashlib's
digest); otherwise ``saveable()`` is False and callers hash the kept bytes again, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np

__all__ = ["Md5", "saveable"]

_CTX_BYTES = 92  # MD5_CTX: A, B, C, D, Nl, Nh (32-bit each), data[16] (32-bit), num (32-bit)
_BUFFER = 256  # allocated generously: a struct larger than expected would show in the self-test


@cache
def _library() -> Any | None:
    def names() -> Iterator[str | None]:  # the usual names first: find_library runs ldconfig
        yield from ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib")
        yield ctypes.util.find_library("crypto")

    for name in filter(None, names()):
        try:
            lib = ctypes.CDLL(name)  # CDLL releases the GIL around each call
            for fn in (lib.MD5_Init, lib.MD5_Update, lib.MD5_Final):
                fn.restype = ctypes.c_int
            lib.MD5_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        except (OSError, AttributeError):
            continue
        if _self_test(lib):
            return lib
    return None


def _self_test(lib: Any) -> bool:
    data = bytes(range(256)) * 37 + b"tail"
    try:
        first = _OpenSslMd5(lib)
        first.update(data[:1001])
        second = _OpenSslMd5(lib, first.state())
        second.update(data[1001:])
        return second.hexdigest() == hashlib.md5(data, usedforsecurity=False).hexdigest()
    except (OSError, ValueError, AttributeError):
        return False


def saveable() -> bool:
    """Whether :class:`Md5` states can be saved (OpenSSL's MD5 found and self-tested)."""
    return _library() is not None


class _OpenSslMd5:
    def __init__(self, lib: Any, state: bytes | None = None) -> None:
        self._lib = lib
        self._ctx = ctypes.create_string_buffer(_BUFFER)
        if state is None:
            if lib.MD5_Init(self._ctx) != 1:
                raise ValueError("MD5_Init failed")
        else:
            if len(state) != _CTX_BYTES:
                raise ValueError(f"an MD5 state has {_CTX_BYTES} bytes, not {len(state)}")
            ctypes.memmove(self._ctx, state, _CTX_BYTES)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        array = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)  # no copy, read-only buffers too
        if not array.nbytes:
            return
        if self._lib.MD5_Update(self._ctx, array.ctypes.data, array.nbytes) != 1:
            raise ValueError("MD5_Update failed")

    def state(self) -> bytes:
        return self._ctx.raw[:_CTX_BYTES]

    def hexdigest(self) -> str:
        ctx = ctypes.create_string_buffer(self._ctx.raw, _BUFFER)  # MD5_Final consumes its context
        out = ctypes.create_string_buffer(16)
        if self._lib.MD5_Final(out, ctx) != 1:
            raise ValueError("MD5_Final failed")
        return out.raw.hex()


class Md5:
    """``hashlib.md5`` with :meth:`state` (bytes, or None when states cannot be saved) and a ``state``
    argument to continue from."""

    def __init__(self, state: bytes | None = None) -> None:
        lib = _library()
        if state is not None and lib is None:
            raise ValueError("this process cannot restore MD5 states (no self-tested OpenSSL MD5)")
        self._impl: Any = _OpenSslMd5(lib, state) if lib is not None else hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._impl.update(data)

    def state(self) -> bytes | None:
        return self._impl.state() if isinstance(self._impl, _OpenSslMd5) else None

    def hexdigest(self) -> str:
        return self._impl.hexdigest()
