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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from formforge.bandwidth import Bandwidth
from formforge.body import BodyEnd, BodyStream
from formforge.checksum import Checksum
from formforge.errors import ErrorKind, UploadError
from formforge.events import (
    BytesWritten,
    EventBus,
    ProgressThrottle,
    UploadCreated,
    UploadExpired,
    UploadFailed,
    UploadProgress,
    UploadTerminated,
)
from formforge.hooks import (
    POST_TERMINATE,
    PRE_CREATE,
    HookFailed,
    HookRunner,
    RequestInfo,
)
from formforge.ids import is_valid_upload_id, new_upload_id
from formforge.locks import Lock, Locker
from formforge.metadata import check_key, encode_metadata
from formforge.processing import Processor
from formforge.stores.base import (
    Concatenator,
    ConcatRole,
    NewUpload,
    Reader,
    Store,
    Terminator,
    UploadInfo,
    UploadState,
)
from formforge.wire import hook_new_upload, hook_upload

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
RETRY_AFTER_SECONDS = 2  # what a client beyond max_concurrent_uploads is told to wait


@dataclass(frozen=True)
class Limits:
    max_size: int
    max_metadata_bytes: int
    unfinished_ttl_seconds: float
    checksum_algorithms: tuple[str, ...]
    progress_interval_seconds: float
    bandwidth_per_upload: int | None = None
    bandwidth_total: int | None = None
    max_concurrent_uploads: int | None = None


@dataclass(frozen=True)
class WriteRequest:
    """One chunk request, parsed and validated for form by a front."""

    upload_id: str
    offset: int
    length: int | None = None  # declares a deferred length
    content_length: int | None = None  # None: not known in advance (chunked)
    checksum: Checksum | None = None
    intended_length: int | None = None  # declares `UploadInfo.intended_length`
    # Stop a request still writing to the upload even while it receives bytes (a protocol
    # whose clients send anew only after giving up on the earlier request); without it, only
    # a stalled one is stopped and an active one means 423.
    take_over: bool = False


class UploadService:
    def __init__(
        self,
        store: Store,
        locker: Locker,
        bus: EventBus,
        limits: Limits,
        hooks: HookRunner | None = None,
    ) -> None:
        self.store = store
        self.locker = locker
        self.bus = bus
        self.limits = limits
        self.hooks = hooks or HookRunner({}, 1.0)
        self.processor = Processor(store, bus, self.hooks, locker)
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
        return isinstance(self.store, Terminator)

    @property
    def can_concatenate(self) -> bool:
        return isinstance(self.store, Concatenator)

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
        lock = await self.locker.acquire(upload_id, _refuse, force=True)
        await lock.release()
        return await self.get(upload_id)

    async def open_download(self, upload_id: str) -> tuple[UploadInfo, Reader]:
        info = await self.get(upload_id)
        if not info.is_complete:
            raise UploadError(
                ErrorKind.INCOMPLETE, "the upload is not complete yet", offset=info.offset
            )
        if not isinstance(self.store, Reader):
            raise UploadError(ErrorKind.NOT_FOUND, "this store cannot serve downloads")
        return info, self.store

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
        self._check_size(size)
        self._check_size(intended_length)
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
        if not self.can_concatenate or not part_ids:
            raise UploadError(ErrorKind.BAD_REQUEST, "a final upload needs partial uploads")
        parts = [await self._complete_partial(part_id) for part_id in part_ids]
        size = sum(part.offset for part in parts)
        self._check_size(size)
        metadata = await self._checked_metadata(size, metadata, request)
        new = NewUpload(new_upload_id(), size, metadata, ConcatRole.FINAL, tuple(part_ids))
        assert isinstance(self.store, Concatenator)
        info = await self.store.concatenate(new, parts)
        self.bus.publish(UploadCreated(info))
        return await self.processor.finish(info)

    async def _checked_metadata(
        self, size: int | None, metadata: dict[str, str], request: RequestInfo | None
    ) -> dict[str, str]:
        """Valid metadata, as the pre-create hooks (which may reject) leave it."""
        self._check_metadata(metadata)
        if not self.hooks.has(PRE_CREATE):
            return metadata
        metadata = await self.hooks.pre_create(hook_new_upload(size, metadata), request)
        self._check_metadata(metadata)
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
        lock = await self.locker.acquire(
            request.upload_id, body.release_request, force=request.take_over
        )
        try:
            info = await self._writable(request)
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
        size = info.size if request.length is None else self._valid_length(info, request.length)
        intended = self._valid_intended_length(info, request.intended_length)
        end = info.offset + (request.content_length or 0)
        if size is not None and end > size:
            raise UploadError(ErrorKind.SIZE_EXCEEDED, "the body goes past the upload's length")
        if intended is not None and end > intended:
            raise _inconsistent_length(f"the request goes past the length {intended}", intended)
        # Declared only once the request is known to be acceptable.
        if size != info.size or intended != info.intended_length:
            info = await self.store.update(info.id, size=size, intended_length=intended)
        return info

    def _valid_length(self, info: UploadInfo, length: int) -> int:
        """A length a request declares: once only, within limits, not below the offset, and
        the intended length if one was said."""
        if info.size is not None:
            if length != info.size:
                raise UploadError(ErrorKind.BAD_REQUEST, "the upload's length cannot be changed")
            return length
        if info.intended_length not in (None, length):
            raise _inconsistent_length(
                f"the upload is {info.intended_length} bytes, not {length}", info.intended_length
            )
        self._check_size(length)
        if length < info.offset:
            raise UploadError(ErrorKind.BAD_REQUEST, "the declared length is below the offset")
        return length

    def _valid_intended_length(self, info: UploadInfo, length: int | None) -> int | None:
        """The upload's intended length after a request that may say one: said once, every
        later request that says one must say the same."""
        if length is None or length == info.intended_length:
            return info.intended_length
        if info.intended_length is not None:
            raise _inconsistent_length(
                f"the upload is {info.intended_length} bytes, not {length}", info.intended_length
            )
        self._check_size(length)
        return length

    async def _write(
        self, info: UploadInfo, request: WriteRequest, body: BodyStream, lock: Lock
    ) -> UploadInfo:
        try:
            return await self._write_locked(info, request.checksum, body)
        except UploadError as error:
            self._publish_failure(
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
            # Checksummed bytes are provisional: only the end of the request reports them.
            if checksum is None and throttle.due(time.monotonic()):
                self._publish_progress(info.id, offset, limit, offset - info.offset, start)

    # -- terminating and expiring ----------------------------------------------------------

    async def terminate(self, upload_id: str, request: RequestInfo | None = None) -> None:
        if not self.can_terminate:
            raise UploadError(ErrorKind.BAD_REQUEST, "this store cannot terminate uploads")
        info = await self.get(upload_id)
        lock = await self.locker.acquire(upload_id, _refuse, force=True)
        try:
            assert isinstance(self.store, Terminator)
            await self.store.terminate(upload_id, UploadState.TERMINATED)
        finally:
            await lock.release()
        self.bus.publish(UploadTerminated(upload_id))
        self._publish_failure(upload_id, ErrorKind.TERMINATED, "the upload was terminated", 0)
        log.info("terminated upload_id=%s", upload_id)
        if self.hooks.has(POST_TERMINATE):
            self.processor.spawn(self._after_termination(info, request))

    async def _after_termination(self, info: UploadInfo, request: RequestInfo | None) -> None:
        # A failure is logged by the runner; the upload is gone whatever the hook says.
        with contextlib.suppress(HookFailed):
            await self.hooks.run_all(POST_TERMINATE, hook_upload(info), request)

    async def sweep(self) -> int:
        """Expire idle unfinished uploads and forget old tombstones; returns how many."""
        if not isinstance(self.store, Terminator):
            return 0
        removed = 0
        async for upload_id in self.store.list_ids():
            try:
                removed += await self._sweep_one(self.store, upload_id)
            except UploadError:
                continue  # locked by a live writer, gone meanwhile, or the disk is full
            except OSError as error:  # one broken upload must not stop the whole sweep
                log.warning("sweep skipped upload_id=%s error=%s", upload_id, error)
        return removed

    async def _sweep_one(self, store: Terminator, upload_id: str) -> int:
        info = await self.store.get_info(upload_id)
        ttl = timedelta(seconds=self.limits.unfinished_ttl_seconds)
        if info.is_gone and info.updated_at + ttl <= datetime.now(UTC):
            await store.forget(upload_id)
            return 1
        if not self.is_expired(info):
            return 0
        lock = await self.locker.acquire(upload_id, _refuse)
        try:
            await store.terminate(upload_id, UploadState.EXPIRED)
        finally:
            await lock.release()
        self.bus.publish(UploadExpired(upload_id))
        self._publish_failure(upload_id, ErrorKind.EXPIRED, "the upload expired", info.offset)
        log.info("expired upload_id=%s offset=%d", upload_id, info.offset)
        return 1

    # -- shutting down ---------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every body in flight; each write persists what it got and releases its lock."""
        self.accepting = False
        for body in list(self._bodies):
            body.release_request(True)
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=SHUTDOWN_GRACE_SECONDS)
        await self.processor.stop()

    # -- helpers ---------------------------------------------------------------------------

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

    def _check_size(self, size: int | None) -> None:
        if size is not None and size > self.limits.max_size:
            raise UploadError(
                ErrorKind.SIZE_EXCEEDED, f"the upload is larger than {self.limits.max_size} bytes"
            )

    def _check_metadata(self, metadata: dict[str, str]) -> None:
        for key in metadata:
            check_key(key)
        if len(encode_metadata(metadata).encode()) > self.limits.max_metadata_bytes:
            raise UploadError(
                ErrorKind.INVALID_METADATA,
                f"metadata is longer than {self.limits.max_metadata_bytes} bytes",
            )

    def _publish_progress(
        self, upload_id: str, offset: int, size: int | None, count: int, start: float
    ) -> None:
        elapsed = max(time.monotonic() - start, 1e-6)
        self.bus.publish(UploadProgress(upload_id, offset, size, count / elapsed))

    def _publish_failure(self, upload_id: str, kind: ErrorKind, message: str, offset: int) -> None:
        self.bus.publish(UploadFailed(upload_id, kind, message, offset))


def _inconsistent_length(message: str, intended_length: int) -> UploadError:
    """A request at odds with the length the client said before (a client bug: final)."""
    return UploadError(ErrorKind.BAD_REQUEST, message, intended_length=intended_length)


def _refuse(force: bool) -> bool:
    """The release request of a holder that never gives its lock away (it is quick anyway)."""
    return False
