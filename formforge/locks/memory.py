"""Locks for one process: the default of `formforge serve` without workers or Redis."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from formforge.core.locker import TAKEOVER_WAIT_SECONDS, Lock, Locker, ReleaseRequest, locked


@dataclass(eq=False)
class _Held:
    release_request: ReleaseRequest
    released: asyncio.Event = field(default_factory=asyncio.Event)


class _MemoryLock(Lock):
    def __init__(self, locker: MemoryLocker, upload_id: str, held: _Held) -> None:
        self._locker, self._upload_id, self._held = locker, upload_id, held

    async def release(self) -> None:
        self._locker._drop(self._upload_id, self._held)


class MemoryLocker(Locker):
    """Locks for one process."""

    def __init__(self, wait_seconds: float = TAKEOVER_WAIT_SECONDS) -> None:
        self._held: dict[str, _Held] = {}
        self._wait_seconds = wait_seconds

    async def acquire(
        self, upload_id: str, release_request: ReleaseRequest, *, force: bool = False
    ) -> Lock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_seconds
        while (current := self._held.get(upload_id)) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0 or not current.release_request(force):
                raise locked("another request is still writing to this upload")
            try:
                await asyncio.wait_for(current.released.wait(), remaining)
            except TimeoutError:
                raise locked("the previous request did not let go in time") from None
        held = _Held(release_request)
        self._held[upload_id] = held
        return _MemoryLock(self, upload_id, held)

    def _drop(self, upload_id: str, held: _Held) -> None:
        if self._held.get(upload_id) is held:
            del self._held[upload_id]
        held.released.set()
