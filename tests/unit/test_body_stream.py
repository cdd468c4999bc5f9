"""A request body as an async iterator: backpressure, a cut connection, a stalled client.

How a body is stopped when another request takes its upload over is the locker contract's
(tests/contract/test_locker_contract.py).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from formforge.core.body import UNHELD_CHUNK_MAX, BodyEnd, BodyStream


def body(aborted: list[BodyEnd] | None = None, idle_timeout: float = 60.0) -> BodyStream:
    return BodyStream(idle_timeout, (aborted if aborted is not None else []).append)


@pytest.mark.gen_test
async def test_feed_pushes_back_until_the_consumer_takes_the_chunk() -> None:
    stream = body()
    waiter = stream.feed(b"one")
    assert isinstance(waiter, asyncio.Future)
    assert not waiter.done()
    iterator = aiter(stream)
    assert await anext(iterator) == b"one"
    assert waiter.done()


@pytest.mark.gen_test
async def test_a_chunk_the_consumer_waits_for_is_not_pushed_back() -> None:
    stream = body()
    iterator = aiter(stream)
    taken = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)  # the consumer now waits for data
    assert stream.feed(b"one") is None  # it takes the chunk at its next step
    waiter = stream.feed(b"two")  # it has not yet: this one is held back
    assert isinstance(waiter, asyncio.Future)
    assert not waiter.done()
    assert await taken == b"one"
    assert not waiter.done()
    assert await anext(iterator) == b"two"
    assert waiter.done()


@pytest.mark.gen_test
async def test_a_cut_body_ends_the_iterator_after_what_arrived() -> None:
    stream = body()
    stream.feed(b"a")
    stream.feed(b"b")
    stream.cut()
    assert [chunk async for chunk in stream] == [b"a", b"b"]
    assert stream.end is BodyEnd.CUT


@pytest.mark.gen_test
async def test_a_stalled_body_ends_after_the_idle_timeout() -> None:
    aborted: list[BodyEnd] = []
    stream = body(aborted, idle_timeout=0.2)
    stream.feed(b"a")
    started = time.monotonic()
    assert [chunk async for chunk in stream] == [b"a"]
    assert 0.15 < time.monotonic() - started < 2.0
    assert aborted == [BodyEnd.STALLED]


@pytest.mark.gen_test
async def test_as_a_lock_holder_a_body_reports_its_idle_time_and_stops_when_told() -> None:
    aborted: list[BodyEnd] = []
    stream = body(aborted)
    stream.feed(b"a")
    assert stream.idle_seconds() == 0.0  # a chunk waits for the store: receiving
    assert [await anext(aiter(stream))] == [b"a"]
    assert 0.0 <= stream.idle_seconds() < 1.0
    stream.stop()
    assert (stream.end, aborted, stream.idle_seconds()) == (
        BodyEnd.STOPPED,
        [BodyEnd.STOPPED],
        float("inf"),
    )
    assert [chunk async for chunk in stream] == []


@pytest.mark.gen_test
async def test_a_large_chunk_is_pushed_back_even_when_the_consumer_waits() -> None:
    stream = body()
    iterator = aiter(stream)
    taken = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)
    waiter = stream.feed(b"x" * (UNHELD_CHUNK_MAX + 1))
    assert isinstance(waiter, asyncio.Future)
    assert len(await taken) == UNHELD_CHUNK_MAX + 1
    assert waiter.done()
