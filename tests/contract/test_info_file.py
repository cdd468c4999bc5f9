"""The disk store's record files: written once, each change appended as a line.

What a crash can leave behind is written by hand here (an empty record, a torn append, a
late writer's line after a tombstone), then read through a fresh store as a restart would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import new_upload_id
from formforge.core.model import NewUpload, UploadState
from formforge.stores import info_file
from formforge.stores.file import FileStore


async def created(store: FileStore, size: int = 4) -> str:
    upload = NewUpload(new_upload_id(), size, {"filename": "a.txt"})
    await store.create(upload)
    return upload.id


def info_path(store: FileStore, upload_id: str) -> Path:
    return store.root / f"{upload_id}.info"


@pytest.mark.parametrize("fsync", [True, False])
@pytest.mark.gen_test
async def test_updates_are_appended_and_read_back_after_a_restart(
    tmp_path: Path, fsync: bool
) -> None:
    store = FileStore(tmp_path, fsync=fsync)
    upload_id = await created(store)
    await store.update(upload_id, state=UploadState.PROCESSING)
    await store.update(upload_id, sha256="ab" * 32)
    lines = info_path(store, upload_id).read_bytes().split(b"\n")
    assert [json.loads(line) for line in lines[1:]] == [
        {"state": "processing"},
        {"sha256": "ab" * 32},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{upload_id}.bin", f"{upload_id}.info"]
    info = await FileStore(tmp_path).get_info(upload_id)
    assert (info.state, info.sha256, info.metadata) == (
        UploadState.PROCESSING,
        "ab" * 32,
        {"filename": "a.txt"},
    )


@pytest.mark.gen_test
async def test_an_append_torn_by_a_power_cut_is_skipped(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload_id = await created(store)
    with open(info_path(store, upload_id), "ab") as record:
        record.write(b'\n{"state": "compl')  # never acknowledged
    await store.update(upload_id, size=8)
    info = await FileStore(tmp_path).get_info(upload_id)
    assert (info.state, info.size) == (UploadState.UPLOADING, 8)


@pytest.mark.gen_test
async def test_a_creation_killed_before_its_record_is_no_upload(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    kept = await created(store)
    cut = new_upload_id()
    (tmp_path / f"{cut}.bin").write_bytes(b"")
    (tmp_path / f"{cut}.info").write_bytes(b"")  # created, killed before the write
    with pytest.raises(UploadError) as error:
        await store.get_info(cut)
    assert error.value.kind is ErrorKind.NOT_FOUND
    await FileStore(tmp_path).recover()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kept}.bin", f"{kept}.info"]


@pytest.mark.gen_test
async def test_gone_is_final_against_a_late_writer_of_another_process(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload_id = await created(store)
    await store.terminate(upload_id, UploadState.TERMINATED)
    with open(info_path(store, upload_id), "ab") as record:  # read before the tombstone
        record.write(b'\n{"state": "complete"}')
    assert (await store.get_info(upload_id)).state is UploadState.TERMINATED
    with pytest.raises(UploadError) as error:
        await store.update(upload_id, state=UploadState.COMPLETE)
    assert error.value.kind is ErrorKind.TERMINATED


@pytest.mark.gen_test
async def test_a_record_changed_often_is_written_whole_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    upload_id = await created(store, size=None)  # type: ignore[arg-type]
    for size in range(1, info_file.MAX_APPENDED + 3):
        await store.update(upload_id, size=size)
    assert info_path(store, upload_id).read_bytes().count(b"\n") < info_file.MAX_APPENDED
    assert (await FileStore(tmp_path).get_info(upload_id)).size == info_file.MAX_APPENDED + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{upload_id}.bin", f"{upload_id}.info"]


@pytest.mark.gen_test
async def test_a_record_written_whole_by_an_earlier_version_still_reads(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload_id = await created(store)
    record = info_file.read(str(info_path(store, upload_id))).record
    info_path(store, upload_id).write_text(json.dumps(dict(record, state="processing")))
    await store.update(upload_id, sha256="cd" * 32)
    info = await FileStore(tmp_path).get_info(upload_id)
    assert (info.state, info.sha256) == (UploadState.PROCESSING, "cd" * 32)


@pytest.mark.parametrize("size", [0, 10, 4095, 4096, 4097, 10_000, 70_000])
def test_read_all_reads_the_whole_file_whatever_the_size_hint_said(
    tmp_path: Path, size: int
) -> None:
    # A record grows by appended lines between a reader's fstat and its read.
    path = tmp_path / "record"
    content = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path.write_bytes(content)
    for hint in (0, 10, size):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert info_file.read_all(fd, hint) == content
        finally:
            os.close(fd)
