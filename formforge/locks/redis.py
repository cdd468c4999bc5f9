"""Upload locks shared by processes and hosts through Redis (`cluster.redis_url`).

The same rules as `MemoryLocker`, across nodes:

- A lock is the key `formforge:lock:<upload id>`, set with NX and a lease (PX). Its value
  is `<locker id> <token>`: who to ask, and which acquisition it is. Each locker renews
  the leases of the locks it holds every `0.3 * lease`, so the lock of a node that died
  is free one lease later (5 s; CONTRACT.md allows 10). Letting go deletes the key only
  while it still holds our value (a Lua compare-and-delete).
- Release requests travel over pub/sub. Every locker listens on its own inbox channel,
  `formforge:lock-inbox:<locker id>`. An asker whose SET NX fails publishes a request to
  the holder's inbox; the holder's locker calls the holder's `release_request(force)`
  and answers on the asker's inbox. An agreeing holder's locker also tells the asker
  when it has let go, and the asker tries SET NX again (it re-reads the key every
  `POLL_SECONDS` too, in case a notice is lost).
- Everything is bounded by `wait_seconds`: an asker never waits longer than about a
  second before it holds the lock or gets `upload-locked` (423).

A holder whose lease is in doubt (its key gone, or Redis unreachable for two renewals) is
told to stop at once, as if forced, before anyone else can take the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.locker import TAKEOVER_WAIT_SECONDS, Lock, Locker, ReleaseRequest, locked

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


class _Answer(enum.Enum):
    AGREED = "agreed"  # the holder stops and lets go soon (or, unreachable, its lease ends)
    REFUSED = "refused"  # the holder is still receiving: 423
    NOT_HELD = "not-held"  # its locker does not hold that lock (yet, or any more)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _close_pubsub(pubsub: PubSub) -> None:
    # PubSub.aclose has no annotations in some redis-py versions; typed by hand here so
    # no `type: ignore` goes stale when a release adds them.
    close: Callable[[], Awaitable[None]] = pubsub.aclose
    await close()


@dataclass(eq=False)
class _Held:
    upload_id: str
    value: str
    release_request: ReleaseRequest
    renewed_at: float
    askers: set[str] = field(default_factory=set)  # locker ids to tell once we let go
    done: bool = False


class _RedisLock(Lock):
    def __init__(self, locker: RedisLocker, held: _Held) -> None:
        self._locker, self._held = locker, held

    async def release(self) -> None:
        await self._locker._release(self._held)


class RedisLocker(Locker):
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
        self.id = secrets.token_hex(8)
        self._url = url
        self._lease_seconds = lease_seconds
        self._wait_seconds = wait_seconds
        self._inbox = INBOX_PREFIX + self.id
        self._redis: Redis | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()
        self._held: dict[str, _Held] = {}
        self._replies: dict[str, asyncio.Future[_Answer]] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and listen for release requests before any lock is taken."""
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
        for held in list(self._held.values()):
            await self._release(held)
        if self._pubsub is not None:
            await _close_pubsub(self._pubsub)
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = self._pubsub = None

    async def _client(self) -> Redis:
        if self._redis is None:
            await self.start()
        assert self._redis is not None
        return self._redis

    # -- acquiring -------------------------------------------------------------------------

    async def acquire(
        self, upload_id: str, release_request: ReleaseRequest, *, force: bool = False
    ) -> Lock:
        try:
            redis = await self._client()
            value = f"{self.id} {secrets.token_hex(16)}"
            taken_at = await self._take(redis, upload_id, value, force)
        except (RedisError, TimeoutError) as error:
            log.warning("lock service unavailable upload_id=%s error=%s", upload_id, error)
            raise UploadError(ErrorKind.INTERNAL, "the lock service is unavailable") from error
        held = _Held(upload_id, value, release_request, renewed_at=taken_at)
        self._held[upload_id] = held
        return _RedisLock(self, held)

    async def _take(self, redis: Redis, upload_id: str, value: str, force: bool) -> float:
        """SET NX until it succeeds, asking each new holder once; raises 423 on refusal or
        when the wait is over. Returns a time no later than the start of the new lease."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_seconds
        key = KEY_PREFIX + upload_id
        asked: str | None = None
        while True:
            attempt_at = loop.time()
            if await redis.set(key, value, nx=True, px=self._lease_ms):
                return attempt_at
            if loop.time() >= deadline:
                raise locked("the previous request did not let go in time")
            current = _text(await redis.get(key))
            if current is None:
                continue  # let go just now: try again at once
            if current != asked:
                answer = await self._ask(redis, upload_id, current, force, deadline)
                if answer is _Answer.REFUSED:
                    raise locked("another request is still writing to this upload")
                if answer is _Answer.AGREED:
                    asked = current  # else ask again after a poll: it may be registering
            await self._until_released(upload_id, deadline)

    async def _ask(
        self, redis: Redis, upload_id: str, current: str, force: bool, deadline: float
    ) -> _Answer:
        """Ask the holder named in `current` to let go; a holder that cannot be asked
        counts as agreeing: only its lease can free the lock, and we wait for that."""
        locker_id = current.partition(" ")[0]
        if locker_id == self.id:
            return self._answer(upload_id, current, force, asker=None)
        loop = asyncio.get_running_loop()
        request_id = secrets.token_hex(8)
        reply: asyncio.Future[_Answer] = loop.create_future()
        self._replies[request_id] = reply
        request = {
            "kind": "request",
            "id": request_id,
            "upload": upload_id,
            "value": current,
            "force": force,
            "from": self.id,
        }
        try:
            if not await redis.publish(INBOX_PREFIX + locker_id, json.dumps(request)):
                # No one listens there: that node is gone or cut off from Redis, and its
                # lease runs out on its own. Wait for that, within our bound.
                return _Answer.AGREED
            async with asyncio.timeout_at(deadline):
                return await reply
        except TimeoutError:
            return _Answer.REFUSED  # no answer in time: as good as a refusal
        finally:
            self._replies.pop(request_id, None)

    async def _until_released(self, upload_id: str, deadline: float) -> None:
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

    def _answer(self, upload_id: str, value: str, force: bool, asker: str | None) -> _Answer:
        """The holder's side of a release request: pass it to the holder's callback."""
        held = self._held.get(upload_id)
        if held is None or held.value != value:
            # Just let go (the key is going), lost, or SET but not registered yet.
            return _Answer.NOT_HELD
        agreed = held.release_request(force)
        if agreed and asker is not None:
            held.askers.add(asker)
        log.info("release requested upload_id=%s force=%s agreed=%s", upload_id, force, agreed)
        return _Answer.AGREED if agreed else _Answer.REFUSED

    async def _release(self, held: _Held) -> None:
        if held.done:
            return
        held.done = True
        if self._held.get(held.upload_id) is held:
            del self._held[held.upload_id]
        redis = self._redis
        try:
            if redis is not None:
                await redis.register_script(_RELEASE_SCRIPT)(
                    keys=[KEY_PREFIX + held.upload_id], args=[held.value]
                )
                notice = json.dumps({"kind": "released", "upload": held.upload_id})
                for locker_id in held.askers:
                    await redis.publish(INBOX_PREFIX + locker_id, notice)
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
                if loop.time() - held.renewed_at >= self._lease_seconds - 2 * interval:
                    self._lost(held, "Redis unreachable: the lease may run out")

    async def _renew(self, now: float) -> None:
        held = list(self._held.values())
        if not held or self._redis is None:
            return
        keys = [KEY_PREFIX + h.upload_id for h in held]
        values = [h.value for h in held]
        renew = self._redis.register_script(_RENEW_SCRIPT)
        renewed = await renew(keys=keys, args=[self._lease_ms, *values])
        for one, ok in zip(held, renewed, strict=True):
            if ok:
                one.renewed_at = now
            else:
                self._lost(one, "the lock key is gone or taken")

    def _lost(self, held: _Held, reason: str) -> None:
        """Someone else may hold the upload now: stop our holder at once."""
        if self._held.get(held.upload_id) is not held:
            return  # released meanwhile
        del self._held[held.upload_id]
        log.warning("lock lost upload_id=%s reason=%r", held.upload_id, reason)
        held.release_request(True)

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
            answer = self._answer(
                str(message["upload"]), str(message["value"]), bool(message["force"]), asker
            )
            reply = {"kind": "reply", "id": message["id"], "answer": answer.value}
            if self._redis is not None:
                await self._redis.publish(INBOX_PREFIX + asker, json.dumps(reply))
        elif kind == "reply":
            future = self._replies.get(str(message["id"]))
            if future is not None and not future.done():
                future.set_result(_Answer(message["answer"]))
        elif kind == "released":
            self._wake(str(message["upload"]))

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self._lease_seconds * 1000))
