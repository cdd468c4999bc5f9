"""The locker contract, run over every locker (CONTRACT.md, "One writer at a time").

Each case runs over the memory locker, and over the file and Redis lockers twice: with the
asker in the holder's own locker (two requests of one process), and in another locker over
the same data dir or Redis (another process or node, whose table knows nothing of the
holder: the ask goes over a Unix socket or pub/sub). Redis is a real `redis-server` on
127.0.0.1. Holders are real request bodies (`BodyStream`), except where a case needs a
holder that misbehaves. Holders in other processes, and killed ones: test_locks_cross_process.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from formforge.core.body import BodyEnd, BodyStream
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import new_upload_id
from formforge.core.locker import BRIEF, Lock, Locker
from formforge.locks.file import FileLocker
from formforge.locks.memory import MemoryLocker
from formforge.locks.redis import RedisLocker
from tests.lock_holders import active_body, idle_body, refused, release_when_stopped, stalled_body
from tests.redis_server import redis_url_fixture  # noqa: F401

AT_ONCE = 0.5  # seconds: a free lock, a refusal
TAKEOVER = 1.0  # CONTRACT.md: "the new request proceeds within a second"
SLACK = 0.5  # scheduling slack on top of a bound (2 shared cores, CI under load)


@dataclass
class Lockers:
    """The holder's locker and the asker's (the same one, or another over the same data)."""

    kind: str
    target: str  # the data dir, or the Redis URL
    across: bool  # the asker's locker is another one
    made: list[Locker] = field(default_factory=list)

    async def new(self, **options: float) -> Locker:
        """A locker already connected: the contract's times are the protocol's alone (a
        new RedisLocker connects and loads its scripts on first use, slow on a busy CI)."""
        locker: Locker
        if self.kind == "memory":
            locker = MemoryLocker(**options)
        elif self.kind == "file":
            locker = FileLocker(Path(self.target), **options)
        else:
            locker = RedisLocker(self.target, **options)
        self.made.append(locker)
        await (await locker.acquire(new_upload_id(), idle_body())).release()
        return locker

    async def pair(self, **asker_options: float) -> tuple[Locker, Locker]:
        holder = await self.new(**asker_options)
        return holder, (await self.new(**asker_options) if self.across else holder)


@pytest.fixture(
    params=["memory", "file", "file-across", "redis", "redis-across"],
)
def lockers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lockers]:
    io_loop = request.getfixturevalue("io_loop")  # the test's loop, closed after us
    kind, _, across = str(request.param).partition("-")
    target = request.getfixturevalue("redis_url") if kind == "redis" else str(tmp_path)
    made = Lockers(kind, target, bool(across))
    yield made
    for locker in made.made:
        io_loop.run_sync(locker.close, timeout=10)


@dataclass
class Stubborn:
    """A holder that misbehaves: it is idle, agrees to let go, and never does."""

    stops: int = 0

    def idle_seconds(self) -> float:
        return float("inf")

    def stop(self) -> None:
        self.stops += 1


@dataclass
class Busy:
    """A holder doing work of its own (a termination, say): never idle; it lets go when
    its work ends, which `stop` cannot hasten."""

    stops: int = 0

    def idle_seconds(self) -> float:
        return 0.0

    def stop(self) -> None:
        self.stops += 1


async def timed_acquire(
    locker: Locker, upload_id: str, body: BodyStream | None = None, *, force: bool = False
) -> tuple[Lock, float]:
    started = time.monotonic()
    lock = await locker.acquire(upload_id, body or idle_body(), force=force)
    return lock, time.monotonic() - started


# -- the contract --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_one_holder_at_a_time(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    holder = active_body()
    _, took = await timed_acquire(mine, upload, holder)
    assert took < AT_ONCE
    assert await refused(other, upload) < AT_ONCE
    assert await refused(mine, upload) < AT_ONCE
    assert holder.end is None  # an active holder is unharmed by the refusals


@pytest.mark.gen_test(timeout=20)
async def test_release_lets_the_next_in_at_once(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    lock = await mine.acquire(upload, active_body())
    await lock.release()
    again, took = await timed_acquire(other, upload)
    assert took < AT_ONCE
    await again.release()


@pytest.mark.gen_test(timeout=20)
async def test_release_is_idempotent(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    first = await mine.acquire(upload, active_body())
    await first.release()
    second = await other.acquire(upload, active_body())
    await first.release()  # a second release of the first lock frees nothing of the second
    assert await refused(mine, upload) < AT_ONCE
    await second.release()
    await second.release()


@pytest.mark.gen_test(timeout=20)
async def test_a_stalled_holder_is_stopped_and_lets_go_within_a_second(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    holder = stalled_body()
    writing = release_when_stopped(holder, await mine.acquire(upload, holder))
    lock, took = await timed_acquire(other, upload)
    assert took < TAKEOVER
    assert holder.end is BodyEnd.STOPPED
    await writing
    await lock.release()


@pytest.mark.gen_test(timeout=20)
async def test_a_holder_still_receiving_refuses_and_the_asker_gets_423(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    holder = active_body()
    await mine.acquire(upload, holder)
    assert await refused(other, upload) < AT_ONCE
    assert holder.end is None


@pytest.mark.gen_test(timeout=20)
async def test_force_takes_over_even_an_active_holder(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    holder = active_body()
    writing = release_when_stopped(holder, await mine.acquire(upload, holder))
    lock, took = await timed_acquire(other, upload, force=True)
    assert took < TAKEOVER
    assert holder.end is BodyEnd.STOPPED
    await writing
    await lock.release()


def release_after(lock: Lock, seconds: float) -> tuple[asyncio.Task[None], list[bool]]:
    """A holder's own work, ending after `seconds`; the list says whether it has ended."""
    ended: list[bool] = []

    async def work() -> None:
        await asyncio.sleep(seconds)
        ended.append(True)
        await lock.release()

    return asyncio.create_task(work()), ended


@pytest.mark.gen_test(timeout=20)
async def test_a_busy_holder_is_stopped_only_by_force_and_awaited(lockers: Lockers) -> None:
    """The decision is the locker's: an unforced asker leaves a busy holder alone (423); a
    forced one stops it and waits for its work to end, within the bound."""
    mine, other = await lockers.pair()
    upload = new_upload_id()
    busy = Busy()
    lock = await mine.acquire(upload, busy)
    assert await refused(other, upload) < AT_ONCE
    assert busy.stops == 0
    working, ended = release_after(lock, 0.2)
    taken, took = await timed_acquire(other, upload, force=True)
    assert (busy.stops, ended) == (1, [True])  # stopped, and taken only once it let go
    assert took < TAKEOVER
    await working
    await taken.release()


@pytest.mark.gen_test(timeout=20)
async def test_a_brief_holder_is_awaited_by_any_asker(lockers: Lockers) -> None:
    """Work that receives nothing (a termination, a record update) is no reason for a 423:
    an unforced asker waits for it to end, then has the lock."""
    mine, other = await lockers.pair()
    upload = new_upload_id()
    working, ended = release_after(await mine.acquire(upload, BRIEF), 0.2)
    taken, took = await timed_acquire(other, upload)
    assert ended == [True]
    assert took < TAKEOVER
    await working
    await taken.release()


@pytest.mark.gen_test(timeout=20)
async def test_a_holder_that_agrees_but_never_lets_go_costs_at_most_the_wait(
    lockers: Lockers,
) -> None:
    mine, other = await lockers.pair(wait_seconds=0.3)
    upload = new_upload_id()
    stubborn = Stubborn()
    await mine.acquire(upload, stubborn)
    assert await refused(other, upload) < 0.3 + SLACK
    assert stubborn.stops == 1  # asked once per acquisition, not once per look
    assert await refused(other, upload, force=True) < 0.3 + SLACK


@pytest.mark.gen_test(timeout=20)
async def test_locks_of_different_uploads_are_independent(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    first, second = new_upload_id(), new_upload_id()
    holder = active_body()
    await mine.acquire(first, holder)
    lock, took = await timed_acquire(other, second)
    assert took < AT_ONCE
    assert holder.end is None
    await lock.release()


@pytest.mark.gen_test(timeout=20)
async def test_close_lets_go_of_every_lock_still_held(lockers: Lockers) -> None:
    closing = await lockers.new()
    uploads = [new_upload_id(), new_upload_id()]
    for upload in uploads:
        await closing.acquire(upload, active_body())
    await closing.close()
    other = await lockers.new() if lockers.kind != "memory" else closing
    for upload in uploads:
        lock, took = await timed_acquire(other, upload)
        assert took < AT_ONCE
        await lock.release()


@pytest.mark.gen_test(timeout=20)
async def test_two_askers_at_once_one_gets_the_lock_and_the_other_423(lockers: Lockers) -> None:
    mine, other = await lockers.pair()
    upload = new_upload_id()
    holder = stalled_body()
    writing = release_when_stopped(holder, await mine.acquire(upload, holder))
    third = await lockers.new() if lockers.across else mine
    results = await asyncio.gather(
        other.acquire(upload, active_body()),
        third.acquire(upload, active_body()),
        return_exceptions=True,
    )
    locks = [result for result in results if isinstance(result, Lock)]
    errors = [result for result in results if isinstance(result, UploadError)]
    assert len(locks) == 1, results
    assert [error.kind for error in errors] == [ErrorKind.UPLOAD_LOCKED], results
    await writing
