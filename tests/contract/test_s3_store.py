"""What only the S3 store has: real part rules, a tail, staging, restarts, bounded memory.

On a real SeaweedFS (tests/seaweed.py), which enforces S3's 5 MiB minimum part size, so a
completed upload or concatenation is itself proof that the rule was kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from formforge.core.events import Event, EventBus, ProcessingProgress, UploadFinished
from formforge.core.hooks import NoHooks
from formforge.core.ids import new_upload_id
from formforge.core.model import ConcatRole, NewUpload, UploadInfo
from formforge.core.processing import Processor
from formforge.locks.memory import MemoryLocker
from formforge.stores.s3.store import MAX_PARTS, MIN_PART, S3Store
from tests.seaweed import s3_store_fixture, s3_stores_fixture, seaweed_fixture  # noqa: F401

MIB = 1024 * 1024
PART = 8 * MIB  # the default part size
slow = pytest.mark.gen_test(timeout=240)


async def pieces(data: bytes, size: int = MIB, *, cut: bool = False) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
    if cut:
        raise ConnectionError("the client went away")


async def create(store: S3Store, size: int | None, **kw: Any) -> str:
    upload_id = new_upload_id()
    await store.create(NewUpload(upload_id, size, **kw))
    return upload_id


async def sha256_of(store: S3Store, upload_id: str, size: int) -> str:
    digest = hashlib.sha256()
    async for chunk in store.read(upload_id, 0, size):
        assert len(chunk) <= MIB  # streamed, never whole
        digest.update(chunk)
    return digest.hexdigest()


async def parts_of(store: S3Store, upload_id: str) -> list[int]:
    s3 = await store.s3()
    record, _ = await store._record(upload_id)
    listed = await s3.list_parts(
        Bucket=store.bucket, Key=store.key(upload_id), UploadId=record["multipart"]
    )
    return [part["Size"] for part in listed.get("Parts", [])]


async def head(store: S3Store, key: str) -> dict[str, Any] | None:
    s3 = await store.s3()
    try:
        found: dict[str, Any] = await s3.head_object(Bucket=store.bucket, Key=key)
    except Exception:
        return None
    return found


async def keys(store: S3Store) -> list[str]:
    return sorted([key async for key, _ in store._objects(store.prefix)])


# -- parts and tail --------------------------------------------------------------------------


@slow
async def test_a_big_write_is_full_parts_and_a_tail_then_one_object(s3_store: S3Store) -> None:
    data = os.urandom(30 * MIB)
    upload_id = await create(s3_store, len(data))
    assert await s3_store.write(upload_id, 0, pieces(data[: 27 * MIB])) == 27 * MIB
    assert await parts_of(s3_store, upload_id) == [PART, PART, PART]  # all >= 5 MiB
    tail = await head(s3_store, s3_store.key(upload_id, ".tail"))
    assert tail is not None
    assert (tail["ContentLength"], tail["Metadata"]) == (3 * MIB, {"part": "4"})
    assert (await s3_store.get_info(upload_id)).offset == 27 * MIB

    assert await s3_store.write(upload_id, 27 * MIB, pieces(data[27 * MIB :])) == len(data)
    info = await s3_store.get_info(upload_id)
    assert info.is_complete
    assert await keys(s3_store) == sorted(
        [s3_store.key(upload_id), s3_store.key(upload_id, ".info")]
    )
    assert await sha256_of(s3_store, upload_id, len(data)) == hashlib.sha256(data).hexdigest()
    assert (
        b"".join([c async for c in s3_store.read(upload_id, PART - 2, PART + 3)])
        == (data[PART - 2 : PART + 3])
    )


@slow
async def test_a_cut_write_keeps_its_bytes_across_a_restart(
    s3_stores: Callable[..., S3Store],
) -> None:
    data = os.urandom(20 * MIB)
    first = s3_stores()
    upload_id = await create(first, len(data))
    with pytest.raises(ConnectionError):
        await first.write(upload_id, 0, pieces(data[: 13 * MIB], cut=True))
    restarted = s3_stores()  # a new process on the same bucket
    await restarted.recover()
    assert (await restarted.get_info(upload_id)).offset == 13 * MIB
    assert await restarted.write(upload_id, 13 * MIB, pieces(data[13 * MIB :])) == len(data)
    assert await sha256_of(restarted, upload_id, len(data)) == hashlib.sha256(data).hexdigest()


@slow
async def test_a_tail_a_part_has_absorbed_is_not_counted_twice(s3_store: S3Store) -> None:
    """What a crash between uploading part n and replacing the tail leaves behind."""
    data = os.urandom(10 * MIB)
    upload_id = await create(s3_store, 12 * MIB)
    await s3_store.write(upload_id, 0, pieces(data))  # part 1 (8 MiB), tail of 2 MiB
    s3 = await s3_store.s3()
    await s3.put_object(
        Bucket=s3_store.bucket,
        Key=s3_store.key(upload_id, ".tail"),
        Body=data[:MIB],
        Metadata={"part": "1"},  # the old tail, which part 1 begins with
    )
    assert (await s3_store.get_info(upload_id)).offset == PART
    rest = os.urandom(4 * MIB)
    assert await s3_store.write(upload_id, PART, pieces(rest)) == 12 * MIB
    expected = hashlib.sha256(data[:PART] + rest).hexdigest()
    assert await sha256_of(s3_store, upload_id, 12 * MIB) == expected


@slow
async def test_a_crash_before_completion_is_completed_by_the_first_read(
    s3_store: S3Store,
) -> None:
    upload_id = await create(s3_store, 3)
    s3 = await s3_store.s3()
    record, _ = await s3_store._record(upload_id)
    # The last part went up, then the process died before CompleteMultipartUpload.
    await s3.upload_part(
        Bucket=s3_store.bucket,
        Key=s3_store.key(upload_id),
        UploadId=record["multipart"],
        PartNumber=1,
        Body=b"abc",
    )
    assert (await s3_store.get_info(upload_id)).is_complete
    assert b"".join([c async for c in s3_store.read(upload_id, 0, 3)]) == b"abc"
    assert (await s3_store._record(upload_id))[0]["multipart"] is None


@slow
async def test_deferred_and_empty_uploads_complete(s3_store: S3Store) -> None:
    empty = await create(s3_store, 0)
    assert (await s3_store.get_info(empty)).is_complete
    assert [c async for c in s3_store.read(empty, 0, 0)] == []

    for data in (b"", os.urandom(6 * MIB)):
        upload_id = await create(s3_store, None)
        assert await s3_store.write(upload_id, 0, pieces(data)) == len(data)
        await s3_store.update(upload_id, size=len(data))  # Upload-Length, then its PATCH
        assert await s3_store.write(upload_id, len(data), pieces(b"")) == len(data)
        assert (await s3_store.get_info(upload_id)).is_complete
        assert await sha256_of(s3_store, upload_id, len(data)) == hashlib.sha256(data).hexdigest()


@slow
async def test_a_stalled_body_has_its_bytes_written_as_the_tail(s3_store: S3Store) -> None:
    upload_id = await create(s3_store, 20 * MIB)
    gate: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def stalling() -> AsyncIterator[bytes]:
        while (chunk := await gate.get()) is not None:
            yield chunk

    data = os.urandom(10 * MIB)
    writer = asyncio.create_task(s3_store.write(upload_id, 0, stalling()))
    await gate.put(data[:MIB])
    await asyncio.sleep(3 * s3_store.idle_flush_seconds)  # the client stalls
    tail = await head(s3_store, s3_store.key(upload_id, ".tail"))
    assert tail is not None
    assert tail["ContentLength"] == MIB
    assert (await s3_store.get_info(upload_id)).offset == MIB
    for start in range(MIB, len(data), MIB):  # it goes on: the tail joins part 1
        await gate.put(data[start : start + MIB])
    await gate.put(None)
    assert await writer == len(data)
    assert await parts_of(s3_store, upload_id) == [PART]
    rest = os.urandom(10 * MIB)
    await s3_store.write(upload_id, len(data), pieces(rest))
    expected = hashlib.sha256(data + rest).hexdigest()
    assert await sha256_of(s3_store, upload_id, 20 * MIB) == expected


# -- provisional bytes -----------------------------------------------------------------------


@slow
@pytest.mark.parametrize("keep", [False, True])
async def test_provisional_bytes_go_through_staging(s3_store: S3Store, keep: bool) -> None:
    accepted, provisional = os.urandom(3 * MIB), os.urandom(12 * MIB)
    upload_id = await create(s3_store, 20 * MIB)
    await s3_store.write(upload_id, 0, pieces(accepted))
    asked: list[bool] = []

    def verdict() -> bool:  # asked once, at the end of the body
        asked.append(keep)
        return keep

    end = await s3_store.write(upload_id, len(accepted), pieces(provisional), keep=verdict)
    assert asked == [keep]
    stored = accepted + provisional if keep else accepted
    assert end == (await s3_store.get_info(upload_id)).offset == len(stored)
    assert not [k for k in await keys(s3_store) if ".stage." in k]  # staging cleaned up
    assert await parts_of(s3_store, upload_id) == ([PART] if keep else [])
    rest = os.urandom(20 * MIB - len(stored))
    await s3_store.write(upload_id, len(stored), pieces(rest))
    expected = hashlib.sha256(stored + rest).hexdigest()
    assert await sha256_of(s3_store, upload_id, 20 * MIB) == expected


@slow
async def test_a_cut_provisional_write_is_rolled_back(s3_store: S3Store) -> None:
    upload_id = await create(s3_store, 30 * MIB)
    await s3_store.write(upload_id, 0, pieces(os.urandom(2 * MIB)))
    with pytest.raises(ConnectionError):
        await s3_store.write(
            upload_id, 2 * MIB, pieces(os.urandom(11 * MIB), cut=True), keep=lambda: False
        )
    assert (await s3_store.get_info(upload_id)).offset == 2 * MIB
    assert not [k for k in await keys(s3_store) if ".stage." in k]


# -- concatenation ---------------------------------------------------------------------------


@slow
@pytest.mark.parametrize(
    "sizes",
    [
        [6 * MIB, 1 * MIB, 7 * MIB, 100],  # a small part in the middle
        [1 * MIB, 2 * MIB, 6 * MIB],  # small ones first, topped up from the next
        [2 * MIB, 0, 3 * MIB, 4 * MIB, 9 * MIB, 1],  # several small, an empty one
        [5, 7],  # all small: one part
    ],
)
async def test_concatenation_respects_the_part_rules(s3_store: S3Store, sizes: list[int]) -> None:
    partials: list[UploadInfo] = []
    datas = [os.urandom(size) for size in sizes]
    for data in datas:
        part_id = await create(s3_store, len(data), concat=ConcatRole.PARTIAL)
        await s3_store.write(part_id, 0, pieces(data))
        partials.append(await s3_store.get_info(part_id))
    whole = b"".join(datas)
    final = NewUpload(
        new_upload_id(), len(whole), {}, ConcatRole.FINAL, tuple(p.id for p in partials)
    )
    info = await s3_store.concatenate(final, partials)
    assert info.is_complete
    assert info.offset == len(whole)
    assert await sha256_of(s3_store, final.id, len(whole)) == hashlib.sha256(whole).hexdigest()


# -- the rules and the bounds ----------------------------------------------------------------


def test_part_sizes_keep_within_10000_parts_and_the_size_limits() -> None:
    store = S3Store("unused")
    five_tib = 5 * 1024 * 1024 * MIB
    for size in (five_tib, 100 * 1024 * MIB, 30 * MIB):
        start, number = 0, 1
        while start < size:
            part = store.target_part_size(number, start, size)
            assert MIN_PART <= part <= 5 * 1024 * MIB
            start, number = start + part, number + 1
        assert number - 1 <= MAX_PARTS
    deferred = sum(store.target_part_size(n, 0, None) for n in range(1, MAX_PARTS + 1))
    assert deferred >= five_tib
    assert store.target_part_size(1, 0, None) == PART
    assert store.target_part_size(1001, 0, None) == 2 * PART


@slow
async def test_memory_stays_within_a_few_parts_whatever_the_size(s3_store: S3Store) -> None:
    size = 64 * MIB
    upload_id = await create(s3_store, size)
    block = os.urandom(MIB)

    async def generated() -> AsyncIterator[bytes]:
        for index in range(size // MIB):
            yield index.to_bytes(8, "big") + block[8:]  # a fresh 1 MiB chunk each time

    await s3_store.s3()  # the client's own start-up is not the write's memory
    tracemalloc.start()
    try:
        assert await s3_store.write(upload_id, 0, generated()) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * PART, f"peak {peak / MIB:.1f} MiB"


@slow
async def test_recover_removes_stale_leftovers_only(s3_stores: Callable[..., S3Store]) -> None:
    store = s3_stores()
    live = await create(store, 10 * MIB)
    await store.write(live, 0, pieces(os.urandom(6 * MIB)))
    s3 = await store.s3()
    orphan = new_upload_id()  # a create that died before its info was written
    await s3.create_multipart_upload(Bucket=store.bucket, Key=store.key(orphan))
    await s3.put_object(Bucket=store.bucket, Key=store.stage_key(live, 1), Body=b"x")

    await s3_stores().recover()  # nothing is stale for a day
    assert store.stage_key(live, 1) in await keys(store)
    await s3_stores(stale_after_seconds=0).recover()
    assert await keys(store) == sorted([store.key(live, ".info"), store.key(live, ".tail")])
    uploads = [u async for u in store._multiparts(store.prefix)]
    assert [key for key, _, _ in uploads] == [store.key(live)]
    assert (await store.get_info(live)).offset == 6 * MIB


@slow
async def test_processing_an_s3_upload_reports_how_far_the_streamed_hash_got(
    s3_store: S3Store,
) -> None:
    """S3 has no Digester: processing streams the bytes and reports each chunk hashed."""
    data = os.urandom(3 * MIB + 5)
    upload_id = await create(s3_store, len(data))
    await s3_store.write(upload_id, 0, pieces(data))
    bus, heard = EventBus(), asyncio.Queue[Event]()
    bus.subscribe(heard.put_nowait)
    processor = Processor(s3_store, bus, NoHooks(), MemoryLocker(), progress_interval_seconds=0)
    await processor.finish(await s3_store.get_info(upload_id))
    events: list[Event] = []
    while not isinstance(event := await heard.get(), UploadFinished):
        events.append(event)
    steps = [(e.percent, e.message) for e in events if isinstance(e, ProcessingProgress)]
    assert steps[0] == (0.0, "hashing"), "one event as processing starts"
    percents = [percent for percent, _ in steps if percent is not None]
    assert len(percents) == len(steps), steps  # every report says how far the hash is
    assert percents == sorted(percents), steps
    assert percents[-1] == 100, steps
    assert len([p for p in percents if p is not None and 0 < p < 100]) >= 3, steps
    assert event.info.sha256 == hashlib.sha256(data).hexdigest()
