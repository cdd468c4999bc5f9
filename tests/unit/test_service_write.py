"""UploadService's writes: offsets, lengths, checksums, cut bodies, take-over, capacity and
progress events, over the in-memory store."""

from __future__ import annotations

import hashlib

import pytest

from formforge.core.body import BodyEnd
from formforge.core.checksum import Checksum
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import BytesWritten, UploadFailed, UploadFinished
from formforge.core.model import UploadState
from formforge.core.service import UploadService
from formforge.core.write_request import WriteRequest
from tests.unit.memory_store import MemoryStore
from tests.unit.service_kit import (
    LIMITS,
    NewService,
    RecordingBus,
    feed,
    receiving,
    send,
    start,
)


async def stored(store: MemoryStore, upload_id: str) -> bytes:
    info = await store.get_info(upload_id)
    return b"".join([chunk async for chunk in store.read(upload_id, 0, info.offset)])


async def refused(service: UploadService, request: WriteRequest) -> UploadError:
    """The error a write raises before it reads any of its body."""
    with pytest.raises(UploadError) as error:
        await send(
            service,
            request.upload_id,
            request.offset,
            b"x" * (request.content_length or 0),
            length=request.length,
            intended_length=request.intended_length,
        )
    return error.value


def sha1_of(data: bytes) -> Checksum:
    return Checksum("sha1", hashlib.sha1(data).digest())


# -- offsets and lengths -------------------------------------------------------------------


@pytest.mark.gen_test
async def test_chunks_append_and_the_offset_follows(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    upload = await service.create(10, {})
    first = await send(service, upload.id, 0, b"abc", b"de")
    assert first.info is not None
    assert first.info.offset == 5
    second = await send(service, upload.id, 5, b"fgh")
    assert second.info is not None
    assert (second.info.offset, second.info.state) == (8, UploadState.UPLOADING)
    assert await stored(store, upload.id) == b"abcdefgh"
    assert bus.of(BytesWritten) == [BytesWritten(upload.id, 5), BytesWritten(upload.id, 3)]


@pytest.mark.gen_test
@pytest.mark.parametrize("offset", [0, 2, 4])
async def test_a_write_at_another_offset_is_409_with_the_offset_and_stores_nothing(
    service: UploadService, store: MemoryStore, offset: int
) -> None:
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"abc")
    error = await refused(service, WriteRequest(upload.id, offset, content_length=2))
    assert error.kind is ErrorKind.OFFSET_MISMATCH
    assert error.details["offset"] == 3
    assert await stored(store, upload.id) == b"abc"
    assert (await send(service, upload.id, 3, b"d")).error is None  # the lock was let go


@pytest.mark.gen_test
async def test_a_body_declared_past_the_size_is_413_before_it_is_read(
    service: UploadService, store: MemoryStore
) -> None:
    upload = await service.create(4, {})
    error = await refused(service, WriteRequest(upload.id, 0, content_length=5))
    assert error.kind is ErrorKind.SIZE_EXCEEDED
    assert await stored(store, upload.id) == b""


@pytest.mark.gen_test
async def test_a_body_that_runs_past_the_size_stops_there_and_keeps_what_fitted(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    upload = await service.create(4, {})
    sent = await send(service, upload.id, 0, b"abc", b"de", chunked=True)
    assert sent.error is not None
    assert sent.error.kind is ErrorKind.SIZE_EXCEEDED
    assert await stored(store, upload.id) == b"abc"
    assert [failed.kind for failed in bus.of(UploadFailed)] == [ErrorKind.SIZE_EXCEEDED]


@pytest.mark.gen_test
async def test_a_deferred_length_is_declared_once_within_the_limits(
    service: UploadService,
) -> None:
    upload = await service.create(None, {})
    await send(service, upload.id, 0, b"abc")
    for length, kind in [
        (2, ErrorKind.BAD_REQUEST),  # below the offset
        (LIMITS.max_size + 1, ErrorKind.SIZE_EXCEEDED),
    ]:
        error = await refused(service, WriteRequest(upload.id, 3, length=length))
        assert error.kind is kind
    declared = await send(service, upload.id, 3, b"de", length=6)
    assert declared.info is not None
    assert (declared.info.size, declared.info.offset) == (6, 5)
    error = await refused(service, WriteRequest(upload.id, 5, length=7, content_length=1))
    assert error.kind is ErrorKind.BAD_REQUEST  # a length is declared only once
    done = await send(service, upload.id, 5, b"f", length=6)
    assert done.info is not None
    assert done.info.state is UploadState.PROCESSING


@pytest.mark.gen_test
async def test_an_intended_length_bounds_the_upload_but_reaching_it_completes_nothing(
    service: UploadService,
) -> None:
    upload = await service.create(None, {}, intended_length=5)
    error = await refused(service, WriteRequest(upload.id, 0, content_length=6))
    assert error.kind is ErrorKind.BAD_REQUEST
    assert error.details["intended_length"] == 5
    other = await refused(service, WriteRequest(upload.id, 0, intended_length=4))
    assert other.details["intended_length"] == 5
    reached = await send(service, upload.id, 0, b"abcde", intended_length=5)
    assert reached.info is not None
    assert (reached.info.offset, reached.info.size, reached.info.is_complete) == (5, None, False)
    done = await send(service, upload.id, 5, length=5)
    assert done.info is not None
    assert done.info.is_complete


@pytest.mark.gen_test
async def test_an_intended_length_said_by_a_write_is_kept(service: UploadService) -> None:
    upload = await service.create(None, {})
    await send(service, upload.id, 0, b"ab", intended_length=9)
    assert (await service.get(upload.id)).intended_length == 9


# -- checksums and cut bodies --------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_body_matching_its_checksum_is_kept(
    service: UploadService, store: MemoryStore
) -> None:
    upload = await service.create(10, {})
    sent = await send(service, upload.id, 0, b"abc", b"def", checksum=sha1_of(b"abcdef"))
    assert sent.error is None
    assert await stored(store, upload.id) == b"abcdef"


@pytest.mark.gen_test
async def test_a_checksum_mismatch_is_460_and_drops_the_bytes(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"ab")
    sent = await send(service, upload.id, 2, b"cde", checksum=sha1_of(b"other"))
    assert sent.error is not None
    assert (sent.error.kind, sent.error.details["offset"]) == (ErrorKind.CHECKSUM_MISMATCH, 2)
    assert await stored(store, upload.id) == b"ab"
    assert bus.of(BytesWritten)[-1] == BytesWritten(upload.id, 0)
    assert bus.of(UploadFailed)[-1].kind is ErrorKind.CHECKSUM_MISMATCH


@pytest.mark.gen_test
async def test_a_cut_body_keeps_its_bytes_and_says_the_connection_was_lost(
    service: UploadService, store: MemoryStore, bus: RecordingBus
) -> None:
    upload = await service.create(10, {})
    sent = await send(service, upload.id, 0, b"abc", b"de", cut=True)
    assert sent.error is not None
    assert (sent.error.kind, sent.error.details["offset"]) == (ErrorKind.CONNECTION_LOST, 5)
    assert sent.error.kind.retryable
    assert await stored(store, upload.id) == b"abcde"
    failed = bus.of(UploadFailed)[-1]
    assert (failed.kind, failed.offset) == (ErrorKind.CONNECTION_LOST, 5)


@pytest.mark.gen_test
async def test_a_cut_body_with_a_checksum_keeps_nothing_it_cannot_verify(
    service: UploadService, store: MemoryStore
) -> None:
    upload = await service.create(10, {})
    sent = await send(service, upload.id, 0, b"abc", cut=True, checksum=sha1_of(b"abcdef"))
    assert sent.error is not None
    assert (sent.error.kind, sent.error.details["offset"]) == (ErrorKind.CONNECTION_LOST, 0)
    assert await stored(store, upload.id) == b""


# -- completion ----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_last_byte_starts_processing_then_the_upload_is_complete(
    service: UploadService, bus: RecordingBus
) -> None:
    upload = await service.create(6, {"filename": "f"})
    sent = await send(service, upload.id, 0, b"abc", b"def")
    assert sent.info is not None
    assert sent.info.state is UploadState.PROCESSING
    finished = await bus.first(UploadFinished)
    assert finished.info.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    info = await service.get(upload.id)
    assert (info.state, info.sha256) == (UploadState.COMPLETE, finished.info.sha256)


@pytest.mark.gen_test
async def test_a_download_waits_for_the_last_byte(service: UploadService) -> None:
    upload = await service.create(4, {})
    await send(service, upload.id, 0, b"ab")
    with pytest.raises(UploadError) as error:
        await service.open_download(upload.id)
    assert (error.value.kind, error.value.details["offset"]) == (ErrorKind.INCOMPLETE, 2)
    await send(service, upload.id, 2, b"cd")
    info, reader = await service.open_download(upload.id)
    assert info.is_complete
    assert b"".join([chunk async for chunk in reader.read(upload.id, 0, 4)]) == b"abcd"


# -- one writer, and capacity --------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_write_that_takes_over_stops_the_one_receiving_which_keeps_its_bytes(
    service: UploadService, store: MemoryStore
) -> None:
    upload, body, first = await receiving(service)
    # A protocol whose clients send anew only once they gave up on the last request.
    newer_body, newer = await start(service, WriteRequest(upload.id, 3, take_over=True))
    await feed(newer_body, b"de")
    newer_body.finish()
    assert (await newer).offset == 5
    with pytest.raises(UploadError) as error:
        await first
    assert error.value.kind is ErrorKind.CONNECTION_LOST
    assert body.end is BodyEnd.STOPPED
    assert await stored(store, upload.id) == b"abcde"


@pytest.mark.gen_test
async def test_beyond_max_concurrent_uploads_is_503_with_retry_after(
    new_service: NewService,
) -> None:
    service = new_service(max_concurrent_uploads=1)
    busy, other = await service.create(10, {}), await service.create(10, {})
    body, writing = await start(service, WriteRequest(busy.id, 0))
    error = await refused(service, WriteRequest(other.id, 0, content_length=1))
    assert (error.kind, error.details["retry_after"]) == (ErrorKind.SERVER_BUSY, 2)
    assert (await send(service, other.id, 0)).error is None  # no bytes: no slot needed
    body.finish()
    await writing
    assert (await send(service, other.id, 0, b"a")).error is None


# -- progress events -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_progress_is_flushed_once_at_the_end_of_a_request_within_the_interval(
    service: UploadService, bus: RecordingBus
) -> None:
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"ab", b"cd", b"ef")
    assert bus.progress(upload.id) == [6]


@pytest.mark.gen_test
async def test_progress_follows_every_chunk_when_each_is_due_and_ends_with_the_flush(
    new_service: NewService, bus: RecordingBus
) -> None:
    service = new_service(progress_interval_seconds=0)
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"ab", b"cd", b"ef")
    assert bus.progress(upload.id) == [2, 4, 6, 6]


@pytest.mark.gen_test
async def test_checksummed_bytes_are_reported_only_once_verified(
    new_service: NewService, bus: RecordingBus
) -> None:
    service = new_service(progress_interval_seconds=0)
    upload = await service.create(10, {})
    await send(service, upload.id, 0, b"ab", b"cd", checksum=sha1_of(b"abcd"))
    assert bus.progress(upload.id) == [4]
