"""One writer per upload, with take-over of stalled holders (CONTRACT.md, "One writer")."""

from __future__ import annotations

import asyncio
import time

import pytest

from formforge.core.body import BodyEnd, BodyStream
from formforge.core.errors import ErrorKind, UploadError
from formforge.locks.memory import MemoryLocker

UPLOAD = "u" * 22


def body(aborted: list[BodyEnd] | None = None, idle_timeout: float = 60.0) -> BodyStream:
    return BodyStream(idle_timeout, (aborted if aborted is not None else []).append)


@pytest.mark.gen_test
async def test_a_free_lock_is_taken_at_once_and_released() -> None:
    locker = MemoryLocker()
    lock = await locker.acquire(UPLOAD, body().release_request)
    await lock.release()
    again = await locker.acquire(UPLOAD, body().release_request)
    await again.release()


@pytest.mark.gen_test
async def test_a_holder_still_receiving_refuses_and_the_asker_gets_423() -> None:
    locker = MemoryLocker()
    holder = body()
    await locker.acquire(UPLOAD, holder.release_request)
    holder.feed(b"fresh bytes")  # received just now: active
    with pytest.raises(UploadError) as error:
        await locker.acquire(UPLOAD, body().release_request)
    assert error.value.kind is ErrorKind.UPLOAD_LOCKED
    assert holder.end is None  # the active holder is unharmed


@pytest.mark.gen_test
async def test_a_stalled_holder_is_stopped_and_lets_go_within_a_second() -> None:
    locker = MemoryLocker()
    aborted: list[BodyEnd] = []
    holder = body(aborted)
    lock = await locker.acquire(UPLOAD, holder.release_request)
    holder._last_activity -= 1.5  # as if nothing arrived for 1.5 s

    async def holder_saves_and_releases() -> None:
        async for _ in holder:
            pass
        await lock.release()

    task = asyncio.create_task(holder_saves_and_releases())
    started = time.monotonic()
    new_lock = await locker.acquire(UPLOAD, body().release_request)
    assert time.monotonic() - started < 1.0
    assert (holder.end, aborted) == (BodyEnd.STOPPED, [BodyEnd.STOPPED])
    await task
    await new_lock.release()


@pytest.mark.gen_test
async def test_force_takes_over_even_an_active_holder() -> None:
    locker = MemoryLocker()
    holder = body()
    lock = await locker.acquire(UPLOAD, holder.release_request)
    holder.feed(b"active")
    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(lock.release()))
    taken = await locker.acquire(UPLOAD, body().release_request, force=True)
    assert holder.end is BodyEnd.STOPPED
    await taken.release()


@pytest.mark.gen_test
async def test_a_holder_that_agrees_but_never_lets_go_costs_at_most_the_wait() -> None:
    locker = MemoryLocker(wait_seconds=0.2)
    await locker.acquire(UPLOAD, lambda force: True)
    started = time.monotonic()
    with pytest.raises(UploadError) as error:
        await locker.acquire(UPLOAD, body().release_request)
    assert error.value.kind is ErrorKind.UPLOAD_LOCKED
    assert time.monotonic() - started < 0.5


# -- the body stream -------------------------------------------------------------------------

@pytest.mark.gen_test
async def test_feed_pushes_back_until_the_consumer_takes_the_chunk() -> None:
    stream = body()
    waiter = stream.feed(b"one")
    assert waiter is not None and not waiter.done()
    iterator = aiter(stream)
    assert await anext(iterator) == b"one"
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
