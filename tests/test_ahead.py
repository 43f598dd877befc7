"""``ahead``: a producer thread a few items ahead — order kept, errors raised in place, early stop clean."""

from __future__ import annotations

import threading

import pytest

from llama_convert.ahead import ahead


def test_items_in_order_and_all_of_them():
    assert list(ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(ahead([])) == []


def test_never_more_than_depth_items_ahead():
    produced = []

    def items():
        for i in range(200):
            produced.append(i)
            yield i

    # Whenever the consumer holds item i, the producer has made at most: i, ``depth`` queued items, and the
    # one it is trying to put.
    for i in ahead(items(), depth=2):
        assert len(produced) <= i + 1 + 2 + 1


def test_producer_error_is_raised_where_its_item_would_be():
    def items():
        yield 1
        yield 2
        raise ValueError("shard 3 is damaged")

    got = []
    with pytest.raises(ValueError, match="shard 3 is damaged"):
        for item in ahead(items()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_producer():
    made = []

    def items():
        for i in range(10_000):
            made.append(i)
            yield i

    stream = ahead(items(), depth=1)
    assert next(stream) == 0
    producers = [t for t in threading.enumerate() if t.name == "llama-convert-ahead"]
    assert producers
    stream.close()  # joins the producer thread
    assert not any(t.is_alive() for t in producers)
    assert len(made) < 10_000
