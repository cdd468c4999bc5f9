"""One writer per upload, and no client locked out by its own dead connection.

Whoever takes an upload's lock is its `Holder` and tells the locker two things about
itself: how long it has waited for its client without getting anything (`idle_seconds`),
and how to make it stop (`stop`). Someone who wants the lock asks the locker, and the
locker decides for the holder (the stall policy, in `formforge.locks.base`): a holder idle
for `STALLED_AFTER_SECONDS`, or any holder when the asker must take over (DELETE; an append
or HEAD of the IETF draft), is stopped: it stops reading, saves what it has and releases.
An active holder keeps the lock and the asker gets `upload-locked` (423). A file or Redis
locker carries the same question to holders in other processes or on other hosts.

This is the interface the core calls; the lockers live in `formforge.locks`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from formforge.core.errors import ErrorKind, UploadError

TAKEOVER_WAIT_SECONDS = 1.0  # the most an asker waits for a holder to let go
STALLED_AFTER_SECONDS = 1.0  # a holder this idle lets a newer request take over


def locked(message: str) -> UploadError:
    """The asker's answer when the holder keeps the lock. 423 is retryable: clients try
    again, and the holder may have let go by then."""
    return UploadError(ErrorKind.UPLOAD_LOCKED, message)


class Holder(Protocol):
    """What a lock's holder tells its locker; the locker decides when it must let go."""

    def idle_seconds(self) -> float:
        """How long it has waited for its client without getting anything; `inf` once it
        has nothing left to receive."""

    def stop(self) -> None:
        """Stop soon, keeping what was received; the holder then releases its lock itself."""


class Brief:
    """A holder doing short work of its own under the lock (a termination, a record
    update): it receives nothing, so every asker may have the lock once it lets go, which
    it does by itself; the asker waits for that (within its wait), and `stop` cannot
    hasten it."""

    def idle_seconds(self) -> float:
        return float("inf")  # nothing to receive

    def stop(self) -> None:
        return None  # its work ends by itself, soon


class Keeping:
    """A holder nobody may take over unless forced (a processing claim, held while an
    upload is hashed): never idle, so an unforced asker gets 423 at once."""

    def idle_seconds(self) -> float:
        return 0.0

    def stop(self) -> None:
        return None  # it lets go when its work ends


BRIEF = Brief()
KEEPING = Keeping()


class Lock(ABC):
    @abstractmethod
    async def release(self) -> None:
        """Let go; idempotent."""


class Locker(ABC):
    async def start(self) -> None:  # noqa: B027 - most lockers have nothing to set up
        """Connect or set up what the locker needs; called once at start-up."""

    async def close(self) -> None:  # noqa: B027
        """Let go of connections and files, and of every lock still held; called once,
        after writes have stopped."""

    @abstractmethod
    async def acquire(self, upload_id: str, holder: Holder, *, force: bool = False) -> Lock:
        """Take the upload's lock for `holder`, asking a current holder to let go.

        Raises `UploadError(UPLOAD_LOCKED)` if the holder keeps the lock or has not let go
        within about a second. Never waits longer than that.
        """
