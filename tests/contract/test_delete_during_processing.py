"""A DELETE is final, even when it lands in the middle of processing on another process.

CONTRACT.md: a terminated upload answers 410 from then on. Two "nodes" share one upload:
node A processes it (the whole-file sha256, then `complete`), node B terminates it. Each has
its own store object and its own locker over the same data, as two `--workers` processes
(disk store, file locker) or two cluster nodes (S3 store on SeaweedFS, Redis locker) have:
so the disk store's in-process record lock does not keep them apart, only what they share.

Each store can pause just before it writes a record in a given state. Node A's pauses
processing at the worst moment: it has read the upload's record (`processing`, not gone)
and is about to write it back as `complete`. Node B's DELETE then runs as far as it can: to
its end if nothing stops it, or until it waits for the lock processing holds. Then A goes
on. The other way round, B's DELETE pauses before its tombstone while processing comes to
record its sha256. Whatever the order, the upload must end terminated: never `complete` (or
`processing`) with its bytes gone, and no `uploadComplete` for an upload deleted first.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import Event, EventBus, UploadFinished
from formforge.core.ids import new_upload_id
from formforge.core.limits import Limits
from formforge.core.locker import Locker
from formforge.core.model import NewUpload, UploadState
from formforge.core.service import UploadService
from formforge.core.store import Store
from formforge.locks.file import FileLocker
from formforge.locks.redis import RedisLocker
from formforge.stores import info_file
from formforge.stores.file import FileStore
from formforge.stores.records import Record
from formforge.stores.s3.store import S3Store
from tests.redis_server import redis_url_fixture  # noqa: F401
from tests.seaweed import Seaweed, seaweed_fixture  # noqa: F401

BODY = b"bytes a DELETE removes" * 1000
PAUSE_LIMIT = 10.0  # seconds: a paused store goes on by itself after this, so nothing hangs
LIMITS = Limits(
    max_size=1 << 30,
    max_metadata_bytes=4096,
    unfinished_ttl_seconds=3600.0,
    checksum_algorithms=("sha256",),
    progress_interval_seconds=1.0,
)


@dataclass
class Pause:
    """Where a store stops before writing a record in state `on`, until told to go on."""

    on: UploadState | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    go_on: threading.Event = field(default_factory=threading.Event)

    def before_writing(self, record: Record) -> None:
        if self.on is not None and record.get("state") == str(self.on):
            self.reached.set()
            self.go_on.wait(PAUSE_LIMIT)

    async def until_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, PAUSE_LIMIT), "the store never paused"


class PausingFileStore(FileStore):
    def __init__(self, root: Path) -> None:
        # fsync on: record changes run in worker threads (with it off they run on the event
        # loop, which a pause would stop for both nodes).
        super().__init__(root, fsync=True)
        self.pause = Pause()

    def _tombstone_sync(self, upload_id: str, state: UploadState) -> None:
        self.pause.before_writing({"state": str(state)})  # a termination's record
        super()._tombstone_sync(upload_id, state)

    def _append(self, path: str, stored: info_file.Stored, changes: dict[str, object]) -> float:
        self.pause.before_writing(stored.record)  # in a worker thread: the event loop runs on
        return super()._append(path, stored, changes)


class PausingS3Store(S3Store):
    def __init__(self, bucket: str, **settings: Any) -> None:
        super().__init__(bucket, **settings)
        self.pause = Pause()

    async def put_record(self, upload_id: str, record: Record) -> None:
        await asyncio.to_thread(self.pause.before_writing, record)
        await super().put_record(upload_id, record)


@dataclass
class Node:
    store: Store
    locker: Locker
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        bus = EventBus()
        bus.subscribe(self.events.append)
        self.service = UploadService(self.store, self.locker, bus, LIMITS)


def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Node, Node]:
    """Nodes A and B over one data dir or one bucket prefix."""
    if request.param == "disk":
        return (
            Node(PausingFileStore(tmp_path), FileLocker(tmp_path)),
            Node(PausingFileStore(tmp_path), FileLocker(tmp_path)),
        )
    seaweed: Seaweed = request.getfixturevalue("seaweed")
    url: str = request.getfixturevalue("redis_url")
    prefix = f"t-{secrets.token_hex(6)}/"
    connection = {
        "endpoint": seaweed.endpoint,
        "access_key": seaweed.access_key,
        "secret_key": seaweed.secret_key,
        "prefix": prefix,
    }
    return (
        Node(PausingS3Store(seaweed.bucket, **connection), RedisLocker(url)),
        Node(PausingS3Store(seaweed.bucket, **connection), RedisLocker(url)),
    )


@pytest.fixture(params=["disk", "s3"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    io_loop = request.getfixturevalue("io_loop")  # the test's loop, closed after us
    a, b = pair(request, tmp_path)
    yield a, b
    for node in (a, b):
        pause_of(node).go_on.set()
        io_loop.run_sync(node.service.shutdown, timeout=15)
        io_loop.run_sync(node.locker.close, timeout=10)
        io_loop.run_sync(node.store.close, timeout=10)


def pause_of(node: Node) -> Pause:
    assert isinstance(node.store, PausingFileStore | PausingS3Store)
    return node.store.pause


async def chunks() -> AsyncIterator[bytes]:
    yield BODY


async def uploaded(node: Node) -> str:
    """An upload with every byte stored, not processed yet."""
    await node.store.recover()
    upload_id = new_upload_id()
    await node.store.create(NewUpload(upload_id, len(BODY), {"filename": "a.bin"}))
    await node.store.write(upload_id, 0, chunks())
    return upload_id


def asked_to_let_go(caplog: pytest.LogCaptureFixture, upload_id: str) -> bool:
    """Whether a locker was asked for the upload's lock: one node waits for the other."""
    return any(f"release requested upload_id={upload_id}" in r.message for r in caplog.records)


async def until(condition: Callable[[], bool], within: float) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time")


@pytest.mark.gen_test(timeout=40)
async def test_a_delete_during_processing_is_final(
    nodes: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="formforge.locks")
    a, b = nodes
    pause = pause_of(a)
    pause.on = UploadState.COMPLETE
    upload_id = await uploaded(a)
    await a.service.processor.finish(await a.store.get_info(upload_id))
    await pause.until_reached()

    deleting = asyncio.create_task(b.service.terminate(upload_id))
    await until(lambda: deleting.done() or asked_to_let_go(caplog, upload_id), PAUSE_LIMIT)
    pause.go_on.set()
    await deleting  # a DELETE always takes over: it succeeds, before or after processing
    await until(lambda: any(isinstance(e, UploadFinished) for e in a.events), within=PAUSE_LIMIT)

    info = await b.store.get_info(upload_id)
    assert info.state is UploadState.TERMINATED, (
        f"came back {info.state.value} with {info.offset} bytes after its DELETE"
    )
    with pytest.raises(UploadError) as gone:
        await a.service.get(upload_id)
    assert gone.value.kind is ErrorKind.TERMINATED


@pytest.mark.gen_test(timeout=40)
async def test_processing_that_meets_a_delete_ends_without_completing(
    nodes: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="formforge.locks")
    a, b = nodes
    pause = pause_of(b)
    pause.on = UploadState.TERMINATED
    upload_id = await uploaded(a)
    await a.store.update(upload_id, state=UploadState.PROCESSING)  # as a crash left it
    deleting = asyncio.create_task(b.service.terminate(upload_id))
    await pause.until_reached()  # B deletes: its tombstone is next

    assert await a.service.processor.resume() == 1
    finished = lambda: any(isinstance(e, UploadFinished) for e in a.events)  # noqa: E731
    await until(lambda: finished() or asked_to_let_go(caplog, upload_id), PAUSE_LIMIT)
    pause.go_on.set()
    await deleting
    await until(lambda: finished() or not a.service.processor.busy, PAUSE_LIMIT)

    assert not finished(), "uploadComplete for an upload deleted before it completed"
    assert (await a.store.get_info(upload_id)).state is UploadState.TERMINATED
