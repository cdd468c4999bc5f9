"""Upload locks shared by processes and hosts through Redis (`cluster.redis_url`).

The take-over algorithm of `locks/base.py`, across nodes:

- A lock is the key `formforge:lock:<upload id>`, set with NX and a lease (PX). Its value
  is `<locker id> <token>`: who to ask, and which acquisition it is. Each locker renews
  the leases of the locks it holds every `0.3 * lease`, so the lock of a node that died
  is free one lease later (5 s; CONTRACT.md allows 10). Letting go deletes the key only
  while it still holds our value (a Lua compare-and-delete).
- Release requests travel over pub/sub. Every locker listens on its own inbox channel,
  `formforge:lock-inbox:<locker id>`. An asker whose SET NX fails publishes a request to
  the holder's inbox; the holder's locker answers on the asker's inbox with the stall
  policy (`locks/base.py`). An agreeing holder's locker also tells the asker
  when it has let go, and the asker tries SET NX again (it re-reads the key every
  `POLL_SECONDS` too, in case a notice is lost).
- Everything is bounded by `wait_seconds` (`locks/base.py`): an asker never waits longer
  than about a second before it holds the lock or gets `upload-locked` (423).

A holder whose lease is in doubt (its key gone, or Redis unreachable for two renewals) is
told to stop at once, as if forced, before anyone else can take the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.locker import TAKEOVER_WAIT_SECONDS, Holder, Lock
from formforge.locks.base import Answer, BaseLocker, Held

log = logging.getLogger(__name__)

KEY_PREFIX = "formforge:lock:"
INBOX_PREFIX = "formforge:lock-inbox:"
LEASE_SECONDS = 5.0
RENEW_FRACTION = 0.3  # renew about three times per lease: one failed try costs nothing
POLL_SECONDS = 0.1  # re-read a lock we wait for, should a "released" notice be lost
RETRY_SECONDS = 1.0  # between attempts to read the inbox while Redis is unreachable
REDIS_TIMEOUT_SECONDS = 2.0  # a hung Redis must not hang requests for long

# Delete the key only if it still holds our value: a lease that ran out may be someone
# else's lock by now.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# ARGV[1] is the lease in ms, ARGV[i + 1] the value KEYS[i] must still hold.
_RENEW_SCRIPT = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i + 1] then
    redis.call('pexpire', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _close_pubsub(pubsub: PubSub) -> None:
    # PubSub.aclose has no annotations in some redis-py versions; typed by hand here so
    # no `type: ignore` goes stale when a release adds them.
    close: Callable[[], Awaitable[None]] = pubsub.aclose
    await close()


class RedisLocker(BaseLocker[float]):
    """Locks for every process and host sharing one Redis.

    `start()` connects and subscribes (`acquire` calls it when needed); `close()` lets go of
    what is still held and disconnects. Create one per process, after any fork.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        wait_seconds: float = TAKEOVER_WAIT_SECONDS,
    ) -> None:
        super().__init__(wait_seconds)
        self.id = secrets.token_hex(8)
        self._url = url
        self._lease_seconds = lease_seconds
        self._inbox = INBOX_PREFIX + self.id
        self._redis: Redis | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()
        self._askers: dict[str, set[str]] = {}  # token -> locker ids to tell once we let go
        self._replies: dict[str, asyncio.Future[Answer]] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and listen for release requests before any lock is taken."""
        if self._redis is not None:
            return  # every acquire calls this
        async with self._starting:
            if self._redis is not None:
                return
            redis = Redis.from_url(
                self._url,
                decode_responses=True,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(self._inbox)
                await self._confirmed(pubsub)
            except BaseException:
                await _close_pubsub(pubsub)
                await redis.aclose()
                raise
            self._redis, self._pubsub = redis, pubsub
            self._tasks = [
                asyncio.create_task(self._listen(pubsub)),
                asyncio.create_task(self._renew_forever()),
            ]
            log.info("redis locker started locker_id=%s", self.id)

    async def _confirmed(self, pubsub: PubSub) -> None:
        """Wait until Redis has registered the subscription: asks can reach us from then."""
        async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
            while True:
                message = await pubsub.get_message(timeout=REDIS_TIMEOUT_SECONDS)
                if message is not None and message["type"] == "subscribe":
                    return

    async def close(self) -> None:
        """Stop listening and renewing, let go of every lock still held, disconnect."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await super().close()
        if self._pubsub is not None:
            await _close_pubsub(self._pubsub)
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = self._pubsub = None

    def _client(self) -> Redis:
        if self._redis is None:
            raise RedisError("the locker is closed")
        return self._redis

    # -- taking and asking -----------------------------------------------------------------

    async def acquire(self, upload_id: str, holder: Holder, *, force: bool = False) -> Lock:
        try:
            return await super().acquire(upload_id, holder, force=force)
        except (RedisError, TimeoutError) as error:
            log.warning("lock service unavailable upload_id=%s error=%s", upload_id, error)
            raise UploadError(ErrorKind.INTERNAL, "the lock service is unavailable") from error

    async def _take(self, upload_id: str, token: str) -> float | None:
        """SET NX; the grip is a time no later than the start of the new lease."""
        attempt_at = asyncio.get_running_loop().time()
        value = f"{self.id} {token}"
        if await self._client().set(KEY_PREFIX + upload_id, value, nx=True, px=self._lease_ms):
            return attempt_at
        return None

    async def _owner(self, upload_id: str) -> str | None:
        return _text(await self._client().get(KEY_PREFIX + upload_id))

    async def _ask(self, upload_id: str, owner: str, force: bool, deadline: float) -> Answer:
        """Ask the holder named in the key's value `owner` through its locker's inbox."""
        locker_id, _, token = owner.partition(" ")
        if locker_id == self.id:
            return self._answer(upload_id, token, force)[0]
        loop = asyncio.get_running_loop()
        request_id = secrets.token_hex(8)
        reply: asyncio.Future[Answer] = loop.create_future()
        self._replies[request_id] = reply
        request = {
            "kind": "request",
            "id": request_id,
            "upload": upload_id,
            "token": token,
            "force": force,
            "from": self.id,
        }
        try:
            if not await self._client().publish(INBOX_PREFIX + locker_id, json.dumps(request)):
                # No one listens there: that node is gone or cut off from Redis, and its
                # lease runs out on its own. Wait for that, within our bound.
                return Answer.AGREED
            async with asyncio.timeout_at(deadline):
                return await reply
        except TimeoutError:
            return Answer.REFUSED  # no answer in time: as good as a refusal
        finally:
            self._replies.pop(request_id, None)

    async def _pause(self, upload_id: str, deadline: float) -> None:
        """Return when a holder says it let go of `upload_id`, after `POLL_SECONDS`, or at
        the deadline, whichever comes first."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiters = self._waiters.setdefault(upload_id, set())
        waiters.add(waiter)
        try:
            timeout = max(0.0, min(POLL_SECONDS, deadline - loop.time()))
            await asyncio.wait([waiter], timeout=timeout)
        finally:
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(upload_id, None)

    def _wake(self, upload_id: str) -> None:
        for waiter in self._waiters.get(upload_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    # -- holding ---------------------------------------------------------------------------

    async def _let_go(self, held: Held[float]) -> None:
        askers = self._askers.pop(held.token, set())
        try:
            if self._redis is not None:
                await self._redis.register_script(_RELEASE_SCRIPT)(
                    keys=[KEY_PREFIX + held.upload_id], args=[f"{self.id} {held.token}"]
                )
                notice = json.dumps({"kind": "released", "upload": held.upload_id})
                for locker_id in askers:
                    await self._redis.publish(INBOX_PREFIX + locker_id, notice)
        except RedisError as error:
            # Nobody renews the key any more: it frees itself within a lease.
            log.warning("lock release failed upload_id=%s error=%s", held.upload_id, error)
        self._wake(held.upload_id)

    async def _renew_forever(self) -> None:
        """Renew every `interval`; stop holders whose lease may run out before the next try.

        A renewal may take up to `interval`, so the next check can be two intervals away:
        a holder unrenewed for `lease - 2 * interval` (two failed renewals) is stopped while
        its key certainly still stands, before anyone else can take the upload."""
        loop = asyncio.get_running_loop()
        interval = self._lease_seconds * RENEW_FRACTION
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(interval):
                    await self._renew(loop.time())
            except (RedisError, TimeoutError) as error:
                log.warning("lock renewal failed error=%r", error)
            for held in list(self._held.values()):
                if loop.time() - held.grip >= self._lease_seconds - 2 * interval:
                    self._lost(held, "Redis unreachable: the lease may run out")

    async def _renew(self, now: float) -> None:
        held = list(self._held.values())
        if not held or self._redis is None:
            return
        keys = [KEY_PREFIX + h.upload_id for h in held]
        values = [f"{self.id} {h.token}" for h in held]
        renew = self._redis.register_script(_RENEW_SCRIPT)
        renewed = await renew(keys=keys, args=[self._lease_ms, *values])
        for one, ok in zip(held, renewed, strict=True):
            if ok:
                one.grip = now
            else:
                self._lost(one, "the lock key is gone or taken")

    # -- the inbox -------------------------------------------------------------------------

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            try:
                # A finite timeout: some redis-py versions apply socket_timeout to a
                # blocking read and would fail every few seconds of silence.
                message = await pubsub.get_message(timeout=RETRY_SECONDS)
                if message is not None and message["type"] == "message":
                    await self._dispatch(json.loads(message["data"]))
            except (RedisError, OSError) as error:
                # redis-py reconnects and re-subscribes on the next read.
                log.warning("lock inbox read failed error=%s", error)
                await asyncio.sleep(RETRY_SECONDS)
            except (ValueError, KeyError, TypeError) as error:
                log.warning("malformed lock message dropped error=%r", error)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind == "request":
            asker = str(message["from"])
            answer, held = self._answer(
                str(message["upload"]), str(message["token"]), bool(message["force"])
            )
            if held is not None:
                self._askers.setdefault(held.token, set()).add(asker)
            reply = {"kind": "reply", "id": message["id"], "answer": answer.value}
            if self._redis is not None:
                await self._redis.publish(INBOX_PREFIX + asker, json.dumps(reply))
        elif kind == "reply":
            future = self._replies.get(str(message["id"]))
            if future is not None and not future.done():
                future.set_result(Answer(message["answer"]))
        elif kind == "released":
            self._wake(str(message["upload"]))

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self._lease_seconds * 1000))
