"""Receive buffers for range reads: mapped memory of their own, and parts' buffers reused once nobody
holds a view of them.

Not numpy's (malloc's) memory: once a freed buffer has raised glibc's mmap threshold, large buffers come
from the per-thread heaps, and with two dozen reader threads freeing each other's buffers those heaps
fragment — a 70B's eight shards from a local S3 server peaked at 1.3 GiB of RSS against 0.4 GiB
locally. A mapping is returned to the system when it is freed. Mapping every part afresh costs page
faults (+0.7 CPU-s per GB in the kernel), so the buffers of parts go back to a pool when the last view
of them dies (CPython frees by reference count: when the conversion and the hashing are done with it),
at most ``keep`` of them idle.
"""

from __future__ import annotations

import mmap
import weakref
from collections import deque

import numpy as np

__all__ = ["PART_BYTES", "ReceiveBuffers"]

PART_BYTES = 16 << 20  # a large read is fetched as concurrent ranges of this size (a request costs a round trip)
KEEP = 8  # idle buffers kept for reuse, at most
MAPPED = 256 << 10  # buffers from this size are mapped memory of their own (smaller ones: malloc's, no harm)


class ReceiveBuffers:
    """``take(n)``: a writable buffer of ``n`` bytes; sizes near ``size`` come from (and go back to) a pool."""

    def __init__(self, size: int = PART_BYTES, keep: int = KEEP) -> None:
        self.size = size
        self.keep = keep
        self.reused = 0  # buffers handed out again (for tests)
        self._idle: deque[np.ndarray] = deque()  # append/pop are atomic: a finalizer may run on any thread, anytime

    def take(self, n: int) -> memoryview:
        if not self.size // 4 < n <= self.size:
            return memoryview(mmap.mmap(-1, n)) if n >= MAPPED else memoryview(bytearray(n))
        try:
            whole = self._idle.pop()
            self.reused += 1
        except IndexError:
            whole = np.frombuffer(mmap.mmap(-1, self.size), np.uint8)
        view = whole[:n]  # its own array object: it dies with the last view handed out
        weakref.finalize(view, self._give_back, whole)
        return memoryview(view)

    def _give_back(self, whole: np.ndarray) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(whole)
