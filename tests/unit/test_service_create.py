"""UploadService.create and create_final: sizes, limits, metadata, pre-create hooks, and
concatenation, over the in-memory store."""

from __future__ import annotations

import hashlib

import pytest

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import UploadCreated, UploadFinished
from formforge.core.hooks import PRE_CREATE, RequestInfo
from formforge.core.model import ConcatRole, UploadState
from formforge.core.service import UploadService
from tests.unit.memory_store import MemoryStore
from tests.unit.service_kit import LIMITS, NewService, RecordingBus, ScriptedHooks, send


async def stored_ids(store: MemoryStore) -> list[str]:
    return [upload_id async for upload_id in store.list_ids()]


async def refused(
    service: UploadService,
    size: int | None,
    metadata: dict[str, str] | None = None,
    intended_length: int | None = None,
) -> ErrorKind:
    """The kind of error creating the upload raises."""
    with pytest.raises(UploadError) as error:
        await service.create(size, metadata or {}, intended_length=intended_length)
    return error.value.kind


# -- sizes and limits ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_new_upload_is_empty_uploading_and_announced(
    service: UploadService, bus: RecordingBus
) -> None:
    info = await service.create(10, {"filename": "a.txt"})
    assert (info.size, info.offset, info.state) == (10, 0, UploadState.UPLOADING)
    assert info.filename == "a.txt"
    assert bus.of(UploadCreated) == [UploadCreated(info)]
    assert await service.get(info.id) == info


@pytest.mark.gen_test
async def test_a_deferred_length_is_no_size_yet(service: UploadService) -> None:
    info = await service.create(None, {})
    assert (info.size, info.is_complete) == (None, False)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("size", "intended_length"), [(LIMITS.max_size + 1, None), (None, LIMITS.max_size + 1)]
)
async def test_a_size_over_the_limit_is_413_and_stores_nothing(
    service: UploadService,
    store: MemoryStore,
    bus: RecordingBus,
    size: int | None,
    intended_length: int | None,
) -> None:
    kind = await refused(service, size, intended_length=intended_length)
    assert kind is ErrorKind.SIZE_EXCEEDED
    assert await stored_ids(store) == []
    assert bus.events == []


@pytest.mark.gen_test
async def test_the_largest_allowed_size_is_accepted(service: UploadService) -> None:
    assert (await service.create(LIMITS.max_size, {})).size == LIMITS.max_size


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "metadata", [{"filename": "x" * LIMITS.max_metadata_bytes}, {"two words": "v"}, {"": "v"}]
)
async def test_metadata_too_long_or_with_a_bad_key_is_refused(
    service: UploadService, store: MemoryStore, metadata: dict[str, str]
) -> None:
    assert await refused(service, 10, metadata=metadata) is ErrorKind.INVALID_METADATA
    assert await stored_ids(store) == []


@pytest.mark.gen_test
async def test_an_empty_upload_is_complete_at_once_and_processed(
    service: UploadService, bus: RecordingBus
) -> None:
    info = await service.create(0, {})
    assert info.state is UploadState.PROCESSING
    finished = await bus.first(UploadFinished)
    assert finished.info.state is UploadState.COMPLETE
    assert finished.info.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.gen_test
async def test_no_upload_is_created_while_shutting_down(service: UploadService) -> None:
    await service.shutdown()
    assert await refused(service, 10) is ErrorKind.SHUTTING_DOWN


# -- pre-create hooks ----------------------------------------------------------------------

REQUEST = RequestInfo({"User-Agent": "test"}, "127.0.0.1")


@pytest.mark.gen_test
async def test_a_pre_create_hook_may_replace_the_metadata(new_service: NewService) -> None:
    hooks = ScriptedHooks(frozenset({PRE_CREATE}), replace_metadata={"filename": "renamed"})
    service = new_service(hooks)
    info = await service.create(10, {"filename": "asked"}, request=REQUEST)
    assert info.metadata == {"filename": "renamed"}
    assert hooks.calls == [("pre-create", {"filename": "asked"})]


@pytest.mark.gen_test
async def test_a_rejecting_pre_create_hook_stores_nothing(
    new_service: NewService, store: MemoryStore, bus: RecordingBus
) -> None:
    rejection = UploadError(ErrorKind.REJECTED, "not today", status=418)
    service = new_service(ScriptedHooks(frozenset({PRE_CREATE}), reject=rejection))
    with pytest.raises(UploadError) as error:
        await service.create(10, {})
    assert error.value is rejection
    assert error.value.status == 418
    assert await stored_ids(store) == []
    assert bus.events == []


@pytest.mark.gen_test
async def test_metadata_a_hook_answers_is_held_to_the_same_limits(
    new_service: NewService, store: MemoryStore
) -> None:
    too_long = {"filename": "x" * LIMITS.max_metadata_bytes}
    hooks = ScriptedHooks(frozenset({PRE_CREATE}), replace_metadata=too_long)
    assert await refused(new_service(hooks), 10) is ErrorKind.INVALID_METADATA
    assert await stored_ids(store) == []


@pytest.mark.gen_test
async def test_hooks_without_a_pre_create_target_are_not_asked(new_service: NewService) -> None:
    hooks = ScriptedHooks(frozenset(), replace_metadata={"ignored": "yes"})
    info = await new_service(hooks).create(10, {"filename": "kept"})
    assert info.metadata == {"filename": "kept"}
    assert hooks.calls == []


# -- concatenation -------------------------------------------------------------------------


async def partial(service: UploadService, data: bytes, sent: int | None = None) -> str:
    info = await service.create(len(data), {}, ConcatRole.PARTIAL)
    to_send = data if sent is None else data[:sent]
    if to_send:
        assert (await send(service, info.id, 0, to_send)).error is None
    return info.id


@pytest.mark.gen_test
async def test_a_partial_upload_is_complete_with_its_last_byte_without_processing(
    service: UploadService, bus: RecordingBus
) -> None:
    part = await partial(service, b"part")
    assert (await service.get(part)).state is UploadState.COMPLETE
    assert bus.of(UploadFinished) == []


@pytest.mark.gen_test
async def test_a_final_upload_joins_its_parts_in_order_and_is_processed(
    service: UploadService, bus: RecordingBus
) -> None:
    parts = [await partial(service, text) for text in (b"one-", b"two-", b"three")]
    final = await service.create_final(parts, {"filename": "joined"})
    assert (final.size, final.concat, final.parts) == (13, ConcatRole.FINAL, tuple(parts))
    finished = await bus.first(UploadFinished)
    assert finished.info.id == final.id
    assert finished.info.sha256 == hashlib.sha256(b"one-two-three").hexdigest()
    _, reader = await service.open_download(final.id)
    assert b"".join([chunk async for chunk in reader.read(final.id, 0, 13)]) == b"one-two-three"


@pytest.mark.gen_test
async def test_a_final_upload_cannot_be_written_to(service: UploadService) -> None:
    final = await service.create_final([await partial(service, b"abc")], {})
    with pytest.raises(UploadError) as error:
        await send(service, final.id, 3, b"more")
    assert error.value.kind is ErrorKind.FINAL_UPLOAD


@pytest.mark.gen_test
async def test_parts_that_are_unfinished_whole_or_unknown_make_no_final_upload(
    service: UploadService, store: MemoryStore
) -> None:
    unfinished = await partial(service, b"abcd", sent=2)
    whole = (await service.create(3, {})).id
    for parts in ([unfinished], [whole], ["A" * 22], []):
        with pytest.raises(UploadError) as error:
            await service.create_final(parts, {})
        assert error.value.kind is ErrorKind.BAD_REQUEST
    assert sorted(await stored_ids(store)) == sorted([unfinished, whole])


@pytest.mark.gen_test
async def test_a_final_upload_over_the_size_limit_is_413(new_service: NewService) -> None:
    service = new_service(max_size=6)
    parts = [await partial(service, b"four"), await partial(service, b"four")]
    with pytest.raises(UploadError) as error:
        await service.create_final(parts, {})
    assert error.value.kind is ErrorKind.SIZE_EXCEEDED
