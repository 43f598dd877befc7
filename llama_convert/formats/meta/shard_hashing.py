"""The MD5 (and zip members' CRC-32) of shard files as they are written, off the writing thread.

Two ways, one interface (:class:`FileHash`, one per file): :class:`LaneHashes` hashes all the shards of a
checkpoint on one thread in ``md5lanes``' vector lanes (eight shards cost about what two cost with OpenSSL);
:class:`ThreadMd5` hashes each file with OpenSSL on an executor of its own (where the lanes are not built).
Either way each file's bytes are hashed in the order written, and the buffers handed over are not reused by
the caller, so they can be hashed later.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ... import md5lanes
from ...md5state import Md5, saveable

__all__ = ["FileHash", "LaneHashes", "ThreadMd5"]

_IN_FLIGHT = 4  # ThreadMd5: hash jobs queued per file before the writer waits (bounds the blocks kept alive)
_BATCHES_IN_FLIGHT = 2  # LaneHashes: the same for its batches
_BATCH_BYTES = 64 << 20  # LaneHashes: bytes collected before a batch goes to the thread anyway


class Crc(Protocol):
    def update(self, data: memoryview) -> None: ...


class FileHash(Protocol):
    """One file's running MD5 (with the CRC-32 of the zip members that ask for it)."""

    def add(self, view: memoryview, crc: Crc | None) -> None:
        """Hash ``view`` after everything added before (and fold it into ``crc``), later, on the hash thread."""

    def drain(self) -> None:
        """Wait until everything added is hashed."""

    def hexdigest(self) -> str: ...

    def state(self) -> bytes | None:
        """The running state after everything added (drained first), or None where it cannot be saved."""

    def restore(self, state: bytes) -> bool:
        """Continue from a saved ``state`` (either kind); False when it cannot be used here."""


def _md5_and_crc(md5: Md5, crc: Crc | None, view: memoryview) -> None:
    md5.update(view)
    if crc is not None:
        crc.update(view)


class ThreadMd5:
    """A file hashed with OpenSSL's MD5 on ``executor`` (a single thread: the file's bytes stay in order)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._md5 = Md5()
        self._jobs: deque[Future] = deque()

    def add(self, view: memoryview, crc: Crc | None) -> None:
        # hashlib and zlib release the GIL for large buffers: hashing overlaps the next block's read and write.
        self._jobs.append(self._executor.submit(_md5_and_crc, self._md5, crc, view))
        while len(self._jobs) > _IN_FLIGHT:
            self._jobs.popleft().result()

    def drain(self) -> None:
        while self._jobs:
            self._jobs.popleft().result()

    def hexdigest(self) -> str:
        self.drain()
        return self._md5.hexdigest()

    def state(self) -> bytes | None:
        self.drain()
        return self._md5.state()

    def restore(self, state: bytes) -> bool:
        if md5lanes.is_state(state):
            converted = md5lanes.to_openssl(state)
            if converted is None:
                return False
            state = converted
        if not saveable():
            return False
        try:
            self._md5 = Md5(state)
        except ValueError:
            return False
        return True


class LaneHashes:
    """``n`` files hashed together on one thread, file j in lane j of an :class:`md5lanes.Md5Lanes`.

    Writes are collected per file and handed to the thread in batches: when every file has something
    waiting, or ``_BATCH_BYTES`` are waiting. The thread advances all files with data by the same number of
    bytes at a time, so lanes run side by side in the vectors (a writer that feeds its files in turn, a
    block each, keeps them all busy). :meth:`file` gives file j's :class:`FileHash`.
    """

    def __init__(self, n: int, executor: ThreadPoolExecutor) -> None:
        self._lanes = md5lanes.Md5Lanes(n)
        self._executor = executor
        self._waiting: list[list[tuple[memoryview, Crc | None]]] = [[] for _ in range(n)]
        self._empty = n  # files with nothing waiting
        self._bytes = 0
        self._jobs: deque[Future] = deque()

    def file(self, lane: int) -> FileHash:
        return _Lane(self, lane)

    def add(self, lane: int, view: memoryview, crc: Crc | None) -> None:
        waiting = self._waiting[lane]
        if not waiting:
            self._empty -= 1
        waiting.append((view, crc))
        self._bytes += len(view)
        if self._empty == 0 or self._bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if self._empty == len(self._waiting):  # nothing waiting
            return
        batch, self._waiting = self._waiting, [[] for _ in self._waiting]
        self._empty, self._bytes = len(batch), 0
        self._jobs.append(self._executor.submit(self._hash, batch))
        while len(self._jobs) > _BATCHES_IN_FLIGHT:
            self._jobs.popleft().result()

    def drain(self) -> None:
        self._submit()
        while self._jobs:
            self._jobs.popleft().result()

    def _hash(self, batch: list[list[tuple[memoryview, Crc | None]]]) -> None:
        """Feed the batch to the lanes, every file with data advancing by the same length each round."""
        queues = [deque(items) for items in batch]
        offsets = [0] * len(queues)
        while True:
            active = [j for j, q in enumerate(queues) if q]
            if not active:
                return
            step = min(len(queues[j][0][0]) - offsets[j] for j in active)
            chunks: list[Any] = [None] * len(queues)
            for j in active:
                view, crc = queues[j][0]
                piece = view[offsets[j] : offsets[j] + step]
                chunks[j] = piece
                if crc is not None:
                    crc.update(piece)
                offsets[j] += step
                if offsets[j] == len(view):
                    queues[j].popleft()
                    offsets[j] = 0
            self._lanes.update(chunks)

    def hexdigest(self, lane: int) -> str:
        self.drain()
        return self._lanes.hexdigest(lane)

    def state(self, lane: int) -> bytes:
        self.drain()
        return self._lanes.state(lane)

    def restore(self, lane: int, state: bytes) -> bool:
        self.drain()
        if not md5lanes.is_state(state):
            converted = md5lanes.from_openssl(state)
            if converted is None:
                return False
            state = converted
        try:
            self._lanes.reset(lane, state)
        except ValueError:
            return False
        return True


class _Lane:
    def __init__(self, owner: LaneHashes, lane: int) -> None:
        self._owner, self._lane = owner, lane

    def add(self, view: memoryview, crc: Crc | None) -> None:
        self._owner.add(self._lane, view, crc)

    def drain(self) -> None:
        self._owner.drain()

    def hexdigest(self) -> str:
        return self._owner.hexdigest(self._lane)

    def state(self) -> bytes | None:
        return self._owner.state(self._lane)

    def restore(self, state: bytes) -> bool:
        return self._owner.restore(self._lane, state)
