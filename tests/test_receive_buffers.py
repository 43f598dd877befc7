"""Receive buffers: parts' buffers are reused only once no view of them is left; other sizes are fresh."""

from __future__ import annotations

from llama_convert.formats.storage.buffers import ReceiveBuffers


def test_a_part_buffer_is_reused_only_after_its_last_view_dies():
    pool = ReceiveBuffers(size=1 << 20, keep=2)
    first = pool.take(1 << 20)
    first[:4] = b"abcd"
    held = first[:4].toreadonly()  # a slice keeps the buffer alive, as a watcher's queued view does
    del first
    second = pool.take(1 << 20)
    assert pool.reused == 0 and bytes(held) == b"abcd"
    second[:4] = b"wxyz"
    assert bytes(held) == b"abcd"  # not the same memory
    del held
    third = pool.take(700 << 10)  # a shorter part comes from the pool too
    assert pool.reused == 1 and len(third) == 700 << 10


def test_sizes_outside_the_pool_and_the_idle_bound():
    pool = ReceiveBuffers(size=1 << 20, keep=1)
    for n in (0, 10, 200 << 10, 2 << 20):
        assert len(pool.take(n)) == n
    assert pool.reused == 0
    a, b = pool.take(1 << 20), pool.take(1 << 20)
    del a, b  # two die, one is kept
    pool.take(1 << 20), pool.take(1 << 20)
    assert pool.reused == 1
