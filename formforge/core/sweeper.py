"""Expiry: idle unfinished uploads expire (their bytes go, a tombstone stays), and
tombstones are forgotten one time-to-live later."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.events import UploadExpired
from formforge.core.locker import BRIEF
from formforge.core.model import UploadState
from formforge.core.store import Terminator

if TYPE_CHECKING:
    from formforge.core.service import UploadService

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, service: UploadService) -> None:
        self.service = service

    async def sweep(self) -> int:
        """Expire idle unfinished uploads and forget old tombstones; returns how many."""
        if not isinstance(self.service.store, Terminator):
            return 0
        removed = 0
        async for upload_id in self.service.store.list_ids():
            try:
                removed += await self._sweep_one(self.service.store, upload_id)
            except UploadError:
                continue  # locked by a live writer, gone meanwhile, or the disk is full
            except OSError as error:  # one broken upload must not stop the whole sweep
                log.warning("sweep skipped upload_id=%s error=%s", upload_id, error)
        return removed

    async def _sweep_one(self, store: Terminator, upload_id: str) -> int:
        info = await self.service.store.get_info(upload_id)
        ttl = timedelta(seconds=self.service.limits.unfinished_ttl_seconds)
        if info.is_gone and info.updated_at + ttl <= datetime.now(UTC):
            await store.forget(upload_id)
            return 1
        if not self.service.is_expired(info):
            return 0
        lock = await self.service.locker.acquire(upload_id, BRIEF)
        try:
            # Decided again under the lock: a write that held it may have stored bytes (and
            # been acknowledged) since the first read.
            info = await self.service.store.get_info(upload_id)
            if not self.service.is_expired(info):
                return 0
            await store.terminate(upload_id, UploadState.EXPIRED)
        finally:
            await lock.release()
        self.service.bus.publish(UploadExpired(upload_id))
        self.service.publish_failure(
            upload_id, ErrorKind.EXPIRED, "the upload expired", info.offset
        )
        log.info("expired upload_id=%s offset=%d", upload_id, info.offset)
        return 1
