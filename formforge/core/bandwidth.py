"""Bandwidth limits, enforced by reading more slowly (backpressure), never by buffering.

Each upload may get its own rate, and all uploads together share a total: a body asks its
`Pace` how long to wait before it reads more, after every chunk. The total is a single
schedule that uploads reserve time on in turn; since each upload asks again only when its
last wait is over, active uploads interleave and the total is shared fairly among them.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Schedule:
    """A rate as a timeline: reserving n bytes moves the next free moment by n / rate."""

    def __init__(self, bytes_per_second: float, clock: Callable[[], float] = time.monotonic):
        self.rate = bytes_per_second
        self.clock = clock
        self.free_at = 0.0

    def reserve(self, count: int) -> float:
        """Seconds the caller must wait before the bytes it has just read are paid for."""
        now = self.clock()
        self.free_at = max(self.free_at, now) + count / self.rate
        return self.free_at - now


Pace = Callable[[int], float]  # bytes just received -> seconds to wait before reading more


class Bandwidth:
    def __init__(self, per_upload: int | None, total: int | None) -> None:
        self.per_upload = per_upload
        self.total = Schedule(total) if total else None

    def pace_for_upload(self) -> Pace | None:
        """None when nothing is limited: the hot path then pays nothing at all."""
        own = Schedule(self.per_upload) if self.per_upload else None
        shared = self.total
        if own is None and shared is None:
            return None

        def pace(count: int) -> float:
            waits = [schedule.reserve(count) for schedule in (own, shared) if schedule]
            return max(waits)

        return pace
