"""MD5 of several files in lockstep: one vector instruction advances up to ``LANES`` independent streams.

One MD5 stream runs at about 0.6 GB/s on a core whatever the CPU (each step waits for the one before), so a
checkpoint of eight shards costs eight times that. The shards are independent: ``_md5lanes.c`` keeps stream j
in lane j of uint32 vectors (8 lanes a vector; with AVX2 two vectors at once, 16 streams) and advances all of
them by the same number of 64-byte blocks; this module does the rest of RFC 1321 (partial blocks, padding, the
length, the digest) per lane, saves and restores lane states, and :func:`hash_files` feeds the lanes from
files, a new file joining a lane as soon as its previous file ended. Without the compiled extension
:func:`available` is False and callers hash one file per thread with hashlib.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import struct
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

try:
    _c: Any = importlib.import_module("._md5lanes", __package__)
except ImportError:  # built without a C compiler
    _c = None

__all__ = ["LANES", "LaneReadError", "Md5Lanes", "available", "from_openssl", "hash_files", "is_state", "to_openssl"]

LANES = _c.LANES if _c is not None else 1  # streams one vector step advances
MAX_LANES = 256  # streams one Md5Lanes holds (_md5lanes.c's MAX_LANES)
# A saved lane state: this prefix, A B C D and the byte count (little-endian), then the pending bytes (< 64).
# OpenSSL MD5_CTX states (md5state) are 92 raw bytes and never start with it.
MAGIC = b"llama-convert md5lanes 1\n"
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_NATIVE = struct.Struct("=4I")  # a lane's state as _md5lanes.update reads and writes it
_SAVED = struct.Struct("<4IQ")


@cache
def available() -> bool:
    """Whether the compiled lanes are built and give hashlib's digests (checked once)."""
    if _c is None:
        return False
    data = bytes(range(256)) * 9
    lengths = (0, 1, 55, 56, 64, 65, 700, len(data), 2 * LANES + 3)
    lanes = Md5Lanes(len(lengths))
    lanes.update([data[:n] for n in lengths])
    return all(
        lanes.hexdigest(j) == hashlib.md5(data[:n], usedforsecurity=False).hexdigest() for j, n in enumerate(lengths)
    )


def is_state(state: bytes) -> bool:
    """Whether ``state`` is a lane state saved by :meth:`Md5Lanes.state` (not, e.g., an OpenSSL one)."""
    return bytes(state[: len(MAGIC)]) == MAGIC


# OpenSSL's MD5_CTX (what md5state saves): A B C D, the bit count (low, high), a 64-byte block buffer, its fill.
_CTX = struct.Struct("=6I64sI")


def from_openssl(state: bytes) -> bytes | None:
    """An OpenSSL MD5 state (``md5state``) as a lane state, or None when it is not one or this process could not
    check that its OpenSSL's states have that layout."""
    return _from_ctx(state) if _layout_checked() else None


def to_openssl(state: bytes) -> bytes | None:
    """A lane state as an OpenSSL MD5 state (for ``md5state.Md5``), or None (not a lane state, or unchecked)."""
    return _to_ctx(state) if _layout_checked() else None


def _from_ctx(state: bytes) -> bytes | None:
    if len(state) != _CTX.size or is_state(state):
        return None
    *words, low, high, block, num = _CTX.unpack(state)
    count = ((high << 32) | low) >> 3
    if num != count % 64 or low & 7:
        return None
    return MAGIC + _SAVED.pack(*words, count) + block[:num]


def _to_ctx(state: bytes) -> bytes | None:
    head = len(MAGIC) + _SAVED.size
    if not is_state(state) or len(state) < head:
        return None
    *words, count = _SAVED.unpack_from(state, len(MAGIC))
    pending = bytes(state[head:])
    if len(pending) != count % 64:
        return None
    bits = (8 * count) & (2**64 - 1)
    return _CTX.pack(*words, bits & 0xFFFFFFFF, bits >> 32, pending.ljust(64, b"\0"), len(pending))


@cache
def _layout_checked() -> bool:
    """Whether OpenSSL's states read as _CTX here: a state moved each way mid-block continues to hashlib's md5."""
    from . import md5state  # only here: it loads OpenSSL

    if not md5state.saveable() or not available():
        return False
    data = bytes(range(256)) * 11 + b"tail"
    ssl = md5state.Md5()
    ssl.update(data[:1001])
    lane_state = _from_ctx(ssl.state() or b"")
    if lane_state is None:
        return False
    lanes = Md5Lanes(1)
    lanes.reset(0, lane_state)
    lanes.update([data[1001:]])
    try:
        back = md5state.Md5(_to_ctx(lanes.state(0)))
    except ValueError:
        return False
    back.update(b"more")
    return (lanes.hexdigest(0), back.hexdigest()) == (
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
        hashlib.md5(data + b"more", usedforsecurity=False).hexdigest(),
    )


class Md5Lanes:
    """``n`` independent MD5 streams (lanes); :meth:`update` gives each lane its own bytes, of any length."""

    def __init__(self, n: int) -> None:
        if _c is None:
            raise RuntimeError("llama_convert._md5lanes is not built")
        if not 0 < n <= MAX_LANES:
            raise ValueError(f"Md5Lanes takes 1 to {MAX_LANES} lanes, not {n}")
        self.n = n
        self._states = bytearray(_NATIVE.pack(*_INIT) * n)
        self._count = [0] * n
        self._pending = [b""] * n

    def reset(self, lane: int, state: bytes | None = None) -> None:
        """Start ``lane`` again: empty, or from a saved ``state`` (ValueError if it is not one)."""
        words, count, pending = _INIT, 0, b""
        if state is not None:
            head = len(MAGIC) + _SAVED.size
            if not is_state(state) or len(state) < head:
                raise ValueError("not a saved md5lanes state")
            *words, count = _SAVED.unpack_from(state, len(MAGIC))
            pending = bytes(state[head:])
            if len(pending) != count % 64:
                raise ValueError("a saved md5lanes state with a torn pending block")
        _NATIVE.pack_into(self._states, 16 * lane, *words)
        self._count[lane], self._pending[lane] = count, pending

    def position(self, lane: int) -> int:
        """Bytes ``lane`` has hashed."""
        return self._count[lane]

    def update(self, chunks: Sequence[Any]) -> None:
        """Append ``chunks[j]`` (a bytes-like object, or None) to lane j, all lanes in one pass."""
        heads: list[Any] = [None] * self.n
        bodies: list[Any] = [None] * self.n
        head_blocks, body_blocks = [0] * self.n, [0] * self.n
        for lane, data in enumerate(chunks):
            if data is None:
                continue
            view = memoryview(data).cast("B")
            self._count[lane] += len(view)
            pending = self._pending[lane]
            if pending:  # complete the partial block first (at most one block per lane)
                need = 64 - len(pending)
                if len(view) < need:
                    self._pending[lane] = pending + bytes(view)
                    continue
                heads[lane], head_blocks[lane] = pending + bytes(view[:need]), 1
                view = view[need:]
            whole = len(view) // 64
            bodies[lane], body_blocks[lane] = view, whole
            self._pending[lane] = bytes(view[64 * whole :])
        if any(head_blocks):
            _c.update(self._states, heads, head_blocks)
        _c.update(self._states, bodies, body_blocks)

    def state(self, lane: int) -> bytes:
        """``lane``'s running state as bytes, for :meth:`reset` in this or a later process."""
        words = _NATIVE.unpack_from(self._states, 16 * lane)
        return MAGIC + _SAVED.pack(*words, self._count[lane]) + self._pending[lane]

    def hexdigest(self, lane: int) -> str:
        """The md5 of the bytes ``lane`` got so far (the lane itself goes on unchanged)."""
        count, pending = self._count[lane], self._pending[lane]
        tail = pending + b"\x80" + bytes((55 - count) % 64) + struct.pack("<Q", (8 * count) & (2**64 - 1))
        state = bytearray(self._states[16 * lane : 16 * lane + 16])
        _c.update(state, [tail], [len(tail) // 64])
        return struct.pack("<4I", *_NATIVE.unpack(state)).hex()


class LaneReadError(Exception):
    """Reading ``paths[index]`` in :func:`hash_files` failed with the OSError ``error``."""

    def __init__(self, index: int, error: OSError) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def hash_files(
    paths: Sequence[os.PathLike[str] | str],
    *,
    chunk_size: int,
    state_every: int,
    starts: dict[int, tuple[int, bytes]] | None = None,
    progress: Callable[[int], None] | None = None,
    on_done: Callable[[int, str], None] | None = None,
    on_state: Callable[[int, int, bytes], None] | None = None,
    drop_cache: bool = False,
    lanes: int = LANES,
) -> list[str]:
    """The md5 hex digests of ``paths``, up to ``lanes`` files at a time in one thread: each round reads
    ``chunk_size`` bytes of every open file and hashes them together; a file that ends gives its lane to the next.

    ``starts`` (index → offset, lane state) continues files hashed part way; ``on_state(index, offset, state)``
    hears each file's state every ``state_every`` bytes; ``progress`` the bytes of each round; ``on_done(index,
    md5)`` each file as it ends. ``drop_cache`` evicts hashed pages. A failing read raises :class:`LaneReadError`.
    """
    todo = list(range(len(paths)))[::-1]  # taken from the end: in the order given
    hasher = Md5Lanes(max(1, min(lanes, len(paths))))
    slots: list[list[Any] | None] = [None] * hasher.n  # [index, file, offset, offset of the last saved state]
    buffers = [bytearray(chunk_size) for _ in slots]
    digests: list[str] = [""] * len(paths)
    try:
        while True:
            for lane in range(hasher.n):
                if slots[lane] is None and todo:
                    slots[lane] = _open(hasher, lane, todo.pop(), paths, (starts or {}))
            if all(slot is None for slot in slots):
                return digests
            chunks: list[Any] = [None] * hasher.n
            for lane, slot in enumerate(slots):
                if slot is None:
                    continue
                try:
                    got = slot[1].readinto(buffers[lane])
                except OSError as exc:
                    raise LaneReadError(slot[0], exc) from exc
                if got:
                    chunks[lane] = memoryview(buffers[lane])[:got]
                    continue
                slot[1].close()
                slots[lane] = None
                digests[slot[0]] = hasher.hexdigest(lane)
                if on_done is not None:
                    on_done(slot[0], digests[slot[0]])
            hasher.update(chunks)
            for lane, slot in enumerate(slots):
                if slot is None or chunks[lane] is None:
                    continue
                got = len(chunks[lane])
                if drop_cache:
                    advise(slot[1].fileno(), slot[2], got, "POSIX_FADV_DONTNEED")
                slot[2] += got
                if on_state is not None and slot[2] - slot[3] >= state_every:
                    on_state(slot[0], slot[2], hasher.state(lane))
                    slot[3] = slot[2]
            if progress is not None and (total := sum(len(c) for c in chunks if c is not None)):
                progress(total)
    finally:
        for slot in slots:
            if slot is not None:
                slot[1].close()


def _open(hasher: Md5Lanes, lane: int, index: int, paths: Sequence[Any], starts: dict) -> list[Any]:
    try:
        f = open(paths[index], "rb", buffering=0)  # noqa: SIM115 (closed by hash_files)
    except OSError as exc:
        raise LaneReadError(index, exc) from exc
    offset = 0
    hasher.reset(lane)
    if (start := starts.get(index)) is not None and is_state(start[1]):
        with contextlib.suppress(ValueError):
            hasher.reset(lane, start[1])
            if hasher.position(lane) == start[0]:
                offset = start[0]
            else:
                hasher.reset(lane)
    try:
        f.seek(offset)
    except OSError as exc:
        f.close()
        raise LaneReadError(index, exc) from exc
    advise(f.fileno(), 0, 0, "POSIX_FADV_SEQUENTIAL")
    return [index, f, offset, offset]


def advise(fd: int, offset: int, length: int, advice: str) -> None:
    """``posix_fadvise`` as a hint: nothing where it is absent (macOS, Windows), refused, or ``fd`` < 0."""
    if hasattr(os, "posix_fadvise") and fd >= 0:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, getattr(os, advice))
