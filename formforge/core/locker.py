"""One writer per upload, and no client locked out by its own dead connection.

A holder registers a `release_request` callback with its lock. Someone who wants the lock
asks the holder (through the callback) to let go; the holder decides: a request that is
stalled, or any request when the asker must take over (DELETE; an append or HEAD of the IETF
draft), stops reading, saves what it has and releases. An active holder refuses and the
asker gets `upload-locked` (423). A Redis locker (cluster mode) carries the same request
over pub/sub.

This is the interface the core calls; the lockers live in `formforge.locks`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from formforge.core.errors import ErrorKind, UploadError

# `force` is True when the asker must get the lock (termination); the return value says
# whether the holder agreed to let go soon.
ReleaseRequest = Callable[[bool], bool]

TAKEOVER_WAIT_SECONDS = 1.0


def locked(message: str) -> UploadError:
    """The asker's answer when the holder keeps the lock. 423 is retryable: clients try
    again, and the holder may have let go by then."""
    return UploadError(ErrorKind.UPLOAD_LOCKED, message)


class Lock(ABC):
    @abstractmethod
    async def release(self) -> None:
        """Let go; idempotent."""


class Locker(ABC):
    async def start(self) -> None:  # noqa: B027 - most lockers have nothing to set up
        """Connect or set up what the locker needs; called once at start-up."""

    async def close(self) -> None:  # noqa: B027
        """Let go of connections and files; called once, after writes have stopped."""

    @abstractmethod
    async def acquire(
        self, upload_id: str, release_request: ReleaseRequest, *, force: bool = False
    ) -> Lock:
        """Take the upload's lock, asking a current holder to let go.

        Raises `UploadError(UPLOAD_LOCKED)` if the holder refuses or has not let go within
        about a second. Never waits longer than that.
        """


def refuse(force: bool) -> bool:
    """The release request of a holder that never gives its lock away (it is quick anyway)."""
    return False
