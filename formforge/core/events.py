"""Upload events: plain immutable values on an in-process bus.

The service publishes; Socket.IO, metrics and hooks subscribe. Subscribers are called
synchronously in the publishing task and must not block: anything slow schedules a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from formforge.core.errors import ErrorKind
from formforge.core.model import UploadInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadCreated:
    info: UploadInfo


@dataclass(frozen=True)
class UploadProgress:
    upload_id: str
    offset: int
    size: int | None
    bytes_per_second: float


@dataclass(frozen=True)
class ProcessingProgress:
    """How far processing got: `percent` (0-100, None when not known) and `message` are
    those of the current step (the whole-file hash, then each post-finish hook)."""

    upload_id: str
    size: int
    percent: float | None
    message: str | None


@dataclass(frozen=True)
class BytesWritten:
    """Once per write request: how many bytes it added (after any checksum rollback)."""

    upload_id: str
    count: int


@dataclass(frozen=True)
class UploadFinished:
    info: UploadInfo


@dataclass(frozen=True)
class UploadFailed:
    upload_id: str
    kind: ErrorKind
    message: str
    offset: int


@dataclass(frozen=True)
class UploadTerminated:
    upload_id: str


@dataclass(frozen=True)
class UploadExpired:
    upload_id: str


Event = (
    UploadCreated
    | UploadProgress
    | ProcessingProgress
    | BytesWritten
    | UploadFinished
    | UploadFailed
    | UploadTerminated
    | UploadExpired
)
Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # one broken subscriber must not fail an upload
                log.exception("event subscriber failed event=%s", type(event).__name__)


class ProgressThrottle:
    """At most one progress event per interval for one write; the caller flushes at the end."""

    def __init__(self, interval_seconds: float, now: float) -> None:
        self._interval = interval_seconds
        self._next = now + interval_seconds

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self._interval
        return True

    def remaining(self, now: float) -> float:
        """Seconds until the next event is due (0 when it is due already)."""
        return max(0.0, self._next - now)
