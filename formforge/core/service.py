"""UploadService: the protocol-neutral core both fronts call.

It validates, takes the upload's lock, streams a body into the store, finishes uploads and
publishes events. It imports neither tornado nor socketio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from formforge.core.bandwidth import Bandwidth
from formforge.core.body import BodyEnd, BodyStream
from formforge.core.checksum import Checksum
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import (
    BytesWritten,
    EventBus,
    ProgressThrottle,
    UploadCreated,
    UploadFailed,
    UploadProgress,
    UploadTerminated,
)
from formforge.core.hooks import (
    POST_TERMINATE,
    PRE_CREATE,
    HookFailed,
    Hooks,
    NoHooks,
    RequestInfo,
)
from formforge.core.ids import is_valid_upload_id, new_upload_id
from formforge.core.limits import Limits
from formforge.core.locker import BRIEF, Lock, Locker
from formforge.core.model import ConcatRole, NewUpload, UploadInfo, UploadState
from formforge.core.processing import Processor
from formforge.core.store import Concatenator, Reader, Store, Terminator
from formforge.core.sweeper import Sweeper
from formforge.core.write_request import (
    WriteRequest,
    inconsistent_length,
    valid_intended_length,
    valid_length,
)

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
RETRY_AFTER_SECONDS = 2  # what a client beyond max_concurrent_uploads is told to wait


class UploadService:
    def __init__(
        self,
        store: Store,
        locker: Locker,
        bus: EventBus,
        limits: Limits,
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        # Capabilities detected once: an isinstance on a runtime protocol costs ~10 us here.
        self._terminator = store if isinstance(store, Terminator) else None
        self._concatenator = store if isinstance(store, Concatenator) else None
        self._reader = store if isinstance(store, Reader) else None
        self.locker = locker
        self.bus = bus
        self.limits = limits
        self.hooks: Hooks = hooks or NoHooks()
        self.processor = Processor(store, bus, self.hooks, locker, limits.progress_interval_seconds)
        self.bandwidth = Bandwidth(limits.bandwidth_per_upload, limits.bandwidth_total)
        self._writes: set[asyncio.Task[UploadInfo]] = set()
        self.writes_started = 0  # ever, in this process: whether anything happened lately
        self._bodies: set[BodyStream] = set()
        self.accepting = True

    # -- what this store can do ----------------------------------------------------------

    @property
    def writing(self) -> bool:
        """Whether a body is being received and stored right now."""
        return bool(self._writes)

    @property
    def can_terminate(self) -> bool:
        return self._terminator is not None

    @property
    def can_concatenate(self) -> bool:
        return self._concatenator is not None

    # -- reading ---------------------------------------------------------------------------

    async def get(self, upload_id: str) -> UploadInfo:
        """The upload as stored now, without waiting for its lock; gone ones raise 410."""
        if not is_valid_upload_id(upload_id):
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload")
        info = await self.store.get_info(upload_id)
        if info.state is UploadState.TERMINATED:
            raise UploadError(ErrorKind.TERMINATED, "the upload was terminated")
        if info.state is UploadState.EXPIRED or self.is_expired(info):
            raise UploadError(ErrorKind.EXPIRED, "the upload expired")
        return info

    def expires_at(self, info: UploadInfo) -> datetime | None:
        if info.is_complete or info.is_gone:
            return None
        return info.updated_at + timedelta(seconds=self.limits.unfinished_ttl_seconds)

    def is_expired(self, info: UploadInfo) -> bool:
        expires = self.expires_at(info)
        return expires is not None and expires <= datetime.now(UTC)

    async def status(self, upload_id: str) -> UploadInfo:
        """Like `get`, but an expired upload is a state to report, not an error."""
        try:
            return await self.get(upload_id)
        except UploadError as error:
            if error.kind is not ErrorKind.EXPIRED:
                raise
        info = await self.store.get_info(upload_id)
        return replace(info, state=UploadState.EXPIRED)

    async def stop_writing(self, upload_id: str) -> UploadInfo:
        """The upload once no request writes to it: one still writing is stopped, even while
        it receives bytes, and what it received is stored before this returns. Raises
        `UploadError(UPLOAD_LOCKED)` if it does not let go within the locker's wait."""
        await self.get(upload_id)  # an upload that exists and is not gone: only then lock it
        lock = await self.locker.acquire(upload_id, BRIEF, force=True)
        await lock.release()
        return await self.get(upload_id)

    async def open_download(self, upload_id: str) -> tuple[UploadInfo, Reader]:
        info = await self.get(upload_id)
        if not info.is_complete:
            raise UploadError(
                ErrorKind.INCOMPLETE, "the upload is not complete yet", offset=info.offset
            )
        if self._reader is None:
            raise UploadError(ErrorKind.NOT_FOUND, "this store cannot serve downloads")
        return info, self._reader

    # -- creating --------------------------------------------------------------------------

    async def create(
        self,
        size: int | None,
        metadata: dict[str, str],
        concat: ConcatRole | None = None,
        request: RequestInfo | None = None,
        *,
        intended_length: int | None = None,
    ) -> UploadInfo:
        self._check_accepting()
        self.limits.check_size(size)
        self.limits.check_size(intended_length)
        metadata = await self._checked_metadata(size, metadata, request)
        new = NewUpload(new_upload_id(), size, metadata, concat, intended_length=intended_length)
        info = await self.store.create(new)
        self.bus.publish(UploadCreated(info))
        log.info("created upload_id=%s size=%s", info.id, size)
        return await self.processor.finish(info) if info.is_complete else info

    async def create_final(
        self, part_ids: Sequence[str], metadata: dict[str, str], request: RequestInfo | None = None
    ) -> UploadInfo:
        """Concatenation: a final upload made of complete partial uploads, in order."""
        self._check_accepting()
        concatenator = self._concatenator
        if concatenator is None or not part_ids:
            raise UploadError(ErrorKind.BAD_REQUEST, "a final upload needs partial uploads")
        parts = [await self._complete_partial(part_id) for part_id in part_ids]
        size = sum(part.offset for part in parts)
        self.limits.check_size(size)
        metadata = await self._checked_metadata(size, metadata, request)
        new = NewUpload(new_upload_id(), size, metadata, ConcatRole.FINAL, tuple(part_ids))
        info = await concatenator.concatenate(new, parts)
        self.bus.publish(UploadCreated(info))
        return await self.processor.finish(info)

    async def _checked_metadata(
        self, size: int | None, metadata: dict[str, str], request: RequestInfo | None
    ) -> dict[str, str]:
        """Valid metadata, as the pre-create hooks (which may reject) leave it."""
        self.limits.check_metadata(metadata)
        if not self.hooks.has(PRE_CREATE):
            return metadata
        metadata = await self.hooks.pre_create(size, metadata, request)
        self.limits.check_metadata(metadata)
        return metadata

    async def _complete_partial(self, part_id: str) -> UploadInfo:
        try:
            part = await self.get(part_id)
        except UploadError as error:
            raise UploadError(
                ErrorKind.BAD_REQUEST, f"partial upload {part_id[:64]!r}: {error.message}"
            ) from None
        if part.concat is not ConcatRole.PARTIAL or not part.is_complete:
            raise UploadError(
                ErrorKind.BAD_REQUEST, f"{part_id!r} is not a complete partial upload"
            )
        return part

    # -- writing ---------------------------------------------------------------------------

    async def start_write(
        self, request: WriteRequest, body: BodyStream
    ) -> asyncio.Task[UploadInfo]:
        """Lock and validate, then stream `body` into the store in a task of its own.

        Errors found before any byte is read (404, 409, 423, 403, 413...) raise here; the
        task's result is the upload after the body ended, and it always releases the lock.
        """
        self._check_accepting()
        if not is_valid_upload_id(request.upload_id):
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload")
        # A write of no bytes (one that completes the upload) stores nothing and is over at
        # once: it takes no slot of max_concurrent_uploads.
        if request.content_length != 0:
            self._check_capacity()
        lock = await self.locker.acquire(request.upload_id, body, force=request.take_over)
        try:
            info = await self._writable(request)
        except UploadError as error:
            await lock.release()
            self._publish_refusal(request, error)
            raise
        except BaseException:
            await lock.release()
            raise
        body.pace = self.bandwidth.pace_for_upload()
        task = asyncio.create_task(self._write(info, request, body, lock))
        self._writes.add(task)
        self.writes_started += 1
        self._bodies.add(body)
        task.add_done_callback(self._writes.discard)
        task.add_done_callback(lambda _: self._bodies.discard(body))
        # A cut request has no one left to await its task; its failure is already an event.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def _writable(self, request: WriteRequest) -> UploadInfo:
        info = await self.get(request.upload_id)
        if info.concat is ConcatRole.FINAL:
            raise UploadError(ErrorKind.FINAL_UPLOAD, "a final upload cannot be patched")
        if request.offset != info.offset:
            raise UploadError(
                ErrorKind.OFFSET_MISMATCH,
                f"offset {request.offset} is not the upload's offset {info.offset}",
                offset=info.offset,
            )
        size = (
            info.size if request.length is None else valid_length(info, request.length, self.limits)
        )
        intended = valid_intended_length(info, request.intended_length, self.limits)
        end = info.offset + (request.content_length or 0)
        if size is not None and end > size:
            raise UploadError(ErrorKind.SIZE_EXCEEDED, "the body goes past the upload's length")
        if intended is not None and end > intended:
            raise inconsistent_length(f"the request goes past the length {intended}", intended)
        # Declared only once the request is known to be acceptable.
        if size != info.size or intended != info.intended_length:
            info = await self.store.update(info.id, size=size, intended_length=intended)
        return info

    async def _write(
        self, info: UploadInfo, request: WriteRequest, body: BodyStream, lock: Lock
    ) -> UploadInfo:
        try:
            return await self._write_locked(info, request.checksum, body)
        except UploadError as error:
            self.publish_failure(
                info.id, error.kind, error.message, error.details.get("offset", info.offset)
            )
            raise
        finally:
            body.discard()  # a write that ended early (413...) reads no more of the body
            await lock.release()

    async def _write_locked(
        self, info: UploadInfo, checksum: Checksum | None, body: BodyStream
    ) -> UploadInfo:
        start = time.monotonic()
        keep = None
        if checksum is not None:
            # Bytes that cannot be verified (a mismatch, or a cut body) are dropped.
            keep = lambda: body.end is BodyEnd.COMPLETE and checksum.matches()  # noqa: E731
        chunks = self._chunks(info, body, checksum, start)
        end = await self.store.write(info.id, info.offset, chunks, keep=keep)
        self.bus.publish(BytesWritten(info.id, end - info.offset))
        self._publish_progress(info.id, end, info.size, end - info.offset, start)
        ended = body.end.value if body.end else "error"
        # Debug only: a line per chunk request floods the log when clients send small PATCHes.
        log.debug("wrote upload_id=%s from=%d to=%d body=%s", info.id, info.offset, end, ended)
        if body.end is not BodyEnd.COMPLETE:
            raise UploadError(
                ErrorKind.CONNECTION_LOST, f"the request body was {ended}", offset=end
            )
        if checksum is not None and not checksum.matches():
            raise UploadError(
                ErrorKind.CHECKSUM_MISMATCH,
                f"the body does not match its {checksum.algorithm} checksum",
                offset=end,
            )
        # Under the lock nothing else changed the upload: its offset is where the write ended.
        latest = replace(info, offset=end, updated_at=datetime.now(UTC))
        return await self.processor.finish(latest) if latest.is_complete else latest

    async def _chunks(
        self, info: UploadInfo, body: BodyStream, checksum: Checksum | None, start: float
    ) -> AsyncIterator[bytes]:
        """The body as the store pulls it: checked against the size, hashed, reported."""
        offset, limit = info.offset, info.size
        if limit is None:
            limit = info.intended_length  # a front should have capped the body there already
        throttle = ProgressThrottle(self.limits.progress_interval_seconds, start)
        async for chunk in body:
            if limit is not None and offset + len(chunk) > limit:
                raise UploadError(ErrorKind.SIZE_EXCEEDED, "the body goes past the upload's length")
            if checksum is not None:
                checksum.update(chunk)
            yield chunk
            offset += len(chunk)  # the store has written the chunk once it asks for more
            del chunk  # not kept while the next one is awaited (a second, for a slow body)
            # Checksummed bytes are provisional: only the end of the request reports them.
            if checksum is None and throttle.due(time.monotonic()):
                self._publish_progress(info.id, offset, limit, offset - info.offset, start)

    # -- terminating and expiring ----------------------------------------------------------

    async def terminate(self, upload_id: str, request: RequestInfo | None = None) -> None:
        if (terminator := self._terminator) is None:
            raise UploadError(ErrorKind.BAD_REQUEST, "this store cannot terminate uploads")
        await self.get(upload_id)  # unknown or gone: 404 or 410 without taking the lock
        lock = await self.locker.acquire(upload_id, BRIEF, force=True)
        try:
            info = await self.get(upload_id)  # a DELETE that waited for another: 410
            await terminator.terminate(upload_id, UploadState.TERMINATED)
        finally:
            await lock.release()
        self.bus.publish(UploadTerminated(upload_id))
        self.publish_failure(upload_id, ErrorKind.TERMINATED, "the upload was terminated", 0)
        log.info("terminated upload_id=%s", upload_id)
        if self.hooks.has(POST_TERMINATE):
            self.processor.spawn(self._after_termination(info, request))

    async def _after_termination(self, info: UploadInfo, request: RequestInfo | None) -> None:
        # A failure is logged by the runner; the upload is gone whatever the hook says.
        with contextlib.suppress(HookFailed):
            await self.hooks.run_all(POST_TERMINATE, info, request)

    async def sweep(self) -> int:
        """Expire idle unfinished uploads and forget old tombstones; returns how many."""
        return await Sweeper(self).sweep()

    # -- shutting down ---------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every body in flight; each write persists what it got and releases its lock."""
        self.accepting = False
        for body in list(self._bodies):
            body.stop()
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=SHUTDOWN_GRACE_SECONDS)
        await self.processor.stop()

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise UploadError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")

    def _check_capacity(self) -> None:
        limit = self.limits.max_concurrent_uploads
        if limit is not None and len(self._writes) >= limit:
            raise UploadError(
                ErrorKind.SERVER_BUSY,
                f"{limit} uploads are receiving already; try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            )

    def _publish_progress(
        self, upload_id: str, offset: int, size: int | None, count: int, start: float
    ) -> None:
        elapsed = max(time.monotonic() - start, 1e-6)
        self.bus.publish(UploadProgress(upload_id, offset, size, count / elapsed))

    def _publish_refusal(self, request: WriteRequest, error: UploadError) -> None:
        """A length that shows, before any byte, the body would pass the upload's: uploadError
        too, as when a body runs past it (the only such refusal `uploadError` lists)."""
        if error.kind is ErrorKind.SIZE_EXCEEDED:
            self.publish_failure(request.upload_id, error.kind, error.message, request.offset)

    def publish_failure(self, upload_id: str, kind: ErrorKind, message: str, offset: int) -> None:
        self.bus.publish(UploadFailed(upload_id, kind, message, offset))
