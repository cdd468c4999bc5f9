"""Processing: what happens once an upload has all its bytes, before it is `complete`.

The whole-file sha256, then the post-finish hooks, in the background and without the
upload's lock. Meanwhile the state is `processing`; success publishes `UploadFinished`,
failure marks the upload `error` and publishes `processing-failed`. A crash mid-way leaves
`processing` behind, and `resume` at start-up processes such uploads again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Coroutine
from typing import Any

from formforge.errors import ErrorKind, UploadError
from formforge.events import EventBus, UploadFailed, UploadFinished
from formforge.hooks import POST_FINISH, HookFailed, HookRunner
from formforge.stores.base import ConcatRole, Digester, Reader, Store, UploadInfo, UploadState
from formforge.wire import hook_upload

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0
# Hashing is bound by CPU and disk: more at once than there are cores only holds more
# buffers (200 uploads finishing together held 1 MiB each).
HASHING_AT_ONCE = 2


class Processor:
    def __init__(self, store: Store, bus: EventBus, hooks: HookRunner) -> None:
        self.store = store
        self.bus = bus
        self.hooks = hooks
        self._tasks: set[asyncio.Task[None]] = set()
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)

    async def finish(self, info: UploadInfo) -> UploadInfo:
        """Mark a full upload `processing` and process it in the background.

        Partial uploads are only parts of a final one: complete at once, no event of their own.
        """
        if info.state is not UploadState.UPLOADING:
            return info
        if info.concat is ConcatRole.PARTIAL:
            return await self.store.update(info.id, state=UploadState.COMPLETE)
        info = await self.store.update(info.id, state=UploadState.PROCESSING)
        self.spawn(self._process(info))
        return info

    async def resume(self) -> int:
        """At start-up: process again what a crash or a stop interrupted."""
        resumed = 0
        async for upload_id in self.store.list_ids():
            info = await self.store.get_info(upload_id)
            interrupted = info.state is UploadState.PROCESSING
            if interrupted or (info.state is UploadState.UPLOADING and info.is_complete):
                if interrupted:
                    info = await self.store.update(upload_id, state=UploadState.UPLOADING)
                await self.finish(info)
                resumed += 1
        return resumed

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel what runs; those uploads stay `processing` and are resumed at start-up."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_SECONDS)

    async def _process(self, info: UploadInfo) -> None:
        try:
            sha256 = await self._sha256(info)
            info = await self.store.update(info.id, sha256=sha256)
            await self.hooks.run_all(POST_FINISH, hook_upload(info))
            if (await self.store.get_info(info.id)).is_gone:
                return  # terminated while it was being processed
            done = await self.store.update(info.id, state=UploadState.COMPLETE)
        except (HookFailed, UploadError, OSError) as error:
            await self._fail(info, error)
            return
        self.bus.publish(UploadFinished(done))
        log.info("finished upload_id=%s size=%s sha256=%s", info.id, info.size, sha256)

    async def _fail(self, info: UploadInfo, error: Exception) -> None:
        if (await self.store.get_info(info.id)).is_gone:
            return  # deleted or expired meanwhile: nothing left to mark or to report
        log.warning("processing failed upload_id=%s error=%s", info.id, error)
        try:
            await self.store.update(info.id, state=UploadState.ERROR, error=str(error))
        except (UploadError, OSError) as unrecorded:
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
                return await self.store.sha256(info.id, info.offset)
            return await self._sha256_streamed(info)

    async def _sha256_streamed(self, info: UploadInfo) -> str:
        if not isinstance(self.store, Reader):
            raise UploadError(ErrorKind.INTERNAL, "this store cannot read uploads back")
        hasher = hashlib.sha256()
        async for chunk in self.store.read(info.id, 0, info.offset):
            await asyncio.to_thread(hasher.update, chunk)  # hashlib lets go of the GIL
        return hasher.hexdigest()
