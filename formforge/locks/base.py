"""The take-over algorithm, written once for every locker; the backends only take, ask and wait.

An acquisition runs against one deadline, `wait_seconds` (about a second) from its start:

1. A holder of this process (the in-process table; flock and Redis both see one process
   as one owner) is asked directly, once, and awaited until it lets go.
2. Otherwise the backend tries to take the lock (`_take`): memory always can, file flocks
   the upload's lock file, Redis sets the key with NX and a lease.
3. If another process holds it, the backend names that holder (`_owner`) and the holder is
   asked, once per acquisition (`_ask`): over a Unix socket (file) or pub/sub (Redis). Its
   locker answers from its own table with the same stall policy (`_answer`).
4. A refusal is 423 at once; an agreement, or a holder that cannot be asked, means waiting
   (`_pause`) and trying to take again, until the deadline: then 423 too.

A holder whose lease may have run out (Redis) is told to stop at once (`_lost`).

The stall policy lives here (`_agrees`), not in the request body: who may take over from
whom, and when, is the lock's rule (CONTRACT.md, "One writer at a time"). A holder only
reports how long it has been idle and obeys `stop()`; every backend then applies the same
rule whether the asker is in this process or another, and the locker contract suite
checks it with any holder.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from formforge.core.ids import new_serial_id
from formforge.core.locker import (
    STALLED_AFTER_SECONDS,
    TAKEOVER_WAIT_SECONDS,
    Holder,
    Lock,
    Locker,
    locked,
)

log = logging.getLogger(__name__)

G = TypeVar("G")

POLL_SECONDS = 0.02  # between attempts to take a lock a holder is letting go of
KEEPS_IT = "another request is still writing to this upload"
TOO_LATE = "the previous request did not let go in time"


class Answer(enum.Enum):
    """A holder's locker's answer to a release request."""

    AGREED = "agreed"  # the holder stops and lets go soon (or, unreachable, its lease ends)
    REFUSED = "refused"  # the holder is still receiving: 423
    NOT_HELD = "not-held"  # that locker does not hold that acquisition (yet, or any more)


@dataclass(eq=False)
class Held(Generic[G]):
    """One acquisition this process holds: the holder record of every locker.

    `token` names the acquisition to other processes: a request carries it, so a late one
    never reaches a newer holder. `grip` is what the backend holds: nothing (memory), the
    locked file's descriptor (file), the time the lease was last renewed (Redis).
    """

    upload_id: str
    token: str
    holder: Holder
    grip: G
    released: asyncio.Event = field(default_factory=asyncio.Event)
    ending: bool = False


class HeldLock(Lock, Generic[G]):
    def __init__(self, locker: BaseLocker[G], held: Held[G]) -> None:
        self._locker, self._held = locker, held

    async def release(self) -> None:
        await self._locker.release_held(self._held)


class BaseLocker(Locker, Generic[G]):
    """The algorithm above; a backend implements `_take` and `_let_go`, and, when other
    processes share its locks, `_owner`, `_ask` and `_pause`."""

    def __init__(self, wait_seconds: float = TAKEOVER_WAIT_SECONDS) -> None:
        self._wait_seconds = wait_seconds
        self._held: dict[str, Held[G]] = {}

    async def acquire(self, upload_id: str, holder: Holder, *, force: bool = False) -> Lock:
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_seconds
        token = new_serial_id()
        asked: str | None = None  # the other process's holder that agreed to let go
        while True:
            local = self._held.get(upload_id)
            if local is not None:
                await self._take_from_local(local, force, deadline)
                continue
            grip = await self._take(upload_id, token)
            if grip is not None:
                held = Held(upload_id, token, holder, grip)
                self._held[upload_id] = held
                return HeldLock(self, held)
            if loop.time() >= deadline:
                raise locked(TOO_LATE)
            owner = await self._owner(upload_id)
            if owner is not None and owner != asked:
                answer = await self._ask(upload_id, owner, force, deadline)
                if answer is Answer.REFUSED:
                    raise locked(KEEPS_IT)
                if answer is Answer.AGREED:
                    asked = owner
                    continue
            await self._pause(upload_id, deadline)  # not named yet, or letting go already

    async def _take_from_local(self, held: Held[G], force: bool, deadline: float) -> None:
        """A holder of this process: ask it directly and wait until it lets go."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0 or not self._agrees(held, force):
            raise locked(KEEPS_IT)
        try:
            await asyncio.wait_for(held.released.wait(), remaining)
        except TimeoutError:
            raise locked(TOO_LATE) from None

    def _agrees(self, held: Held[G], force: bool) -> bool:
        """The stall policy: a forced asker always takes over, anyone else only from a
        holder idle for `STALLED_AFTER_SECONDS`. An agreeing holder is stopped."""
        agreed = force or held.holder.idle_seconds() >= STALLED_AFTER_SECONDS
        log.info("release requested upload_id=%s force=%s agreed=%s", held.upload_id, force, agreed)
        if agreed:
            held.holder.stop()
        return agreed

    def _answer(self, upload_id: str, token: str, force: bool) -> tuple[Answer, Held[G] | None]:
        """Another process asks for the acquisition `token`; the held record if it agreed."""
        held = self._held.get(upload_id)
        if held is None or held.token != token:
            return Answer.NOT_HELD, None  # let go already, or not registered yet
        if self._agrees(held, force):
            return Answer.AGREED, held
        return Answer.REFUSED, None

    def _lost(self, held: Held[G], reason: str) -> None:
        """Someone else may hold the upload now: stop our holder at once."""
        if self._held.get(held.upload_id) is not held:
            return  # released meanwhile
        del self._held[held.upload_id]
        log.warning("lock lost upload_id=%s reason=%r", held.upload_id, reason)
        held.holder.stop()

    async def release_held(self, held: Held[G]) -> None:
        """Let go of one acquisition; idempotent. Local askers wake once the backend has
        let go, so they find the lock free."""
        if held.ending:
            return
        held.ending = True
        if self._held.get(held.upload_id) is held:
            del self._held[held.upload_id]
        try:
            await self._let_go(held)
        finally:
            held.released.set()

    async def close(self) -> None:
        """Let go of every lock still held (backends close their connections after)."""
        for held in list(self._held.values()):
            await self.release_held(held)

    # -- what a backend does -----------------------------------------------------------------

    @abstractmethod
    async def _take(self, upload_id: str, token: str) -> G | None:
        """Take the lock if no one holds it (in any process): the grip, else None."""

    @abstractmethod
    async def _let_go(self, held: Held[G]) -> None:
        """Free the lock for everyone; tell askers of other processes that it is free."""

    async def _owner(self, upload_id: str) -> str | None:
        """Who holds the lock in another process, as `_ask` understands it; None if it
        cannot be told (yet)."""
        return None

    async def _ask(self, upload_id: str, owner: str, force: bool, deadline: float) -> Answer:
        """Ask `owner` to let go, by `deadline`. A holder that cannot be asked counts as
        agreeing: only the end of its process or lease frees the lock, and we wait."""
        return Answer.NOT_HELD

    async def _pause(self, upload_id: str, deadline: float) -> None:
        """Wait a little (never past `deadline`) before trying to take the lock again."""
        delay = max(0.0, min(POLL_SECONDS, deadline - asyncio.get_running_loop().time()))
        await asyncio.sleep(delay)
