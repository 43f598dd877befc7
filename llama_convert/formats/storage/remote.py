"""A remote folder: a path object with the small part of ``pathlib.Path`` our readers use, and files read by
byte ranges (no local copy), retried on transient errors.

Every path of one source shares one :class:`~.store.RemoteStore`: its filesystem, its retry policy and the
files whose checksums a running conversion computes from the bytes it reads (``watch``).
"""

from __future__ import annotations

import bisect
import fnmatch
import io
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from .buffers import PART_BYTES
from .bytes import open_file
from .store import Buffer, RemoteStore, Watcher

__all__ = ["RemoteBytes", "RemotePath", "RemoteStat", "RemoteStore", "Watcher"]

Piece = tuple[int, memoryview]  # (file offset, bytes)
BLOCK_BYTES = 1 << 20  # small reads (headers, norms, sampled rows) are served from cached blocks of this size
AHEAD_BYTES = 64 << 20  # reading files in order, the next this many bytes are fetched while the last are used,
# shared by the files of a store read side by side (the eight shards of a 70B), a part each at least
AHEAD_PARTS = 4  # a part per thread, this many at a time
MERGE_GAP = 64 << 10  # ranges of one batch this close share a request (a request costs a round trip)
SEQUENTIAL_SLACK = 1 << 20  # a read starting this close after the previous one continues a sequential pass


@dataclass(frozen=True)
class RemoteStat:
    st_size: int
    st_mtime_ns: int


class RemotePath:
    """A file or folder in a remote store (``s3://bucket/prefix``), path-like enough for our readers."""

    __slots__ = ("key", "store")

    def __init__(self, store: RemoteStore, key: str) -> None:
        self.store = store
        self.key = key.strip("/")

    @classmethod
    def from_url(cls, url: str) -> RemotePath:
        return cls(RemoteStore.for_url(url), url.split("://", 1)[1])

    # -- names -----------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.store.url(self.key)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.store.backend.scheme, self.key) == (
            other.store.backend.scheme,
            other.key,
        )

    def __lt__(self, other: RemotePath) -> bool:
        return (self.store.backend.scheme, self.key) < (other.store.backend.scheme, other.key)

    def __hash__(self) -> int:
        return hash((self.store.backend.scheme, self.key))

    def __truediv__(self, name: str) -> RemotePath:
        path = self
        for part in str(name).split("/"):
            if part == "..":
                path = path.parent
            elif part not in ("", "."):
                path = RemotePath(self.store, f"{path.key}/{part}")
        return path

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.store, self.key.rsplit("/", 1)[0]) if "/" in self.key else self

    @property
    def parents(self) -> tuple[RemotePath, ...]:
        out, path = [], self
        while "/" in path.key:
            path = path.parent
            out.append(path)
        return tuple(out)

    def resolve(self) -> RemotePath:
        return self

    def absolute(self) -> RemotePath:
        return self

    def relative_to(self, other: RemotePath) -> str:
        if not self.key.startswith(other.key + "/"):
            raise ValueError(f"{self} is not inside {other}")
        return self.key[len(other.key) + 1 :]

    # -- queries ---------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any] | None:
        return self.store.info(self.key)

    def exists(self) -> bool:
        return self._info() is not None

    def is_file(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "file"

    def is_dir(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "directory"

    def stat(self) -> RemoteStat:
        info = self.store.info(self.key)
        if info is None:
            raise FileNotFoundError(f"{self} does not exist")
        modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        stamp = getattr(modified, "timestamp", None)
        return RemoteStat(int(info.get("size") or 0), int(stamp() * 1e9) if stamp else 0)

    def iterdir(self) -> Iterator[RemotePath]:
        names = self.store.call(self.key, self.store.fs.ls, self.key, detail=False)
        for name in sorted(names):
            name = str(name).strip("/")
            if name != self.key:
                yield RemotePath(self.store, name)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    # -- reading ---------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        data = self.store.call(self.key, self.store.fs.cat_file, self.key)
        watcher = self.store.watchers.get(self.key)
        if watcher is not None:
            watcher.feed(0, memoryview(data))
        return data

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open_bytes(self) -> RemoteBytes:
        return RemoteBytes(self)

    def open(self, mode: str = "rb") -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"{self} is read-only")
        return open_file(self.open_bytes(), 1 << 20)


class RemoteBytes:
    """One remote file read by ranges: large reads as concurrent parts, small ones from cached blocks, and a
    sliding read-ahead while the file is read in order (``AHEAD_PARTS`` parts in flight while the bytes are used).

    Reads hand out views of the fetched bytes (:meth:`read_pieces`) rather than copies: every copy of a
    model's bytes is CPU the other core's hashing and the server need, and fresh buffers cost page faults."""

    def __init__(self, path: RemotePath) -> None:
        self.path = path
        self.name = str(path)
        self.size = path.stat().st_size
        self._lock = threading.Lock()
        self._last_end = -1  # end of the previous large read
        self._ahead: list[tuple[int, int, Future[Buffer]]] = []  # prefetched parts in file order: (start, end, fetch)
        self._pool: ThreadPoolExecutor | None = None
        self._feeding = threading.Lock()
        self._fed = 0  # the watcher has been given the bytes before this offset (or skipped them)

    def fileno(self) -> None:
        return None

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[Buffer]:
        """The bytes of each range; ranges a few KiB apart (zip headers around a norm) share one request."""
        spans: list[list[int]] = []  # [start, end] of each request
        for start, end in sorted(ranges):
            if spans and start - spans[-1][1] <= MERGE_GAP and end - spans[-1][0] <= PART_BYTES:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        if len(spans) == len(ranges):
            return self.path.store.fetch(self.path.key, list(ranges)) if ranges else []
        fetched = self.path.store.fetch(self.path.key, [(s, e) for s, e in spans])
        out: list[Buffer] = []
        for start, end in ranges:
            index = bisect.bisect_right(spans, [start, float("inf")]) - 1
            span_start = spans[index][0]
            out.append(memoryview(fetched[index])[start - span_start : end - span_start])
        return out

    def _parts(self, start: int, end: int) -> list[tuple[int, int]]:
        return [(s, min(s + PART_BYTES, end)) for s in range(start, end, PART_BYTES)]

    @property
    def memo(self) -> dict[str, Any]:
        """A dict shared by every opening of this file in one run (readers keep what they parsed of it)."""
        return self.path.store.memo(self.path.key)

    def read_pieces(self, offset: int, nbytes: int, *, verify: bool = True) -> list[Piece]:
        """The bytes ``offset:offset + nbytes`` as (offset, view) pieces of the fetched, immutable bytes, in order."""
        if offset + nbytes > self.size:
            raise InputError(f"{self.name} is truncated (read past the end); upload it again.")
        pieces: list[Piece] = []
        fetched: list[Piece] = []  # whole parts and blocks the pieces came from, for the hash
        if nbytes and (nbytes >= BLOCK_BYTES // 2 or not self._from_part(offset, nbytes, pieces, fetched)):
            if nbytes < BLOCK_BYTES // 2:
                self._read_cached(offset, nbytes, pieces, fetched)
            else:
                with self._lock:
                    self._read_large(offset, nbytes, pieces, fetched)
        watcher = self.path.store.watchers.get(self.path.key) if verify else None
        if watcher is not None:  # whole parts: the bytes between tensors (zip headers) are hashed, not fetched again
            with self._feeding:
                for start, data in fetched:
                    if start + len(data) > self._fed:
                        skip = max(0, self._fed - start)
                        watcher.feed(start + skip, data[skip:])
                        self._fed = start + len(data)
        return pieces

    def read_into(self, offset: int, out: memoryview, *, verify: bool = True) -> None:
        done = 0
        for _, piece in self.read_pieces(offset, len(out), verify=verify):
            out[done : done + len(piece)] = piece
            done += len(piece)

    def _from_part(self, offset: int, nbytes: int, pieces: list[Piece], fetched: list[Piece]) -> bool:
        """A small read served from a read-ahead part that holds it (fetched or in flight), if there is one."""
        with self._lock:
            found = [(s0, f) for s0, s1, f in self._ahead if s0 <= offset and offset + nbytes <= s1]
        if not found:
            return False
        s0, future = found[0]
        try:
            data = memoryview(future.result())
        except CancelledError:
            return False
        pieces.append((offset, data[offset - s0 : offset - s0 + nbytes]))
        fetched.append((s0, data))
        return True

    def _read_large(self, offset: int, nbytes: int, pieces: list[Piece], fetched: list[Piece]) -> None:
        end, pos = offset + nbytes, offset
        sequential = 0 <= offset - self._last_end <= SEQUENTIAL_SLACK
        kept: list[tuple[int, int, Future[Buffer]]] = []
        for s0, s1, future in self._ahead:
            if s1 <= offset:
                future.cancel()  # behind the reads: not needed any more
                continue
            if s0 <= pos < s1 and pos < end:
                n = min(s1, end) - pos
                data = memoryview(future.result())
                pieces.append((pos, data[pos - s0 : pos - s0 + n]))
                fetched.append((s0, data))
                pos += n
            if s1 > end:
                kept.append((s0, s1, future))
        self._ahead = kept
        if pos < end:
            parts = self._parts(pos, end)
            got = [(s, memoryview(data)) for (s, _), data in zip(parts, self.read_ranges(parts), strict=True)]
            pieces += got
            fetched += got
        self._last_end = end
        if sequential:
            self._read_ahead(end)

    def _read_ahead(self, end: int) -> None:
        """Keep the parts of this file's share of the next ``AHEAD_BYTES`` after ``end`` fetched or in flight."""
        readers = self.path.store.reading_ahead(self, end < self.size)
        covered = max([end, *(s1 for _, s1, _ in self._ahead)])
        stop = min(self.size, end + max(PART_BYTES, AHEAD_BYTES // max(1, readers)))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(AHEAD_PARTS, thread_name_prefix="llama-convert-ahead")
        while covered < stop and (stop - covered >= PART_BYTES or stop == self.size):
            part = (covered, min(covered + PART_BYTES, stop))
            self._ahead.append((*part, self._pool.submit(lambda part=part: self.read_ranges([part])[0])))
            covered = part[1]

    def _read_cached(self, offset: int, nbytes: int, pieces: list[Piece], fetched: list[Piece]) -> None:
        done, store, key = 0, self.path.store, self.path.key
        while done < nbytes:
            index, start = divmod(offset + done, BLOCK_BYTES)
            block = memoryview(store.block(key, index, self.size, BLOCK_BYTES))
            n = min(nbytes - done, len(block) - start)
            pieces.append((offset + done, block[start : start + n]))
            fetched.append((index * BLOCK_BYTES, block))
            done += n

    def close(self) -> None:
        self.path.store.reading_ahead(self, False)
        with self._lock:
            for _, _, future in self._ahead:
                future.cancel()
            self._ahead = []
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
