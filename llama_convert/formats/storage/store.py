"""One remote store read through fsspec (and plain HTTP range reads where it signs URLs): its retry policy,
its error sentences, a small cache of blocks, what readers parsed of its files, and the files whose
checksums a running conversion computes from the bytes it reads (``watch``)."""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .backends import Backend, backend_for, filesystem, is_transient, translate
from .direct import DirectRanges, direct_ranges

__all__ = ["Buffer", "RemoteStore", "Watcher"]

T = TypeVar("T")
Buffer = bytes | memoryview  # fetched bytes: immutable (read-only views of what was received)
CACHED_BLOCKS = 32  # at most this many blocks are kept, per store
ATTEMPTS = 5


class Watcher(Protocol):
    """Told of every verified read of one file (``offset``, the fetched bytes: immutable, so a watcher may keep
    them and hash them later, on a thread of its own)."""

    def feed(self, offset: int, data: memoryview) -> None: ...


class RemoteStore:
    """One remote store: the fsspec filesystem, retries with back-off, error sentences, watched files."""

    def __init__(
        self,
        backend: Backend,
        fs: Any,
        *,
        direct: DirectRanges | None = None,
        attempts: int = ATTEMPTS,
        backoff: float = 0.25,
    ) -> None:
        self.backend = backend
        self.fs = fs
        self.direct = direct  # range reads by plain HTTP where the store signs a URL (else fsspec's reads)
        self.attempts = attempts
        self.backoff = backoff
        self.watchers: dict[str, Watcher] = {}
        self.lock = threading.Lock()
        self.requests = 0  # range and metadata requests made (for tests and benchmarks)
        self._infos: dict[str, dict[str, Any] | None] = {}
        self._blocks: OrderedDict[tuple[str, int], Buffer] = OrderedDict()
        self._memos: dict[str, dict[str, Any]] = {}
        self._reading_ahead: weakref.WeakSet[object] = weakref.WeakSet()  # open files read ahead (sharing a budget)

    def memo(self, key: str) -> dict[str, Any]:
        """The dict readers of ``key`` share in this run (what they parsed of its index, say)."""
        with self.lock:
            return self._memos.setdefault(key, {})

    @classmethod
    def for_url(cls, url: str) -> RemoteStore:
        backend = backend_for(url)
        fs = filesystem(backend)
        return cls(backend, fs, direct=direct_ranges(backend.protocol, fs))

    def url(self, key: str) -> str:
        return f"{self.backend.scheme}://{key}"

    def call(self, key: str, fn: Callable[..., T], *args: Any, missing_ok: bool = False, **kwargs: Any) -> T | None:
        """``fn(*args)``, tried again after transient failures; refusals become one sentence (``None`` for
        a missing file when ``missing_ok``)."""
        for attempt in range(self.attempts):
            try:
                self.requests += 1
                return fn(*args, **kwargs)
            except Exception as exc:
                if missing_ok and isinstance(exc, FileNotFoundError):
                    return None
                if attempt + 1 == self.attempts or not is_transient(exc):
                    raise translate(exc, self.url(key), self.backend) from None
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def reading_ahead(self, reader: object, active: bool = True) -> int:
        """Count ``reader`` among the files being read ahead (or no longer): how many there are now."""
        with self.lock:
            (self._reading_ahead.add if active else self._reading_ahead.discard)(reader)
            return len(self._reading_ahead)

    def watch(self, key: str, watcher: Watcher) -> None:
        with self.lock:
            self.watchers[key] = watcher

    def unwatch(self, key: str) -> None:
        with self.lock:
            self.watchers.pop(key, None)

    def fetch(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[Buffer]:
        """The bytes of ``ranges`` of ``key`` (fetched concurrently), each checked complete."""
        starts, ends = [s for s, _ in ranges], [e for _, e in ranges]

        def through_fs() -> list[Buffer]:
            if len(ranges) == 1:
                return [self.fs.cat_file(key, start=starts[0], end=ends[0])]
            return self.fs.cat_ranges([key] * len(ranges), starts, ends, on_error="raise")

        def get() -> list[Buffer]:
            direct = self.direct
            if direct is None:
                parts = through_fs()
            else:
                try:
                    parts = direct.fetch(key, ranges)
                except (PermissionError, ValueError):
                    # A signed URL may not be enough (a bucket in another region, headers the object needs):
                    # the store's own client knows, and reads the rest of the run too.
                    self.direct = None
                    parts = through_fs()
            for (start, end), data in zip(ranges, parts, strict=True):
                if len(data) != end - start:
                    raise ConnectionError(f"short read at {start}: {len(data)} of {end - start} bytes")
            return parts

        return self.call(key, get)

    def info(self, key: str) -> dict[str, Any] | None:
        """fsspec's ``info`` of ``key`` (None when missing), asked once per store: a run reads a snapshot."""
        with self.lock:
            if key in self._infos:
                return self._infos[key]
        info = self.call(key, self.fs.info, key, missing_ok=True)
        with self.lock:
            self._infos[key] = info
        return info

    def block(self, key: str, index: int, size: int, block_bytes: int) -> Buffer:
        """Block ``index`` (of ``block_bytes``) of ``key``, a file of ``size`` bytes, from the cache or fetched."""
        with self.lock:
            data = self._blocks.get((key, index))
            if data is not None:
                self._blocks.move_to_end((key, index))
                return data
        start = index * block_bytes
        (data,) = self.fetch(key, [(start, min(size, start + block_bytes))])
        with self.lock:
            self._blocks[(key, index)] = data
            while len(self._blocks) > CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        return data
