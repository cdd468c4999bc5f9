"""A store that keeps uploads in memory: the unit tier's store.

A real implementation of the core's store interface and of every optional capability but
`Digester` (processing streams its bytes through `Reader` instead), held to the same contract
suite as the disk and S3 stores (tests/contract/test_store_contract.py). Records go through
`formforge.stores.records`, so what an update may change, and that gone is final, is the
rule every store follows. Nothing survives the process, which is what a unit test wants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.model import NewUpload, UploadInfo, UploadState
from formforge.core.store import Store
from formforge.stores.records import (
    Record,
    apply_changes,
    check_changes,
    info_from_record,
    new_record,
)

READ_CHUNK = 64 * 1024


@dataclass
class _Upload:
    record: Record
    data: bytearray = field(default_factory=bytearray)
    # Bytes of a provisional write: not the upload's until its `keep()` says so.
    pending: bytearray = field(default_factory=bytearray)
    changed_at: float = field(default_factory=time.time)


class MemoryStore(Store):
    def __init__(self) -> None:
        self._uploads: dict[str, _Upload] = {}

    async def recover(self) -> None:
        """Nothing survives a crash here, so nothing needs mending."""

    async def create(self, new: NewUpload) -> UploadInfo:
        self._uploads[new.id] = _Upload(new_record(new))
        return self._info(new.id)

    async def get_info(self, upload_id: str) -> UploadInfo:
        return self._info(upload_id)

    async def write(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        keep: Callable[[], bool] | None = None,
    ) -> int:
        upload = self._upload(upload_id)
        if len(upload.data) != offset:
            raise UploadError(
                ErrorKind.OFFSET_MISMATCH,
                f"offset is {len(upload.data)}, not {offset}",
                offset=len(upload.data),
            )
        target = upload.data if keep is None else upload.pending
        try:
            async for chunk in chunks:
                target += chunk
                upload.changed_at = time.time()
        finally:
            # A cut body, a cancelled task and an error alike: what arrived stays.
            if keep is not None:
                if keep():
                    upload.data += upload.pending
                upload.pending.clear()
        return len(upload.data)

    async def update(self, upload_id: str, **changes: object) -> UploadInfo:
        check_changes(changes)
        upload = self._upload(upload_id)
        apply_changes(upload.record, changes)
        upload.changed_at = time.time()
        return self._info(upload_id)

    async def list_ids(self) -> AsyncIterator[str]:
        for upload_id in list(self._uploads):
            yield upload_id

    # -- capabilities --------------------------------------------------------------------

    async def terminate(self, upload_id: str, state: UploadState) -> None:
        upload = self._upload(upload_id)
        upload.record["state"] = str(state)
        upload.data.clear()
        upload.changed_at = time.time()

    async def forget(self, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)

    async def concatenate(self, new: NewUpload, parts: Sequence[UploadInfo]) -> UploadInfo:
        joined = bytearray().join(self._upload(part.id).data[: part.offset] for part in parts)
        self._uploads[new.id] = _Upload(new_record(new), joined)
        return self._info(new.id)

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        data = self._upload(upload_id).data
        for position in range(start, min(end, len(data)), READ_CHUNK):
            yield bytes(data[position : min(position + READ_CHUNK, end)])
            await asyncio.sleep(0)  # as a store reading from elsewhere would

    # -- for tests -----------------------------------------------------------------------

    def age(self, upload_id: str, seconds: float) -> None:
        """Make the upload look untouched for `seconds` longer: expiry without waiting."""
        self._upload(upload_id).changed_at -= seconds

    # -- helpers -------------------------------------------------------------------------

    def _upload(self, upload_id: str) -> _Upload:
        try:
            return self._uploads[upload_id]
        except KeyError:
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload") from None

    def _info(self, upload_id: str) -> UploadInfo:
        upload = self._upload(upload_id)
        return info_from_record(upload_id, upload.record, len(upload.data), upload.changed_at)
