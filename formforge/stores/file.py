"""Local-disk store: `<id>.bin` holds the bytes, `<id>.info` (JSON lines, `info_file`) the rest.

The offset of an upload *is* the size of its `.bin` file: there is no second copy of it to
fall out of step after a crash. A provisional (checksummed) write first records where it
started in `<id>.pending`: until the checksum is checked, that is the offset readers see, and
`recover()` cuts any such write back, so bytes whose checksum was never verified do not
survive a crash as if they had been accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiofiles
import aiofiles.os

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import is_valid_upload_id
from formforge.core.model import NewUpload, UploadInfo, UploadState
from formforge.core.store import Store
from formforge.stores import info_file
from formforge.stores.data_file import DataFile, held_max, write_chunk
from formforge.stores.digest import sha256_of_file
from formforge.stores.record_cache import RecordCache
from formforge.stores.records import (
    Record,
    apply_changes,
    check_changes,
    info_from_record,
    new_record,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

READ_CHUNK = 1024 * 1024
# Handing work to a thread costs about 125 us here, more than stat-ing and reading a small
# info file or copying a read's worth (256 KiB, what `formforge serve` hands over at most)
# into the page cache, and each hand-back waits for the GIL: such work runs on the event
# loop. 200 uploads at once through threads queued a piece per upload for the pool (peak
# RSS 140-148 MiB, 1.48-1.51 s of CPU; inline 115-119 MiB, 1.19-1.21 s). A bigger write
# (a host's Tornado hands over 1 MiB) goes to a thread only while other uploads are
# streaming too, so the loop serves their sockets meanwhile; a lone upload has nothing to
# overlap with (1 GiB in 8 MiB PATCHes: ~950 MiB/s through threads, ~1,500 inline).
# fdatasync always goes to a thread (docs/benchmarks.md).
INLINE_WRITE_MAX = 256 * 1024
OUT_OF_FILES_RETRY_AFTER_SECONDS = 1  # descriptors come back as other requests end
LIST_YIELD_EVERY = 64  # directory entries between two turns of the event loop


class FileStore(Store):
    """Uploads as files in one directory. Every path is built from a validated id."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self._root = str(root)
        self._streaming = 0  # writes in progress in this process
        self.files_held_max = held_max()  # past it, a body's file is closed between pieces
        self.fsync = fsync
        # Read-modify-write of info records runs in worker threads: one at a time, so a
        # termination and a late update (processing) cannot interleave.
        self._records = threading.Lock()
        self._read_records = RecordCache()  # for reads only: updates read the file afresh

    # -- paths -------------------------------------------------------------------------

    def _path(self, upload_id: str, suffix: str) -> str:
        """A str, not a Path: every request builds a few, and pathlib costs more than the
        syscalls they are for."""
        if not is_valid_upload_id(upload_id):
            # The service validates ids first; this is the last line of defence.
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload")
        return f"{self._root}/{upload_id}{suffix}"

    def data_path(self, upload_id: str) -> str:
        return self._path(upload_id, ".bin")

    # -- core ----------------------------------------------------------------------------

    async def recover(self) -> None:
        await asyncio.to_thread(self._recover_sync)

    def _recover_sync(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        names = set(os.listdir(self.root))
        for entry in os.scandir(self.root):
            if entry.name.endswith(".bin") and entry.name[:-4] + ".info" not in names:
                os.unlink(entry.path)  # created or concatenated, but a crash came before its info
                continue
            if entry.name.endswith((".tmp", ".concat")):
                os.unlink(entry.path)  # an atomic write or a concatenation cut by a crash
            elif entry.name.endswith(".info") and entry.stat().st_size == 0:
                # A creation killed before its record was written: never answered.
                for suffix in (".bin", ".info"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path.removesuffix(".info") + suffix)
            elif entry.name.endswith(".pending"):
                self._cut_back(entry.path, entry.name.removesuffix(".pending"))

    def _cut_back(self, marker: str, upload_id: str) -> None:
        """A provisional write a crash interrupted: its bytes were never verified."""
        try:
            start = int(info_file.read_small(marker) or b"0")
            data = self.data_path(upload_id)
        except (ValueError, UploadError):
            # FormForge writes a marker whole, named after a valid id: not this one, so it
            # stays for an operator to look at, and every other upload is served.
            log.error("provisional-write marker not ours, left as it is path=%s", marker)
            return
        with contextlib.suppress(FileNotFoundError):
            os.truncate(data, start)
        os.unlink(marker)
        log.info("provisional write cut back upload_id=%s offset=%d", upload_id, start)

    async def create(self, new: NewUpload) -> UploadInfo:
        with disk_errors():
            return await self._on_disk(self._create_sync, new)

    def _create_sync(self, new: NewUpload) -> UploadInfo:
        # Data first, info second: the info file is what makes an upload exist, so a crash
        # in between leaves only an empty orphan for the sweeper.
        self._create_data(new.id)
        record = new_record(new)
        try:
            path = self._path(new.id, ".info")
            stored = info_file.create(path, record, durable=self.fsync)
        except OSError:  # a full disk, say: leave nothing half-created behind
            leftovers = [self.data_path(new.id), *map(str, self.root.glob(f"{new.id}.info*"))]
            for leftover in leftovers:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            raise
        self._read_records.add(path, stored)  # no one else knows the id yet: it is this
        return info_from_record(new.id, record, 0, stored.mtime)

    def _create_data(self, upload_id: str) -> None:
        path = self.data_path(upload_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # the directory was removed under a running server
            os.makedirs(self._root, exist_ok=True)
            fd = os.open(path, flags, 0o644)
        try:
            self._sync_file(fd)
        finally:
            os.close(fd)

    async def get_info(self, upload_id: str) -> UploadInfo:
        try:  # a few small syscalls (stats of the record and the data, an access): on the loop
            return self._info_sync(upload_id)
        except OSError as error:
            raise retryable(error) from None

    def _info_sync(self, upload_id: str) -> UploadInfo:
        stored = self._stored(upload_id, self._read_records.read)
        return self._info_of(upload_id, stored.record, stored.mtime)

    def _stored(
        self, upload_id: str, read: Callable[[str], info_file.Stored] = info_file.read
    ) -> info_file.Stored:
        try:
            return read(self._path(upload_id, ".info"))
        except (FileNotFoundError, ValueError):  # absent, or its creation was cut short
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload") from None

    def _info_of(self, upload_id: str, record: Record, info_mtime: float) -> UploadInfo:
        """The info of a record just read or written: the offset is measured now."""
        base = self._path(upload_id, "")
        try:
            data_stat = os.stat(f"{base}.bin")
            offset, mtime = data_stat.st_size, max(data_stat.st_mtime, info_mtime)
        except FileNotFoundError:  # a tombstone: the bytes are gone
            offset, mtime = 0, info_mtime
        return info_from_record(upload_id, record, self._accepted(base, offset), mtime)

    def _accepted(self, base: str, size: int) -> int:
        """Bytes of a provisional write are not the upload's until their checksum is checked."""
        pending = f"{base}.pending"
        if not os.access(pending, os.F_OK):  # the common case, without an exception raised
            return size
        try:
            return min(size, int(info_file.read_small(pending) or b"0"))
        except (FileNotFoundError, ValueError):
            return size

    async def write(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        keep: Callable[[], bool] | None = None,
    ) -> int:
        with disk_errors():
            return await self._write(upload_id, offset, chunks, keep)

    async def _write(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        keep: Callable[[], bool] | None,
    ) -> int:
        # Only a provisional write records where it started (and most PATCHes are not one).
        pending = self._path(upload_id, ".pending") if keep is not None else None
        if pending is not None:
            await self._on_disk(self._write_atomic, pending, str(offset).encode())
        data = DataFile.open_at_end(self.data_path(upload_id), offset)
        end = offset
        self._streaming += 1
        try:
            async for chunk in chunks:
                fd = data.descriptor()
                if len(chunk) <= INLINE_WRITE_MAX or self._streaming == 1:
                    write_chunk(fd, chunk, end, self.fsync)
                else:
                    await _in_thread(write_chunk, fd, chunk, end, self.fsync)
                end += len(chunk)
                # A slow body's next piece is a second away: its last one is not kept meanwhile,
                # nor, with many such bodies, its file (`data_file.py`).
                del chunk
                if self._streaming > self.files_held_max:
                    data.close()
        finally:
            self._streaming -= 1
            # Runs on a cut body, a cancelled task and an error alike: what arrived stays.
            try:
                if keep is not None and not keep():
                    os.ftruncate(data.descriptor(), offset)
                    end = offset
                if self.fsync:
                    await _in_thread(os.fdatasync, data.descriptor())
            finally:
                data.close()
            if pending is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pending)
        return end

    async def update(self, upload_id: str, **changes: object) -> UploadInfo:
        check_changes(changes)
        with disk_errors():
            return await self._on_disk(self._update_sync, upload_id, changes)

    def _update_sync(self, upload_id: str, changes: dict[str, object]) -> UploadInfo:
        path = self._path(upload_id, ".info")
        with self._records:
            stored = self._stored(upload_id)
            apply_changes(stored.record, changes)
            mtime = self._append(path, stored, changes)
        return self._info_of(upload_id, stored.record, mtime)

    def _append(self, path: str, stored: info_file.Stored, changes: dict[str, object]) -> float:
        try:
            return info_file.append(path, stored, changes, durable=self.fsync)
        except FileNotFoundError:  # forgotten since it was read
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload") from None

    async def list_ids(self) -> AsyncIterator[str]:
        names = await asyncio.to_thread(os.listdir, self.root)
        for count, name in enumerate(names, 1):
            if name.endswith(".info"):
                yield name.removesuffix(".info")
            if count % LIST_YIELD_EVERY == 0:
                # Consumers (the sweeper) read each upload's info inline: over many
                # uploads that would hold the event loop for seconds without this.
                await asyncio.sleep(0)

    # -- capabilities --------------------------------------------------------------------

    async def terminate(self, upload_id: str, state: UploadState) -> None:
        with disk_errors():
            await self._on_disk(self._terminate_sync, upload_id, state)

    def _terminate_sync(self, upload_id: str, state: UploadState) -> None:
        with self._records:
            self._tombstone_sync(upload_id, state)
        self._read_records.forget(self._path(upload_id, ".info"))  # rarely read again

    def _tombstone_sync(self, upload_id: str, state: UploadState) -> None:
        stored = self._stored(upload_id)
        changes: dict[str, object] = {"state": state}
        stored.record["state"] = str(state)
        # Free the space before writing the tombstone: on a full disk, removing uploads is
        # the way out, so it must not need room itself.
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.data_path(upload_id), 0)
        self._append(self._path(upload_id, ".info"), stored, changes)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.data_path(upload_id))

    async def forget(self, upload_id: str) -> None:
        self._read_records.forget(self._path(upload_id, ".info"))
        for suffix in (".info", ".bin", ".pending"):
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(self._path(upload_id, suffix))

    async def concatenate(self, new: NewUpload, parts: Sequence[UploadInfo]) -> UploadInfo:
        with disk_errors():
            return await asyncio.to_thread(self._concatenate_sync, new, parts)

    def _concatenate_sync(self, new: NewUpload, parts: Sequence[UploadInfo]) -> UploadInfo:
        scratch = self._path(new.id, ".concat")
        with open(scratch, "xb") as out:
            for part in parts:
                with open(self.data_path(part.id), "rb") as source:
                    _copy_range(source.fileno(), out.fileno(), part.offset)
            self._sync_file(out.fileno())
        os.replace(scratch, self.data_path(new.id))
        info_file.create(self._path(new.id, ".info"), new_record(new), durable=self.fsync)
        return self._info_sync(new.id)

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        async with aiofiles.open(self.data_path(upload_id), "rb", buffering=0) as data:
            await data.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = await data.read(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    async def sha256(
        self, upload_id: str, size: int, progress: Callable[[int], None] | None = None
    ) -> str:
        return await sha256_of_file(self.data_path(upload_id), size, progress)

    # -- helpers -------------------------------------------------------------------------

    def _write_atomic(self, path: str, payload: bytes) -> None:
        info_file.replace(path, payload, durable=self.fsync)

    def _sync_file(self, fd: int) -> None:
        if self.fsync:
            os.fdatasync(fd)

    async def _on_disk(self, work: Callable[..., _T], *args: Any) -> _T:
        """Small file work: on the loop, unless it waits for the device to sync."""
        return await asyncio.to_thread(work, *args) if self.fsync else work(*args)


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """A full disk is the client's 507 and too many open files its 503 (retry later both),
    not a 500; stored bytes stay as they are."""
    try:
        yield
    except OSError as error:
        raise retryable(error) from None


def retryable(error: OSError) -> Exception:
    """What the client is told about a resource the server ran out of; else the error."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadError(ErrorKind.INSUFFICIENT_STORAGE, "the server's disk is full")
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return UploadError(
            ErrorKind.SERVER_BUSY,
            "the server has too many files open; try again shortly",
            retry_after=OUT_OF_FILES_RETRY_AFTER_SECONDS,
        )
    return error


async def _in_thread(work: Callable[..., _T], *args: Any) -> _T:
    """Like `asyncio.to_thread`, but a cancelled caller still waits for the work to end: the
    caller closes the descriptor next, and a descriptor number reused meanwhile must not get
    the thread's write or sync."""
    future = asyncio.get_running_loop().run_in_executor(None, work, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


def _copy_range(source: int, target: int, count: int) -> None:
    """Copy `count` bytes in the kernel where it can (copy_file_range), else through memory."""
    while count > 0:
        try:
            copied = os.copy_file_range(source, target, min(count, 1 << 30))
        except OSError:
            copied = os.write(target, os.read(source, min(count, READ_CHUNK)))
        if copied == 0:
            raise UploadError(ErrorKind.INTERNAL, "a partial upload is shorter than recorded")
        count -= copied
