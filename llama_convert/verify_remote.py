"""Checksums of a remote source, computed from the bytes the conversion reads.

A local source is hashed by :class:`verify.BackgroundVerify` in threads beside the conversion (reading
twice costs page cache, not a download). A remote source is not read twice: every large file listed in
checklist.chk is *watched* — the range reads of the conversion, which arrive in file order, are hashed
as they pass (whole fetched parts, so the zip headers between tensors come with them), other gaps are
fetched and hashed in order, and the tail nobody read is fetched at the end. Small files (params.json,
tokenizer.model) are hashed whole. A mismatch raises before the output is renamed into place, so a
corrupted object never produces an output.

Each watched file keeps its order (and fetches its gaps) on a thread of its own; the MD5 itself runs, for
the shards of a model read side by side, in ``md5lanes``' vector lanes on one shared thread (eight shards
cost about what two cost with OpenSSL), else with OpenSSL on the file's thread.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from . import md5lanes, verify
from .errors import MissingFileError
from .formats.storage import RemotePath
from .formats.storage.buffers import PART_BYTES
from .verify import VerifyReport, expected_checksums, raise_for_report

__all__ = ["HashOnRead", "StreamVerify"]

FILL_BYTES = 8 << 20  # gaps are fetched in pieces of this size,
FILL_PARTS = 4  # this many at a time
QUEUED_BYTES = 128 << 20  # fed bytes waiting for the hashing threads, at most, shared by the watched files
MIN_QUEUED = PART_BYTES  # a watched file's share of it, at least (a part)
MAX_GAP = 64 << 20  # a read further ahead is not hashed now (a side job's, or out of file order): the stream
# hashes those bytes when it gets there, or the end fetches them
_SMALL = 64 << 20  # files hashed whole instead of watched
LANE_STEP = 1 << 20  # SharedLanes: bytes of each lane hashed per pass (then finished chunks are released)


class Digest(Protocol):
    """One watched file's running MD5: bytes handed over are hashed in order, ``done`` called once they are."""

    def update(self, data: memoryview, done: Callable[[], None] | None = None) -> None: ...

    def settle(self, limit: int = 0) -> None:
        """Wait until at most ``limit`` bytes handed over are not hashed yet (raising a hashing error)."""

    def hexdigest(self) -> str: ...


class OpenSslDigest:
    """hashlib's MD5, on the caller's thread (it releases the GIL for large buffers)."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: memoryview, done: Callable[[], None] | None = None) -> None:
        self._md5.update(data)
        if done is not None:
            done()

    def settle(self, limit: int = 0) -> None:
        pass

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


class SharedLanes:
    """The MD5s of ``n`` files in the lanes of one :class:`md5lanes.Md5Lanes`, on a thread of its own.

    Files hand over their bytes in order (from any thread); each pass hashes up to ``LANE_STEP`` bytes of
    every file that has some waiting, side by side in the vectors. A hashing error is kept and raised to
    every later :meth:`settle`; the callbacks are called all the same (the callers' budgets are released)."""

    def __init__(self, n: int) -> None:
        self._lanes = md5lanes.Md5Lanes(n)
        self._queues: list[deque[tuple[memoryview, Callable[[], None] | None]]] = [deque() for _ in range(n)]
        self._waiting = [0] * n  # bytes handed over and not hashed, per lane
        self._offsets = [0] * n  # into each queue's first chunk
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="llama-convert-md5lanes", daemon=True)
        self._thread.start()

    def lane(self, j: int) -> Digest:
        return _Lane(self, j)

    def update(self, j: int, data: memoryview, done: Callable[[], None] | None) -> None:
        with self._changed:
            self._queues[j].append((data, done))
            self._waiting[j] += len(data)
            self._changed.notify_all()

    def settle(self, j: int, limit: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._waiting[j] <= limit or self._error is not None)
            if self._error is not None:
                raise self._error

    def hexdigest(self, j: int) -> str:
        self.settle(j, 0)
        return self._lanes.hexdigest(j)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or any(self._queues))
                if self._closed:  # cancelled: what is left is not hashed, its budgets are released
                    left = [done for q in self._queues for _, done in q if done is not None]
                    self._queues = [deque() for _ in self._queues]
                    self._waiting = [0] * len(self._queues)
                    self._changed.notify_all()
                    break
                chunks = [
                    q[0][0][self._offsets[j] : self._offsets[j] + LANE_STEP] if q else None
                    for j, q in enumerate(self._queues)
                ]
            if self._error is None:
                try:
                    self._lanes.update(chunks)  # the GIL released while the vectors run
                except BaseException as exc:  # kept, raised to every settle of the files
                    self._error = exc
            self._advance(chunks)
        for done in left:
            done()

    def _advance(self, chunks: list[memoryview | None]) -> None:
        finished: list[Callable[[], None]] = []
        with self._changed:
            for j, chunk in enumerate(chunks):
                if chunk is None:
                    continue
                self._offsets[j] += len(chunk)
                self._waiting[j] -= len(chunk)
                data, done = self._queues[j][0]
                if self._offsets[j] == len(data):
                    self._queues[j].popleft()
                    self._offsets[j] = 0
                    if done is not None:
                        finished.append(done)
            self._changed.notify_all()
        for done in finished:  # outside the lock: a callback takes its file's own
            done()


class _Lane:
    def __init__(self, owner: SharedLanes, j: int) -> None:
        self._owner, self._j = owner, j

    def update(self, data: memoryview, done: Callable[[], None] | None = None) -> None:
        self._owner.update(self._j, data, done)

    def settle(self, limit: int = 0) -> None:
        self._owner.settle(self._j, limit)

    def hexdigest(self) -> str:
        return self._owner.hexdigest(self._j)


class HashOnRead:
    """md5 of one remote file, fed the bytes the conversion reads (in increasing offsets; bytes already
    hashed are skipped, a small gap is fetched and hashed first, a read far ahead waits for its turn).

    The ordering runs on a thread of its own, off the conversion's path: the fed bytes are the fetched ones
    (immutable), queued in order, at most ``queued`` bytes of them not hashed yet before a feed waits. The
    MD5 is ``digest`` (OpenSSL on that thread unless given, e.g. a lane of :class:`SharedLanes`)."""

    def __init__(self, path: RemotePath, size: int, queued: int = QUEUED_BYTES, digest: Digest | None = None) -> None:
        self.path = path
        self.size = size
        self.queued = queued
        self.position = 0
        self.fetched = 0  # bytes fetched only to hash them (gaps and the unread tail)
        self._digest = digest if digest is not None else OpenSslDigest()
        self._queued = 0  # bytes fed and not hashed yet
        self._room = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llama-convert-md5")
        self._jobs: list[Future[None]] = []

    def feed(self, offset: int, data: memoryview) -> None:
        n = len(data)
        with self._room:  # in the order fed: the ordering thread takes them first in, first out
            self._room.wait_for(lambda: self._closed or self._queued == 0 or self._queued + n <= self.queued)
            if self._closed:  # a read that was under way when the run was cancelled
                return
            self._queued += n
            self._jobs = [j for j in self._jobs if not j.done() or j.exception() is not None]
            self._jobs.append(self._pool.submit(self._hash, offset, data))

    def _release(self, n: int) -> None:
        with self._room:
            self._queued -= n
            self._room.notify_all()

    def _hash(self, offset: int, data: memoryview) -> None:
        held = len(data)
        try:
            if offset > self.position + MAX_GAP:
                return
            if offset > self.position:
                self._fill(offset)
            start = self.position - offset
            if start < len(data):
                self.position = offset + len(data)
                self._digest.update(data[start:], functools.partial(self._release, held))
                held = 0  # released by the digest once hashed (later, on the shared lanes' thread)
        finally:
            if held:
                self._release(held)

    def _fill(self, until: int) -> None:
        while self.position < until:  # FILL_PARTS ranges at a time, fetched concurrently
            starts = range(self.position, min(until, self.position + FILL_PARTS * FILL_BYTES), FILL_BYTES)
            for data in self.path.store.fetch(self.path.key, [(s, min(until, s + FILL_BYTES)) for s in starts]):
                self._digest.update(memoryview(data))
                self.fetched += len(data)
                self.position += len(data)
            self._digest.settle(FILL_PARTS * FILL_BYTES)  # one batch waiting while the next is fetched

    def hexdigest(self) -> str:
        """The md5 of the whole file: every queued feed hashed, then the tail nobody read fetched."""
        with self._room:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.result()  # a failed gap fetch is raised here
        self._pool.submit(self._fill, self.size).result()
        self._digest.settle(0)
        return self._digest.hexdigest()

    def close(self) -> None:
        with self._room:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)  # a cancelled job's bytes are no longer waited for
        with self._room:
            self._room.notify_all()


class StreamVerify:
    """The remote counterpart of ``verify.BackgroundVerify`` (same ``check``/``result``/``cancel``)."""

    def __init__(
        self,
        src: RemotePath,
        *,
        workers: int = 1,
        skip: Collection[str] = (),
        on_verified: Callable[[str, str], None] | None = None,
    ) -> None:
        self._src = src
        self._on_verified = on_verified
        self._started = time.perf_counter()
        self.watched: dict[str, HashOnRead] = {}
        self.expected: dict[str, str] = {}
        self.missing: list[str] = []
        self._small: list[str] = []
        self._lanes: SharedLanes | None = None
        try:
            self.expected = expected_checksums(src)  # type: ignore[arg-type]
        except MissingFileError:
            return
        large: dict[str, int] = {}
        for name in self.expected:
            if name in skip:
                continue
            info = src.store.info((src / name).key)
            if info is None or info.get("type") != "file":
                self.missing.append(name)
            elif int(info.get("size") or 0) > _SMALL:
                large[name] = int(info["size"])
            else:
                self._small.append(name)
        share = max(MIN_QUEUED, QUEUED_BYTES // max(1, len(large)))  # the shards of a model are read side by side
        if verify.LANES and 1 < len(large) <= md5lanes.MAX_LANES and md5lanes.available():
            self._lanes = SharedLanes(len(large))
        for j, (name, size) in enumerate(large.items()):
            path = src / name
            digest = self._lanes.lane(j) if self._lanes is not None else None
            self.watched[name] = HashOnRead(path, size, share, digest)
            path.store.watch(path.key, self.watched[name])

    def check(self) -> None:
        """Nothing is known before a file's last byte: mismatches are raised by :meth:`result`."""

    def result(self) -> bool:
        """Finish every hash (fetching what the conversion did not read), raise ChecksumError on a
        mismatch, return whether a checklist was verified."""
        if not self.expected:
            return False
        try:
            actual = {
                name: hashlib.md5((self._src / name).read_bytes(), usedforsecurity=False).hexdigest()
                for name in self._small
            }
            actual.update({name: h.hexdigest() for name, h in self.watched.items()})
        finally:
            self.cancel()
        mismatched = tuple((n, self.expected[n], actual[n]) for n in sorted(actual) if actual[n] != self.expected[n])
        if self._on_verified is not None:
            for name in sorted(actual):
                if actual[name] == self.expected[name]:
                    self._on_verified(name, actual[name])
        report = VerifyReport(
            checked=tuple(sorted(actual)),
            missing=tuple(sorted(self.missing)),
            mismatched=mismatched,
            unlisted=(),
            bytes_hashed=sum(h.size for h in self.watched.values()),
            seconds=time.perf_counter() - self._started,
        )
        raise_for_report(report, self._src)  # type: ignore[arg-type]
        return True

    def cancel(self) -> None:
        for name, watcher in self.watched.items():
            path = self._src / name
            path.store.unwatch(path.key)
            watcher.close()
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None

    @property
    def fetched(self) -> int:
        """Bytes fetched only for hashing (beyond what the conversion read)."""
        return sum(h.fetched for h in self.watched.values())
