"""Lock holders for the locker tests: real request bodies, idle or receiving, and the
asker's side of a refusal."""

from __future__ import annotations

import asyncio
import time

import pytest

from formforge.core.body import BodyStream
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.locker import Lock, Locker


def idle_body(seconds: float = 0.0) -> BodyStream:
    """A body that has waited `seconds` for its client."""
    body = BodyStream(60.0, lambda end: None)
    body._last_activity -= seconds
    return body


def stalled_body() -> BodyStream:
    return idle_body(1.5)  # nothing for 1.5 s: past the contract's "about a second"


def active_body() -> BodyStream:
    body = idle_body()
    body.feed(b"fresh bytes")  # received just now, not yet taken: active
    return body


async def refused(locker: Locker, upload_id: str, *, force: bool = False) -> float:
    """Acquire, expecting 423; returns how long the answer took."""
    started = time.monotonic()
    with pytest.raises(UploadError) as error:
        await locker.acquire(upload_id, active_body(), force=force)
    assert error.value.kind is ErrorKind.UPLOAD_LOCKED
    return time.monotonic() - started


def release_when_stopped(body: BodyStream, lock: Lock) -> asyncio.Task[None]:
    """What a write does with its body: read it to its end, then let go of the lock."""

    async def write() -> None:
        async for _ in body:
            pass
        await lock.release()

    return asyncio.create_task(write())
