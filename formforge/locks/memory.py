"""Locks for one process: the default of `formforge serve` without workers or Redis."""

from __future__ import annotations

from formforge.core.locker import TAKEOVER_WAIT_SECONDS
from formforge.locks.base import BaseLocker, Held


class MemoryLocker(BaseLocker[bool]):
    """Locks for one process: the in-process table of holders is the whole lock."""

    def __init__(self, wait_seconds: float = TAKEOVER_WAIT_SECONDS) -> None:
        super().__init__(wait_seconds)

    async def _take(self, upload_id: str, token: str) -> bool:
        return True  # called only when the table has no holder for it

    async def _let_go(self, held: Held[bool]) -> None:
        return None  # leaving the table was all
