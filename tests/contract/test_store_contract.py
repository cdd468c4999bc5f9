"""The store contract: every store must pass this suite (`store` is each kind in turn)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import new_upload_id
from formforge.core.model import ConcatRole, NewUpload, UploadState
from formforge.core.store import Digester, Store
from formforge.stores.file import FileStore
from tests.seaweed import s3_store_fixture, s3_stores_fixture, seaweed_fixture  # noqa: F401
from tests.unit.memory_store import MemoryStore


@pytest.fixture(params=["file", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "s3":  # on a real SeaweedFS; skipped where `weed` is missing
        return request.getfixturevalue("s3_store")  # type: ignore[no-any-return]
    if request.param == "memory":  # the unit tier's store: held to the same contract
        return MemoryStore()
    return FileStore(tmp_path / "data", fsync=True)


async def chunks(*parts: bytes, fail_after: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if fail_after:
        raise ConnectionError("cut")


async def new(store: Store, size: int | None = 10, **kw: object) -> str:
    upload = NewUpload(new_upload_id(), size, **kw)  # type: ignore[arg-type]
    info = await store.create(upload)
    assert (info.offset, info.size, info.state) == (0, size, UploadState.UPLOADING)
    return upload.id


async def read_all(store: Store, upload_id: str, start: int, end: int) -> bytes:
    assert hasattr(store, "read")
    return b"".join([chunk async for chunk in store.read(upload_id, start, end)])


@pytest.mark.gen_test
async def test_created_upload_has_its_metadata(store: Store) -> None:
    upload_id = await new(store, 5, metadata={"filename": "a.txt"})
    info = await store.get_info(upload_id)
    assert info.metadata == {"filename": "a.txt"}


@pytest.mark.gen_test
async def test_unknown_upload_is_not_found(store: Store) -> None:
    with pytest.raises(UploadError) as error:
        await store.get_info(new_upload_id())
    assert error.value.kind is ErrorKind.NOT_FOUND


@pytest.mark.gen_test
async def test_write_appends_and_offset_follows_the_bytes(store: Store) -> None:
    upload_id = await new(store)
    assert await store.write(upload_id, 0, chunks(b"abc", b"de")) == 5
    assert await store.write(upload_id, 5, chunks(b"fghij")) == 10
    assert (await store.get_info(upload_id)).offset == 10
    assert await read_all(store, upload_id, 0, 10) == b"abcdefghij"
    assert await read_all(store, upload_id, 3, 6) == b"def"


@pytest.mark.gen_test
async def test_write_at_a_stale_offset_is_refused(store: Store) -> None:
    upload_id = await new(store)
    await store.write(upload_id, 0, chunks(b"abc"))
    with pytest.raises(UploadError) as error:
        await store.write(upload_id, 1, chunks(b"x"))
    assert error.value.kind is ErrorKind.OFFSET_MISMATCH
    assert (await store.get_info(upload_id)).offset == 3


@pytest.mark.gen_test
async def test_bytes_pulled_before_a_failure_are_kept(store: Store) -> None:
    upload_id = await new(store)
    with pytest.raises(ConnectionError):
        await store.write(upload_id, 0, chunks(b"abc", b"de", fail_after=True))
    assert (await store.get_info(upload_id)).offset == 5


@pytest.mark.gen_test
@pytest.mark.parametrize(("keep", "offset"), [(True, 5), (False, 2)])
async def test_provisional_bytes_stay_only_if_kept(store: Store, keep: bool, offset: int) -> None:
    upload_id = await new(store)
    await store.write(upload_id, 0, chunks(b"ab"))
    assert await store.write(upload_id, 2, chunks(b"cde"), keep=lambda: keep) == offset
    assert (await store.get_info(upload_id)).offset == offset


@pytest.mark.gen_test
async def test_update_declares_length_and_state(store: Store) -> None:
    upload_id = await new(store, None)
    info = await store.update(upload_id, size=7, state=UploadState.COMPLETE)
    assert (info.size, info.state) == (7, UploadState.COMPLETE)


@pytest.mark.gen_test
async def test_an_intended_length_is_kept_from_creation_and_from_an_update(store: Store) -> None:
    created = await new(store, None, intended_length=9)
    assert (await store.get_info(created)).intended_length == 9
    upload_id = await new(store, None)
    assert (await store.get_info(upload_id)).intended_length is None
    await store.update(upload_id, intended_length=12)
    info = await store.get_info(upload_id)
    assert (info.size, info.intended_length, info.is_complete) == (None, 12, False)


@pytest.mark.gen_test
async def test_terminate_keeps_a_tombstone_and_forget_removes_it(store: Store) -> None:
    upload_id = await new(store)
    await store.write(upload_id, 0, chunks(b"abc"))
    assert hasattr(store, "terminate")
    assert hasattr(store, "forget")
    await store.terminate(upload_id, UploadState.TERMINATED)
    info = await store.get_info(upload_id)
    assert (info.state, info.offset) == (UploadState.TERMINATED, 0)
    await store.forget(upload_id)
    with pytest.raises(UploadError):
        await store.get_info(upload_id)


@pytest.mark.gen_test
async def test_concatenate_joins_parts_in_order(store: Store) -> None:
    parts = []
    for text in (b"one-", b"two-", b"three"):
        part_id = await new(store, len(text), concat=ConcatRole.PARTIAL)
        await store.write(part_id, 0, chunks(text))
        parts.append(await store.get_info(part_id))
    final = NewUpload(new_upload_id(), 13, {}, ConcatRole.FINAL, tuple(p.id for p in parts))
    assert hasattr(store, "concatenate")
    info = await store.concatenate(final, parts)
    assert info.is_complete
    assert info.parts == final.parts
    assert await read_all(store, final.id, 0, 13) == b"one-two-three"


@pytest.mark.gen_test
async def test_list_ids_lists_every_upload(store: Store) -> None:
    ids = {await new(store) for _ in range(3)}
    assert {upload_id async for upload_id in store.list_ids()} == ids


# -- crash recovery, specific to the file store --------------------------------------------


@pytest.mark.gen_test
async def test_recover_cuts_back_a_provisional_write_a_crash_interrupted(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    upload_id = await new(store)
    await store.write(upload_id, 0, chunks(b"ab"))
    # What a crash mid-checksummed-PATCH leaves: the marker and unverified bytes.
    (tmp_path / "data" / f"{upload_id}.pending").write_text("2")
    with open(tmp_path / "data" / f"{upload_id}.bin", "ab") as data:
        data.write(b"unverified")
    await FileStore(tmp_path / "data").recover()
    assert (await store.get_info(upload_id)).offset == 2


@pytest.mark.gen_test
async def test_a_marker_that_is_not_ours_does_not_stop_the_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a hand or a broken disk makes a `.pending` that is not a number, or one named
    after no valid id: it is left as it is and said in the log, and the rest recovers (a
    server that did not start would serve no upload at all)."""
    root = tmp_path / "data"
    store = FileStore(root)
    cut, odd = await new(store), await new(store)
    for upload_id in (cut, odd):
        await store.write(upload_id, 0, chunks(b"ab"))
        with open(root / f"{upload_id}.bin", "ab") as data:
            data.write(b"unverified")
    (root / f"{cut}.pending").write_text("2")
    (root / f"{odd}.pending").write_text("two")
    (root / "not an id.pending").write_text("0")
    await FileStore(root).recover()
    assert (await store.get_info(cut)).offset == 2
    assert (root / f"{odd}.pending").read_text() == "two"
    assert (root / f"{odd}.bin").read_bytes() == b"abunverified"
    assert (root / "not an id.pending").exists()
    marked = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(marked) == 2
    assert any(f"{odd}.pending" in line for line in marked)


@pytest.mark.gen_test
async def test_recover_removes_orphans_and_scratch_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    kept = await new(store)
    root = tmp_path / "data"
    for name in (f"{new_upload_id()}.bin", f"{kept}.info.tmp", f"{new_upload_id()}.concat"):
        (root / name).write_bytes(b"x")
    await store.recover()
    assert sorted(p.name for p in root.iterdir()) == sorted([f"{kept}.bin", f"{kept}.info"])


@pytest.mark.gen_test
async def test_concurrent_reads_do_not_wait_for_a_writer(store: Store) -> None:
    upload_id = await new(store)
    gate: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def slow() -> AsyncIterator[bytes]:
        while (chunk := await gate.get()) is not None:
            yield chunk

    writer = asyncio.create_task(store.write(upload_id, 0, slow()))
    await gate.put(b"abc")
    for _ in range(100):
        if (await store.get_info(upload_id)).offset == 3:
            break
        await asyncio.sleep(0.01)
    assert (await store.get_info(upload_id)).offset == 3
    await gate.put(None)
    assert await writer == 3


@pytest.mark.gen_test
async def test_provisional_bytes_are_not_reported_before_they_are_kept(store: Store) -> None:
    upload_id = await new(store)
    await store.write(upload_id, 0, chunks(b"ab"))
    gate: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def slow() -> AsyncIterator[bytes]:
        while (chunk := await gate.get()) is not None:
            yield chunk

    writer = asyncio.create_task(store.write(upload_id, 2, slow(), keep=lambda: True))
    await gate.put(b"cde")
    await asyncio.sleep(0.1)  # the chunk is on disk, its checksum not yet checked
    assert (await store.get_info(upload_id)).offset == 2
    await gate.put(None)
    assert await writer == 5
    assert (await store.get_info(upload_id)).offset == 5


@pytest.mark.gen_test(timeout=30)
async def test_a_digesting_store_hashes_the_bytes_it_holds(store: Store) -> None:
    if not isinstance(store, Digester):
        pytest.skip("this store streams its bytes to processing instead")
    body = os.urandom(3 * 1024 * 1024 + 17)  # more than one read buffer, not a multiple
    upload_id = await new(store, len(body))
    await store.write(upload_id, 0, chunks(body[:1000], body[1000:]))
    assert await store.sha256(upload_id, len(body)) == hashlib.sha256(body).hexdigest()
    assert await store.sha256(upload_id, 1000) == hashlib.sha256(body[:1000]).hexdigest()
    # How far it got, on the event loop, as it goes (processing's `stage: processing`).
    hashed: list[int] = []
    loop_thread = threading.get_ident()
    on_loop: list[bool] = []

    def progress(count: int) -> None:
        hashed.append(count)
        on_loop.append(threading.get_ident() == loop_thread)

    assert await store.sha256(upload_id, len(body), progress) == hashlib.sha256(body).hexdigest()
    await asyncio.sleep(0)  # the last report was scheduled just before the hash returned
    assert len(hashed) >= 4, hashed
    assert hashed == sorted(hashed), hashed
    assert hashed[-1] == len(body), hashed
    assert all(on_loop)


@pytest.mark.gen_test(timeout=30)
async def test_listing_many_uploads_lets_other_work_run(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data", fsync=False)
    for _ in range(300):
        await new(store)
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    running = asyncio.create_task(ticker())
    listing = store.list_ids()
    seen = [await anext(listing)]  # the directory is read (in a thread) by now
    before = turns
    seen += [(await store.get_info(upload_id)).id async for upload_id in listing]
    running.cancel()
    assert len(seen) == 300
    # The sweeper reads every info like this; the loop must get turns meanwhile.
    assert turns - before >= 3
