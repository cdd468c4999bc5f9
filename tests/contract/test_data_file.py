"""The disk store holds a body's data file open between its pieces only while few bodies
stream at once (`stores/data_file.py`); past that, the file is closed until the next piece,
and every byte still lands where it belongs."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import new_upload_id
from formforge.core.model import NewUpload
from formforge.stores.data_file import held_max
from formforge.stores.file import FileStore


def open_data_files(store: FileStore) -> int:
    """Descriptors of this process that point at one of the store's data files."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(store.root)) and target.endswith(".bin")
    return count


Streams = tuple[list[str], list["asyncio.Queue[bytes | None]"], list["asyncio.Task[int]"]]


async def streams_of(store: FileStore, uploads: int) -> Streams:
    """`uploads` writes, each fed from its queue until it gets None."""
    ids: list[str] = []
    queues: list[asyncio.Queue[bytes | None]] = []
    writes: list[asyncio.Task[int]] = []
    for _ in range(uploads):
        upload = NewUpload(new_upload_id(), 5, {})
        await store.create(upload)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pieces(queue: asyncio.Queue[bytes | None] = queue) -> AsyncIterator[bytes]:
            while (piece := await queue.get()) is not None:
                yield piece

        ids.append(upload.id)
        queues.append(queue)
        writes.append(asyncio.create_task(store.write(upload.id, 0, pieces())))
    return ids, queues, writes


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("fsync", [False, True])
@pytest.mark.parametrize(("held", "open_between_pieces"), [(1, 0), (10, 3)])
@pytest.mark.gen_test
async def test_past_the_limit_no_data_file_stays_open_between_pieces(
    tmp_path: Path, held: int, open_between_pieces: int, fsync: bool
) -> None:
    store = FileStore(tmp_path, fsync=fsync)
    store.files_held_max = held
    ids, queues, writes = await streams_of(store, 3)
    await settle()  # all three are streaming
    for number, queue in enumerate(queues):
        await queue.put(f"a{number}-".encode())
    await settle()
    assert open_data_files(store) == open_between_pieces
    for number, queue in enumerate(queues):
        await queue.put(f"b{number}".encode())
        await queue.put(None)
    assert await asyncio.gather(*writes) == [5, 5, 5]
    assert open_data_files(store) == 0
    for number, upload_id in enumerate(ids):
        assert (tmp_path / f"{upload_id}.bin").read_bytes() == f"a{number}-b{number}".encode()


def test_the_limit_is_a_share_of_the_open_file_limit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 1 <= held_max() <= soft // 2


@pytest.mark.gen_test
async def test_out_of_descriptors_is_a_busy_server_to_retry_not_an_error(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    upload = NewUpload(new_upload_id(), 5, {})
    await store.create(upload)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open("/dev/null", os.O_RDONLY)
    os.close(lowest_free)

    async def body() -> AsyncIterator[bytes]:
        yield b"hello"

    restarted = FileStore(tmp_path, fsync=False)  # has read no record yet
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no open succeeds now
    try:
        with pytest.raises(UploadError) as reading:
            await restarted.get_info(upload.id)
        with pytest.raises(UploadError) as writing:
            await store.write(upload.id, 0, body())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for error in (reading.value, writing.value):
        assert error.kind is ErrorKind.SERVER_BUSY
        assert error.details["retry_after"] >= 1
    assert (await store.get_info(upload.id)).offset == 0  # nothing half-written
