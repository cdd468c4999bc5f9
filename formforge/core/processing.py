"""Processing: what happens once an upload has all its bytes, before it is `complete`.

The whole-file sha256, then the post-finish hooks, in the background. Meanwhile the state
is `processing`; success publishes `UploadFinished`, failure marks the upload `error` and
publishes `processing-failed`. A crash mid-way leaves `processing` behind, and `resume` (at
start-up, and then from the sweeper) processes such uploads again.

Processing holds a claim on the upload (a lock of the locker under a name no upload has,
so requests never wait for it), so that of several processes or nodes resuming at once,
exactly one processes each upload: the others find it claimed and leave it. A node that
dies while processing loses its claim with its locks, and the next `resume` anywhere picks
the upload up.

A DELETE meanwhile ends the processing (gone is final). Processing changes the upload's
record only under the upload's own lock, the one termination and expiry take (`_update`),
so no DELETE on any process or node can land between its "is it gone?" and its write.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import EventBus, UploadFailed, UploadFinished
from formforge.core.hooks import POST_FINISH, HookFailed, Hooks, ProgressOpener
from formforge.core.locker import BRIEF, KEEPING, Lock, Locker
from formforge.core.model import ConcatRole, UploadInfo, UploadState
from formforge.core.processing_progress import HASHING, ProcessingBoard
from formforge.core.store import Digester, Reader, Store

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0
# Hashing is bound by CPU and disk: more at once than there are cores only holds more
# buffers (200 uploads finishing together held 1 MiB each).
HASHING_AT_ONCE = 2
# Tries at the upload's lock before a record update gives up: a holder may outlast the
# locker's wait (a termination removing many objects from S3), never this many times.
LOCK_ATTEMPTS = 3


class Processor:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        hooks: Hooks,
        locker: Locker,
        progress_interval_seconds: float = 0.25,
    ) -> None:
        self.store = store
        self.bus = bus
        self.hooks = hooks
        self.locker = locker
        self._tasks: set[asyncio.Task[object]] = set()
        self._claims: set[Lock] = set()  # held while processing; let go of at `stop` too
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self.progress = ProcessingBoard(bus, progress_interval_seconds)

    async def finish(self, info: UploadInfo) -> UploadInfo:
        """Mark a full upload `processing` and process it in the background.

        Partial uploads are only parts of a final one: complete at once, no event of their own.
        """
        if info.state is not UploadState.UPLOADING:
            return info
        if info.concat is ConcatRole.PARTIAL:
            return await self.store.update(info.id, state=UploadState.COMPLETE)
        info = await self.store.update(info.id, state=UploadState.PROCESSING)
        self.spawn(self._claim_and_process(info.id))
        return info

    async def resume(self) -> int:
        """Process what a crash, a stop or a dead node left unprocessed; returns how many
        uploads this process took on. Uploads another process is on are left to it."""
        resumed = 0
        async for upload_id in self.store.list_ids():
            info = await self.store.get_info(upload_id)
            if info.concat is ConcatRole.PARTIAL and _unprocessed(info, partial=True):
                await self._complete_part(upload_id)
            elif _unprocessed(info):
                resumed += await self._claim_and_process(upload_id)
        return resumed

    @property
    def busy(self) -> bool:
        """Whether anything runs in the background now (processing, post-terminate hooks)."""
        return bool(self._tasks)

    def spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel what runs; those uploads stay `processing`, their claims are let go of,
        and the next `resume` (here after a restart, or on another node) takes them on."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_SECONDS)
        for claim in list(self._claims):  # a task cancelled before it ran kept its claim
            await claim.release()
        self._claims.clear()

    async def _claim_and_process(self, upload_id: str) -> bool:
        """Claim the upload; if it still needs processing then, process it in the
        background (holding the claim) and return True."""
        lock = await self._claim(upload_id)
        if lock is None:
            return False
        try:
            info = await self.store.get_info(upload_id)  # as it is now that it is ours
            if _unprocessed(info) and info.state is UploadState.UPLOADING:
                info = await self._update(upload_id, state=UploadState.PROCESSING)
        except BaseException as error:
            await lock.release()
            if _gone(error):
                return False
            raise
        if not _unprocessed(info):
            await lock.release()
            return False
        self._claims.add(lock)
        self.spawn(self._process(info, lock))
        return True

    async def _claim(self, upload_id: str) -> Lock | None:
        """The upload's processing claim, or None while someone else holds it."""
        try:
            return await self.locker.acquire(claim_name(upload_id), KEEPING)
        except UploadError as error:
            if error.kind is ErrorKind.UPLOAD_LOCKED:
                return None
            raise

    async def _complete_part(self, upload_id: str) -> None:
        """A part of a concatenation needs no processing: complete at once, unless gone."""
        try:
            await self._update(upload_id, state=UploadState.COMPLETE)
        except UploadError as error:
            if not _gone(error):
                raise

    async def _update(self, upload_id: str, **changes: object) -> UploadInfo:
        """Change the upload's record under its own lock, the lock DELETE and expiry take.

        So "is it gone?" (`Store.update` raises TERMINATED for a gone upload) and the write
        are one step against a termination anywhere: a store's own record lock covers one
        process and S3's read-then-write covers nothing, but the locker reaches every
        process (file) and node (Redis), for every store alike.
        """
        lock = await self._upload_lock(upload_id)
        try:
            return await self.store.update(upload_id, **changes)
        finally:
            await lock.release()

    async def _upload_lock(self, upload_id: str) -> Lock:
        """Forced: processing must record its outcome, and whoever holds the lock of an
        upload with all its bytes is brief (a DELETE, a HEAD of the draft) or has nothing
        left to write (a request stopped at no loss)."""
        for _ in range(LOCK_ATTEMPTS - 1):
            try:
                return await self.locker.acquire(upload_id, BRIEF, force=True)
            except UploadError as error:
                if error.kind is not ErrorKind.UPLOAD_LOCKED:
                    raise
        return await self.locker.acquire(upload_id, BRIEF, force=True)

    async def _process(self, info: UploadInfo, claim: Lock) -> None:
        self.progress.start(info.id, info.offset)  # every room hears `processing` first
        try:
            await self._process_claimed(info)
        finally:
            self.progress.end(info.id)  # nothing of processing after its outcome's event
            self._claims.discard(claim)
            await claim.release()

    async def _process_claimed(self, info: UploadInfo) -> None:
        try:
            sha256 = await self._sha256(info)
            info = await self._update(info.id, sha256=sha256)
            await self.hooks.run_all(POST_FINISH, info, progress=self._hook_progress(info))
            done = await self._update(info.id, state=UploadState.COMPLETE)
        except (HookFailed, UploadError, OSError) as error:
            await self._fail(info, error)
            return
        self.bus.publish(UploadFinished(done))
        log.info("finished upload_id=%s size=%s sha256=%s", info.id, info.size, sha256)

    async def _fail(self, info: UploadInfo, error: Exception) -> None:
        if _gone(error):
            return  # deleted or expired meanwhile: nothing left to mark or to report
        log.warning("processing failed upload_id=%s error=%s", info.id, error)
        try:
            await self._update(info.id, state=UploadState.ERROR, error=str(error))
        except (UploadError, OSError) as unrecorded:
            if _gone(unrecorded):
                return
            # A full disk, say: the upload stays `processing` and is processed again at
            # the next start; clients still hear of the failure now.
            log.warning(
                "processing failure not recorded upload_id=%s error=%s", info.id, unrecorded
            )
        self.bus.publish(
            UploadFailed(
                info.id, ErrorKind.PROCESSING_FAILED, "processing the upload failed", info.offset
            )
        )

    async def _sha256(self, info: UploadInfo) -> str:
        async with self._hashing:
            if isinstance(self.store, Digester):
                return await self.store.sha256(info.id, info.offset, self._hash_progress(info))
            return await self._sha256_streamed(info)

    async def _sha256_streamed(self, info: UploadInfo) -> str:
        if not isinstance(self.store, Reader):
            raise UploadError(ErrorKind.INTERNAL, "this store cannot read uploads back")
        hasher, hashed, progress = hashlib.sha256(), 0, self._hash_progress(info)
        async for chunk in self.store.read(info.id, 0, info.offset):
            await asyncio.to_thread(hasher.update, chunk)  # hashlib lets go of the GIL
            hashed += len(chunk)
            progress(hashed)
        return hasher.hexdigest()

    def _hash_progress(self, info: UploadInfo) -> Callable[[int], None]:
        """How far the whole-file hash got, as the processing step's percent."""
        size = info.offset

        def report(hashed: int) -> None:
            done = 100.0 if size == 0 else round(min(hashed, size) * 100 / size, 2)
            self.progress.set(info.id, done, HASHING)

        return report

    def _hook_progress(self, info: UploadInfo) -> ProgressOpener:
        """Each post-finish hook call's own report: its percent and message."""
        return lambda: self.progress.hook_report(info.id)


def _unprocessed(info: UploadInfo, partial: bool = False) -> bool:
    """Processing was cut short, or never started although every byte is there (parts of
    a concatenation only with `partial`: they are never processed, only completed)."""
    if (info.concat is ConcatRole.PARTIAL) is not partial:
        return False
    return info.state is UploadState.PROCESSING or (
        info.state is UploadState.UPLOADING and info.is_complete
    )


def _gone(error: BaseException) -> bool:
    """Whether `error` says the upload was deleted or expired (`Store.update`)."""
    return isinstance(error, UploadError) and error.kind is ErrorKind.TERMINATED


def claim_name(upload_id: str) -> str:
    """The lock name of an upload's processing claim: a valid id (the lockers take only
    those) that no upload has, as upload ids are 22 characters long."""
    return f"{upload_id}-processing"
