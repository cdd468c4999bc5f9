"""What the unit tests of UploadService drive it with: a bus that remembers what it carried,
hooks whose answers a test sets, and a request body fed by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from formforge.core.body import BodyStream
from formforge.core.checksum import Checksum
from formforge.core.errors import UploadError
from formforge.core.events import Event, EventBus, UploadProgress
from formforge.core.hooks import POST_FINISH, HookFailed, Hooks, ProgressOpener, RequestInfo
from formforge.core.limits import Limits
from formforge.core.model import UploadInfo
from formforge.core.service import UploadService
from formforge.core.store import Store
from formforge.core.write_request import WriteRequest
from formforge.locks.memory import MemoryLocker

E = TypeVar("E")
IDLE_TIMEOUT = 60.0  # no test waits for a stall: bodies end when the test says
TTL_SECONDS = 3600.0
LIMITS = Limits(
    max_size=1000,
    max_metadata_bytes=200,
    unfinished_ttl_seconds=TTL_SECONDS,
    checksum_algorithms=("sha1", "md5", "sha256", "crc32"),
    # Only the flush at the end of each request, unless a test asks for more.
    progress_interval_seconds=TTL_SECONDS,
)


class NewService(Protocol):
    """The unit tier's `new_service` fixture: a service over the test's store and bus."""

    def __call__(self, hooks: Hooks | None = None, **limits: Any) -> UploadService: ...


def make_service(
    store: Store, bus: EventBus, hooks: Hooks | None = None, **limits: Any
) -> UploadService:
    """The service over `store`, with the memory locker and LIMITS changed by `limits`."""
    return UploadService(store, MemoryLocker(), bus, replace(LIMITS, **limits), hooks)


class RecordingBus(EventBus):
    """The service's real bus, remembering every event it carried, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self._waiters: list[tuple[type, asyncio.Future[Event]]] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)
        super().publish(event)
        for kind, waiter in self._waiters:
            if isinstance(event, kind) and not waiter.done():
                waiter.set_result(event)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def first(self, kind: type[E]) -> E:
        """The first event of `kind`, published already or still to come (background work)."""
        seen = self.of(kind)
        if seen:
            return seen[0]
        waiter: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, waiter))
        event = await waiter
        assert isinstance(event, kind)
        return event

    def progress(self, upload_id: str) -> list[int]:
        """The offsets of the upload's progress events."""
        return [e.offset for e in self.of(UploadProgress) if e.upload_id == upload_id]


@dataclass
class ScriptedHooks:
    """A `formforge.core.hooks.Hooks` whose answers the test sets, recording every call."""

    points: frozenset[str]
    replace_metadata: Mapping[str, str] | None = None
    reject: UploadError | None = None
    fail_post_finish: bool = False
    # While set and not yet open, post-finish waits for it: processing held at a known point.
    post_finish_gate: asyncio.Event | None = None
    calls: list[tuple[str, object]] = field(default_factory=list)
    _ran: dict[str, asyncio.Event] = field(default_factory=dict)

    def has(self, point: str) -> bool:
        return point in self.points

    async def pre_create(
        self, size: int | None, metadata: dict[str, str], request: RequestInfo | None
    ) -> dict[str, str]:
        self.calls.append(("pre-create", dict(metadata)))
        if self.reject is not None:
            raise self.reject
        return dict(self.replace_metadata) if self.replace_metadata is not None else metadata

    async def run_all(
        self,
        point: str,
        info: UploadInfo,
        request: RequestInfo | None = None,
        progress: ProgressOpener | None = None,
    ) -> None:
        self.calls.append((point, info.id))
        self._ran.setdefault(point, asyncio.Event()).set()
        if point != POST_FINISH:
            return
        if self.post_finish_gate is not None:
            await self.post_finish_gate.wait()
        if self.fail_post_finish:
            raise HookFailed("the hook said no")

    async def ran(self, point: str) -> None:
        """Until `point` has been called (hooks run in the background)."""
        await self._ran.setdefault(point, asyncio.Event()).wait()


@dataclass
class Sent:
    """How a write ended: the upload after it, or the error its task raised."""

    info: UploadInfo | None
    error: UploadError | None
    body: BodyStream


async def start(
    service: UploadService, request: WriteRequest
) -> tuple[BodyStream, asyncio.Task[UploadInfo]]:
    """A write under way: its body, fed by the test, and the task storing it."""
    body = BodyStream(IDLE_TIMEOUT, lambda end: None)
    return body, await service.start_write(request, body)


async def receiving(
    service: UploadService, data: bytes = b"abc"
) -> tuple[UploadInfo, BodyStream, asyncio.Task[UploadInfo]]:
    """An upload of 10 bytes with a write under way that has stored `data` and goes on."""
    upload = await service.create(10, {})
    body, writing = await start(service, WriteRequest(upload.id, 0))
    await feed(body, data)
    return upload, body, writing


async def feed(body: BodyStream, *chunks: bytes) -> None:
    """Hand chunks over one at a time, each taken by the store before the next (backpressure)."""
    for chunk in chunks:
        if body.end is not None:
            return  # the write stopped reading
        waiter = body.feed(chunk)
        if waiter is not None:  # None: the store was waiting and takes it at its next step
            await waiter


async def send(
    service: UploadService,
    upload_id: str,
    offset: int,
    *chunks: bytes,
    cut: bool = False,
    chunked: bool = False,
    checksum: Checksum | None = None,
    length: int | None = None,
    intended_length: int | None = None,
) -> Sent:
    """One chunk request from start to end: the body complete, or cut after `chunks`. Its
    length is declared up front unless it is `chunked` (or `cut`: it promised more)."""
    request = WriteRequest(
        upload_id,
        offset,
        length=length,
        content_length=None if cut or chunked else sum(map(len, chunks)),
        checksum=checksum,
        intended_length=intended_length,
    )
    body, task = await start(service, request)
    await feed(body, *chunks)
    if cut:
        body.cut()
    else:
        body.finish()
    try:
        return Sent(await task, None, body)
    except UploadError as error:
        return Sent(None, error, body)


async def settled(service: UploadService) -> None:
    """Until the background work the service started (processing, post-terminate hooks) is
    over. The processor keeps no public handle on it: a test needs one, a server does not."""
    while tasks := set(service.processor._tasks):
        await asyncio.wait(tasks)
