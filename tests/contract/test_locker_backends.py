"""What only one locker has, beside the contract every locker keeps
(test_locker_contract.py beside it): the Redis locker's leases, the file locker's sockets.
Dead processes and the leftovers they sweep: test_locks_cross_process.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from formforge.core.body import BodyEnd, BodyStream
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import new_upload_id
from formforge.locks.file import FileLocker
from formforge.locks.redis import KEY_PREFIX, RedisLocker
from tests.lock_holders import active_body, idle_body, release_when_stopped, stalled_body
from tests.redis_server import redis_url_fixture  # noqa: F401


async def until_stopped(holder: BodyStream, within: float) -> None:
    deadline = time.monotonic() + within
    while holder.end is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# -- Redis: leases -----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_redis_a_held_lock_outlives_its_lease_by_renewal(redis_url: str) -> None:
    # A lease of 0.5 s left 0.2 s between a missed renewal and a stop: a busy CI's loop
    # stalled that long. 2 s leaves 0.8 s, and the wait still spans leases.
    holding, asking = RedisLocker(redis_url, lease_seconds=2.0), RedisLocker(redis_url)
    try:
        upload = new_upload_id()
        holder = active_body()
        await holding.acquire(upload, holder)
        await asyncio.sleep(4.5)  # more than two leases
        with pytest.raises(UploadError) as error:
            await asking.acquire(upload, active_body())
        assert error.value.kind is ErrorKind.UPLOAD_LOCKED
        assert holder.end is None
    finally:
        await holding.close()
        await asking.close()


@pytest.mark.gen_test(timeout=20)
async def test_redis_a_holder_that_lost_its_lease_is_stopped(redis_url: str) -> None:
    locker = RedisLocker(redis_url, lease_seconds=0.5)
    try:
        upload = new_upload_id()
        holder = active_body()
        await locker.acquire(upload, holder)
        client = Redis.from_url(redis_url)
        try:
            await client.delete(KEY_PREFIX + upload)  # as if the lease ran out meanwhile
        finally:
            await client.aclose()
        await until_stopped(holder, within=1.0)
        assert holder.end is BodyEnd.STOPPED
    finally:
        await locker.close()


@pytest.mark.gen_test(timeout=20)
async def test_redis_unreachable_is_a_server_error_not_a_lock() -> None:
    locker = RedisLocker("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(UploadError) as error:
        await locker.acquire(new_upload_id(), active_body())
    assert error.value.kind is ErrorKind.INTERNAL
    await locker.close()


# -- file: sockets ---------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_file_locker_works_under_a_data_dir_too_long_for_a_socket_path(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    first, second = FileLocker(data_dir), FileLocker(data_dir)
    try:
        stalled = stalled_body()
        holder = release_when_stopped(stalled, await first.acquire("u" * 22, stalled))
        taken = await second.acquire("u" * 22, idle_body())
        await holder
        assert stalled.end is BodyEnd.STOPPED
        await taken.release()
    finally:
        await first.close()
        await second.close()
