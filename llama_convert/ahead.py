"""Running a producer one step ahead of its consumer, in a thread.

A sink that computes blocks (dequantizing, casting, permuting) and then writes them does both in one thread
unless told otherwise: the disk waits while numpy works and numpy waits while the kernel copies. Both release
the GIL, so a producer thread a block or two ahead lets the two overlap. Memory stays bounded: at most
``depth`` finished blocks wait in the queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["ahead"]

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``items`` in order, produced in a background thread at most ``depth`` items ahead.

    The producer's exception is raised here, where the item it failed on would have been. Closing the
    returned generator early (an error in the consumer, a break) stops the producer at its next item."""
    slots: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="llama-convert-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
