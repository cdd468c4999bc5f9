"""After the bytes: processing to complete, termination, the expiry sweep and shutdown of
UploadService, over the in-memory store."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from formforge.core.body import BodyEnd
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import UploadExpired, UploadFailed, UploadFinished, UploadTerminated
from formforge.core.hooks import POST_FINISH, POST_TERMINATE
from formforge.core.locker import BRIEF
from formforge.core.model import UploadState
from formforge.core.service import UploadService
from tests.unit.memory_store import MemoryStore
from tests.unit.service_kit import (
    TTL_SECONDS,
    NewService,
    RecordingBus,
    ScriptedHooks,
    receiving,
    send,
    settled,
)

HOOKS = frozenset({POST_FINISH, POST_TERMINATE})


async def gone_kind(service: UploadService, upload_id: str) -> ErrorKind:
    with pytest.raises(UploadError) as error:
        await service.get(upload_id)
    return error.value.kind


async def uploaded(service: UploadService, data: bytes) -> str:
    """An upload that has all of `data`: processing has started."""
    upload = await service.create(len(data), {})
    assert (await send(service, upload.id, 0, data)).error is None
    return upload.id


# -- processing ----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_post_finish_hooks_run_after_the_hash_and_before_complete(
    new_service: NewService, bus: RecordingBus
) -> None:
    hooks = ScriptedHooks(HOOKS)
    service = new_service(hooks)
    upload_id = await uploaded(service, b"content")
    finished = await bus.first(UploadFinished)
    assert hooks.calls == [(POST_FINISH, upload_id)]
    assert finished.info.state is UploadState.COMPLETE
    assert finished.info.sha256 == hashlib.sha256(b"content").hexdigest()


@pytest.mark.gen_test
async def test_a_failing_post_finish_hook_marks_the_upload_error(
    new_service: NewService, bus: RecordingBus
) -> None:
    service = new_service(ScriptedHooks(HOOKS, fail_post_finish=True))
    upload_id = await uploaded(service, b"content")
    failed = await bus.first(UploadFailed)
    assert (failed.upload_id, failed.kind) == (upload_id, ErrorKind.PROCESSING_FAILED)
    info = await service.get(upload_id)
    assert info.state is UploadState.ERROR
    assert info.error == "the hook said no"
    assert bus.of(UploadFinished) == []


@pytest.mark.gen_test
async def test_processing_a_crash_cut_short_is_resumed(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    upload = await service.create(3, {})
    await store.write(upload.id, 0, chunks(b"abc"))  # the last byte, then a crash
    assert await service.processor.resume() == 1
    finished = await bus.first(UploadFinished)
    assert (finished.info.id, finished.info.state) == (upload.id, UploadState.COMPLETE)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.gen_test
async def test_an_upload_deleted_while_processed_stays_deleted(
    new_service: NewService, bus: RecordingBus
) -> None:
    gate = asyncio.Event()
    hooks = ScriptedHooks(HOOKS, post_finish_gate=gate)
    service = new_service(hooks)
    upload_id = await uploaded(service, b"content")
    await hooks.ran(POST_FINISH)
    await service.terminate(upload_id)
    gate.set()
    await settled(service)
    assert await gone_kind(service, upload_id) is ErrorKind.TERMINATED
    assert bus.of(UploadFinished) == []
    assert ErrorKind.PROCESSING_FAILED not in [e.kind for e in bus.of(UploadFailed)]


# -- termination ---------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_terminated_upload_is_gone_with_410_and_its_hooks_told(
    new_service: NewService, store: MemoryStore, bus: RecordingBus
) -> None:
    hooks = ScriptedHooks(HOOKS)
    service = new_service(hooks)
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"abc")
    await service.terminate(upload.id)
    assert await gone_kind(service, upload.id) is ErrorKind.TERMINATED
    tombstone = await store.get_info(upload.id)
    assert (tombstone.state, tombstone.offset) == (UploadState.TERMINATED, 0)
    assert bus.of(UploadTerminated) == [UploadTerminated(upload.id)]
    assert bus.of(UploadFailed)[-1].kind is ErrorKind.TERMINATED
    await hooks.ran(POST_TERMINATE)
    assert (POST_TERMINATE, upload.id) in hooks.calls
    with pytest.raises(UploadError) as again:
        await service.terminate(upload.id)
    assert again.value.kind is ErrorKind.TERMINATED


@pytest.mark.gen_test
async def test_terminating_stops_a_write_still_receiving(
    service: UploadService, store: MemoryStore
) -> None:
    upload, body, writing = await receiving(service)
    await service.terminate(upload.id)
    with pytest.raises(UploadError) as error:
        await writing
    assert error.value.kind is ErrorKind.CONNECTION_LOST
    assert body.end is BodyEnd.STOPPED
    assert (await store.get_info(upload.id)).offset == 0


@pytest.mark.gen_test
async def test_an_unknown_upload_cannot_be_terminated(service: UploadService) -> None:
    with pytest.raises(UploadError) as error:
        await service.terminate("A" * 22)
    assert error.value.kind is ErrorKind.NOT_FOUND


# -- expiry --------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_an_idle_unfinished_upload_expires_and_the_sweep_removes_its_bytes(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"abc")
    store.age(upload.id, TTL_SECONDS)
    assert await gone_kind(service, upload.id) is ErrorKind.EXPIRED
    assert (await service.status(upload.id)).state is UploadState.EXPIRED
    assert await service.sweep() == 1
    tombstone = await store.get_info(upload.id)
    assert (tombstone.state, tombstone.offset) == (UploadState.EXPIRED, 0)
    assert bus.of(UploadExpired) == [UploadExpired(upload.id)]
    failed = bus.of(UploadFailed)[-1]
    assert (failed.kind, failed.offset) == (ErrorKind.EXPIRED, 3)


@pytest.mark.gen_test
async def test_the_sweep_leaves_live_and_complete_uploads_alone(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    live = await service.create(10, {})
    store.age(live.id, TTL_SECONDS / 2)
    complete = await uploaded(service, b"done")
    await bus.first(UploadFinished)
    store.age(complete, TTL_SECONDS * 2)
    assert await service.sweep() == 0
    assert (await service.get(live.id)).state is UploadState.UPLOADING
    assert (await service.get(complete)).state is UploadState.COMPLETE


@pytest.mark.gen_test
async def test_the_sweep_decides_under_the_lock_so_bytes_stored_meanwhile_stay(
    service: UploadService, store: MemoryStore
) -> None:
    upload = await service.create(10, {})
    store.age(upload.id, TTL_SECONDS)  # expired as the sweep first reads it
    lock = await service.locker.acquire(upload.id, BRIEF)  # a write under way
    sweep = asyncio.ensure_future(service.sweep())
    for _ in range(10):  # the sweep reads the record and asks for the lock
        await asyncio.sleep(0)
    assert not sweep.done()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    assert await store.write(upload.id, 0, chunks()) == 3  # the write's bytes land
    await lock.release()
    assert await sweep == 0
    assert (await service.get(upload.id)).offset == 3


@pytest.mark.gen_test
async def test_a_tombstone_is_forgotten_one_time_to_live_later(
    service: UploadService, store: MemoryStore
) -> None:
    upload = await service.create(10, {})
    await service.terminate(upload.id)
    assert await service.sweep() == 0
    store.age(upload.id, TTL_SECONDS)
    assert await service.sweep() == 1
    assert await gone_kind(service, upload.id) is ErrorKind.NOT_FOUND


# -- shutdown ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_shutdown_stops_writes_keeping_their_bytes_and_refuses_new_ones(
    service: UploadService, store: MemoryStore
) -> None:
    upload, body, writing = await receiving(service)
    await service.shutdown()
    assert writing.done()
    assert body.end is BodyEnd.STOPPED
    assert (await store.get_info(upload.id)).offset == 3
    with pytest.raises(UploadError) as error:
        await send(service, upload.id, 3, b"d")
    assert error.value.kind is ErrorKind.SHUTTING_DOWN


@pytest.mark.gen_test
async def test_processing_cut_by_shutdown_is_finished_by_the_next_start(
    new_service: NewService, bus: RecordingBus
) -> None:
    first = new_service(ScriptedHooks(HOOKS, post_finish_gate=asyncio.Event()))
    upload_id = await uploaded(first, b"content")
    await first.shutdown()
    assert (await first.get(upload_id)).state is UploadState.PROCESSING
    second = new_service(ScriptedHooks(HOOKS))  # the same store, as after a restart
    assert await second.processor.resume() == 1
    finished = await bus.first(UploadFinished)
    assert (finished.info.id, finished.info.state) == (upload_id, UploadState.COMPLETE)
