"""A request body as an async iterator of chunks, fed by a front as bytes arrive.

`feed` returns an awaitable while the consumer has not taken the last chunk: that is the
backpressure (the front stops reading the socket until it resolves), so at most two chunks
wait here per upload: a small one the consumer was already waiting for, and one held back.
The iterator ends when the body is complete, the connection is cut, the client stalls for
`idle_timeout` seconds, or a newer request takes the upload over; `end` says which.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from formforge.core.bandwidth import Pace

# A chunk up to this size that the consumer already waits for is not pushed back: the
# front reads on meanwhile, and what it may hand over next stays as small.
UNHELD_CHUNK_MAX = 64 * 1024


class BodyEnd(enum.Enum):
    COMPLETE = "complete"
    CUT = "cut"  # the connection closed before the body ended
    STALLED = "stalled"  # nothing arrived for the idle time-out
    STOPPED = "stopped"  # a newer request for the upload took over


class Receiver(Protocol):
    """The connection under a body, where the front can say more than its chunks do."""

    def quiet_seconds(self) -> float:
        """Seconds since bytes last reached the connection, handed over yet or not."""

    def unread(self) -> bytes:
        """Bytes of the body that reached the connection and wait to be handed over."""


class BodyStream:
    def __init__(self, idle_timeout: float, on_abort: Callable[[BodyEnd], None]) -> None:
        """`on_abort` is told when the body ends early so the front can drop the connection."""
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._data_waiter: asyncio.Future[None] | None = None
        self._space_waiter: asyncio.Future[None] | None = None
        self._idle_timeout = idle_timeout
        self._on_abort = on_abort
        self._last_activity = time.monotonic()
        self._watchdog: asyncio.TimerHandle | None = None
        self.end: BodyEnd | None = None
        self.received = 0
        # When the first byte arrived, and when the last one did or, under a bandwidth
        # limit, is paid for: the client's rate is `received` over the time between.
        self.first_byte_at: float | None = None
        self.last_byte_at = 0.0
        self.pace: Pace | None = None  # set by the service when bandwidth is limited
        self.receiver: Receiver | None = None  # set by a front that holds bytes back

    # -- the producer side (the front) ---------------------------------------------------

    def feed(self, chunk: bytes) -> Awaitable[Any] | None:
        if self.end is not None:
            return None  # the consumer is gone; the front is closing the connection
        self._last_activity = self.last_byte_at = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = self.last_byte_at
        self.received += len(chunk)
        self._chunks.append(chunk)
        consumer_waits = self._data_waiter is not None and not self._data_waiter.done()
        self._wake(self._data_waiter)
        if consumer_waits and self.pace is None and len(chunk) <= UNHELD_CHUNK_MAX:
            # It takes this chunk at its next step: holding the front back until then cost
            # a pause and a resume of the socket and two turns of the loop per piece. Only
            # for small ones: the front reads on meanwhile, so a second chunk may come.
            return None
        self._space_waiter = self._loop.create_future()
        if self.pace is None:
            return self._space_waiter
        delay = self.pace(len(chunk))
        # Reading slowly on purpose is not stalling: no take-over, no idle cut meanwhile.
        self._last_activity += delay
        self.last_byte_at += delay
        return asyncio.gather(self._space_waiter, asyncio.sleep(delay))

    def finish(self) -> None:
        self._close(BodyEnd.COMPLETE)

    def cut(self) -> None:
        self._close(BodyEnd.CUT)

    # -- take-over: the body is the holder of its upload's lock (`core/locker.py`) -------

    def idle_seconds(self) -> float:
        """How long the body has waited for the client without getting a byte. The locker
        asks this when another request wants the upload, and decides (`locks/base.py`)."""
        if self._chunks or self.end is not None:
            return 0.0 if self.end is None else float("inf")
        idle = time.monotonic() - self._last_activity
        # Bytes the front lets gather at the socket are arriving, not stalled.
        return idle if self.receiver is None else min(idle, self.receiver.quiet_seconds())

    def stop(self) -> None:
        """A newer request takes the upload over (or the server stops): end the body now;
        the write stores what arrived and releases the lock."""
        self._abort(BodyEnd.STOPPED)

    # -- the consumer side (the store) ---------------------------------------------------

    def __aiter__(self) -> BodyStream:
        if self._watchdog is None and self.end is None:
            self._watchdog = self._loop.call_later(self._idle_timeout, self._check_idle)
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.end is not None:
                raise StopAsyncIteration
            self._data_waiter = self._loop.create_future()
            await self._data_waiter
        chunk = self._chunks.popleft()
        # Never earlier than `feed` set it: a paced body's wait for its next read is not
        # silence, and taking the chunk must not undo that.
        self._last_activity = max(self._last_activity, time.monotonic())
        if not self._chunks:  # the front may send more once the last chunk is taken
            self._wake(self._space_waiter)
        return chunk

    def discard(self) -> None:
        """The consumer is gone: drop what waits and what still comes, so the front can read
        the rest of the request quickly and answer it."""
        self._chunks.clear()
        self._close(BodyEnd.STOPPED)

    # -- internals -----------------------------------------------------------------------

    def _check_idle(self) -> None:
        idle = self.idle_seconds()
        if self.end is not None:
            return
        if idle >= self._idle_timeout:
            self._abort(BodyEnd.STALLED)
        else:
            self._watchdog = self._loop.call_later(self._idle_timeout - idle, self._check_idle)

    def _abort(self, reason: BodyEnd) -> None:
        if self.end is None:
            self._take_unread()
            self._close(reason)
            self._on_abort(reason)

    def _take_unread(self) -> None:
        """Bytes that reached the server are kept when it stops reading early, too."""
        unread = self.receiver.unread() if self.receiver is not None else b""
        if unread:
            self.received += len(unread)
            self._chunks.append(unread)

    def _close(self, reason: BodyEnd) -> None:
        if self.end is not None:
            return
        self.end = reason
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._wake(self._data_waiter)
        self._wake(self._space_waiter)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
