"""Checksums of a remote source, computed from the bytes the conversion reads.

A local source is hashed by :class:`verify.BackgroundVerify` in threads beside the conversion (reading
twice costs page cache, not a download). A remote source is not read twice: every large file listed in
checklist.chk is *watched* — the range reads of the conversion, which arrive in file order, are hashed
as they pass (whole fetched parts, so the zip headers between tensors come with them), other gaps are
fetched and hashed in order, and the tail nobody read is fetched at the end. Small files (params.json,
tokenizer.model) are hashed whole. A mismatch raises before the output is renamed into place, so a
corrupted object never produces an output.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor

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


class HashOnRead:
    """md5 of one remote file, fed the bytes the conversion reads (in increasing offsets; bytes already
    hashed are skipped, a small gap is fetched and hashed first, a read far ahead waits for its turn).

    The hashing runs on a thread of its own, off the conversion's path: the fed bytes are the fetched ones
    (immutable), queued in order, at most ``queued`` bytes of them before a feed waits."""

    def __init__(self, path: RemotePath, size: int, queued: int = QUEUED_BYTES) -> None:
        self.path = path
        self.size = size
        self.queued = queued
        self.position = 0
        self.fetched = 0  # bytes fetched only to hash them (gaps and the unread tail)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._queued = 0  # bytes fed and not hashed yet
        self._room = threading.Condition()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llama-convert-md5")
        self._jobs: list[Future[None]] = []

    def feed(self, offset: int, data: memoryview) -> None:
        n = len(data)
        with self._room:  # in the order fed: the hashing thread takes them first in, first out
            self._room.wait_for(lambda: self._queued == 0 or self._queued + n <= self.queued)
            self._queued += n
            self._jobs = [j for j in self._jobs if not j.done() or j.exception() is not None]
            self._jobs.append(self._pool.submit(self._hash, offset, data))

    def _hash(self, offset: int, data: memoryview) -> None:
        try:
            if offset > self.position + MAX_GAP:
                return
            if offset > self.position:
                self._fill(offset)
            start = self.position - offset
            if start < len(data):
                self._md5.update(data[start:])
                self.position = offset + len(data)
        finally:
            with self._room:
                self._queued -= len(data)
                self._room.notify_all()

    def _fill(self, until: int) -> None:
        while self.position < until:  # FILL_PARTS ranges at a time, fetched concurrently
            starts = range(self.position, min(until, self.position + FILL_PARTS * FILL_BYTES), FILL_BYTES)
            for data in self.path.store.fetch(self.path.key, [(s, min(until, s + FILL_BYTES)) for s in starts]):
                self._md5.update(data)
                self.fetched += len(data)
                self.position += len(data)

    def hexdigest(self) -> str:
        """The md5 of the whole file: every queued feed hashed, then the tail nobody read fetched."""
        with self._room:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.result()  # a failed gap fetch is raised here
        self._pool.submit(self._fill, self.size).result()
        return self._md5.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
        for name, size in large.items():
            path = src / name
            self.watched[name] = HashOnRead(path, size, share)
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

    @property
    def fetched(self) -> int:
        """Bytes fetched only for hashing (beyond what the conversion read)."""
        return sum(h.fetched for h in self.watched.values())
