"""The disk store reads a record file again only when it changed (`stores/record_cache.py`),
and every change is seen: its own, another process's, a rewrite, a removal."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import new_upload_id
from formforge.core.model import NewUpload, UploadState
from formforge.stores import info_file
from formforge.stores.file import FileStore
from formforge.stores.record_cache import RecordCache


async def created(store: FileStore) -> str:
    upload = NewUpload(new_upload_id(), 4, {"filename": "a.txt"})
    await store.create(upload)
    return upload.id


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of record files read whole."""
    seen: list[str] = []
    real = info_file.read

    def counted(path: str) -> info_file.Stored:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(info_file, "read", counted)
    return seen


@pytest.mark.gen_test
async def test_an_unchanged_record_is_read_once(tmp_path: Path, reads: list[str]) -> None:
    upload_id = await created(FileStore(tmp_path, fsync=False))
    store = FileStore(tmp_path, fsync=False)  # a restart, or another worker
    first = await store.get_info(upload_id)
    assert await store.get_info(upload_id) == first
    assert await store.get_info(upload_id) == first
    assert len(reads) == 1


@pytest.mark.parametrize("fsync", [True, False])
@pytest.mark.gen_test
async def test_a_record_just_created_is_not_read_back(
    tmp_path: Path, reads: list[str], fsync: bool
) -> None:
    store = FileStore(tmp_path, fsync=fsync)
    upload_id = await created(store)
    info = await store.get_info(upload_id)
    assert (info.size, info.offset, info.metadata) == (4, 0, {"filename": "a.txt"})
    assert reads == []
    await FileStore(tmp_path).update(upload_id, size=8)  # and still sees a change
    assert (await store.get_info(upload_id)).size == 8


@pytest.mark.gen_test
async def test_a_change_by_another_process_is_seen(tmp_path: Path, reads: list[str]) -> None:
    store = FileStore(tmp_path, fsync=False)
    upload_id = await created(store)
    assert (await store.get_info(upload_id)).state is UploadState.UPLOADING
    other = FileStore(tmp_path, fsync=False)  # another worker on the same directory
    await other.update(upload_id, state=UploadState.PROCESSING)
    assert (await store.get_info(upload_id)).state is UploadState.PROCESSING
    await other.update(upload_id, sha256="ab" * 32)
    assert (await store.get_info(upload_id)).sha256 == "ab" * 32


@pytest.mark.gen_test
async def test_a_record_written_whole_again_is_seen(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    upload_id = await created(store)
    path = tmp_path / f"{upload_id}.info"
    other = FileStore(tmp_path, fsync=False)
    for size in range(5, 5 + info_file.MAX_APPENDED):
        await other.update(upload_id, size=size)
        assert (await store.get_info(upload_id)).size == size
    inode = path.stat().st_ino
    await other.update(upload_id, size=100)  # past MAX_APPENDED: a new file, one line
    assert path.stat().st_ino != inode
    assert len(path.read_bytes().split(b"\n")) == 1
    assert (await store.get_info(upload_id)).size == 100


@pytest.mark.gen_test
async def test_a_removed_record_is_no_upload(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    kept, removed = await created(store), await created(store)
    for upload_id in (kept, removed):
        await store.get_info(upload_id)
    os.unlink(tmp_path / f"{removed}.info")  # another process's forget
    with pytest.raises(UploadError) as error:
        await store.get_info(removed)
    assert error.value.kind is ErrorKind.NOT_FOUND
    await store.forget(kept)
    with pytest.raises(UploadError) as error:
        await store.get_info(kept)
    assert error.value.kind is ErrorKind.NOT_FOUND


@pytest.mark.gen_test
async def test_an_update_that_fails_changes_nothing_readers_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates change a record read afresh: had they changed the one readers share, a full
    disk would leave readers a state that was never stored."""
    store = FileStore(tmp_path, fsync=False)
    upload_id = await created(store)
    assert (await store.get_info(upload_id)).state is UploadState.UPLOADING

    def full_disk(*args: object, **kwargs: object) -> float:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(info_file, "append", full_disk)
    with pytest.raises(UploadError) as error:
        await store.update(upload_id, state=UploadState.PROCESSING)
    assert error.value.kind is ErrorKind.INSUFFICIENT_STORAGE
    with pytest.raises(UploadError):
        await store.terminate(upload_id, UploadState.TERMINATED)
    assert (await store.get_info(upload_id)).state is UploadState.UPLOADING


def test_the_cache_keeps_at_most_its_size(tmp_path: Path) -> None:
    cache = RecordCache(size=2)
    paths = []
    for number in range(3):
        path = tmp_path / f"{number}.info"
        path.write_bytes(b'{"size": %d}' % number)
        paths.append(str(path))
        assert cache.read(str(path)).record == {"size": number}
    assert len(cache) == 2
    assert cache.read(paths[0]).record == {"size": 0}  # read again: still right
    assert len(cache) == 2
