"""S3 store: uploads as objects in one bucket of any S3-compatible engine, via aiobotocore.

Keys, all under `prefix`:

- `<id>.info` holds the upload's JSON record (`records.py`, plus `multipart`: the S3 upload
  id while bytes are still arriving). Written last on create: it makes an upload exist.
- `<id>` is the upload itself: an S3 multipart upload while bytes arrive, a plain object once
  complete (`read` streams ranged GETs of it).
- `<id>.tail` holds the bytes after the last part, fewer than a full part (`s3_writer.py`).
- `<id>.stage.<n>` are full parts of a provisional (checksummed) write awaiting its verdict.

**The offset is derived, never stored**: the sizes ListParts reports plus the live tail's, as
tusd's s3store does. That costs get_info a GET, a HEAD and a ListParts (one per 1,000 parts);
a cache in the info object would save the last two, but it is a second copy of durable state
that a crash between a part and its record can put out of step: the house rule says derive.
The tail is read before the parts, so a promotion running meanwhile can make get_info lag
behind the writer, never run ahead of what is stored.

**Parts** follow S3's rules: every part but the last has at least 5 MiB, at most 10,000
parts. Full means `part_size` (default 8 MiB) for a deferred length, doubling every 1,000
parts (8 TiB in 10,000 parts), and for a known length at least what the parts left need to
reach it (so 10,000 parts always suffice up to 5 TiB). How a write fills them, keeps the
rest as the tail and stages provisional bytes is `s3_writer.py`; concatenation is
`s3_concat.py`; the client and the object calls they share are `s3_bucket.py`.

Every key is built from a validated id; the prefix (or bucket) must be the store's alone.
The store owns an aiobotocore client, opened in the running loop on first use: `close()` it
at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import is_valid_upload_id
from formforge.core.model import GONE_STATES, NewUpload, UploadInfo, UploadState
from formforge.core.store import Store
from formforge.stores.records import (
    Record,
    apply_changes,
    check_changes,
    dump_record,
    info_from_record,
    load_record,
    new_record,
)
from formforge.stores.s3.bucket import (
    MAX_PART,
    MAX_PARTS,
    MIB,
    MIN_PART,
    READ_CHUNK,
    S3Bucket,
    is_missing,
    utc,
)
from formforge.stores.s3.concat import Concatenation
from formforge.stores.s3.writer import EPOCH, Layout, Part, PartWriter

__all__ = ["MAX_PARTS", "MIN_PART", "S3Store"]

log = logging.getLogger(__name__)

GROWTH_EVERY = 1_000  # parts, for a deferred length
DEFAULT_PART_SIZE = 8 * MIB


class S3Store(S3Bucket, Store):
    """Uploads in one bucket. Call `close()` when done: it owns an HTTP connection pool."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        prefix: str = "",
        idle_flush_seconds: float = 0.5,
        stale_after_seconds: float = 86_400.0,
        max_connections: int = 64,
    ) -> None:
        super().__init__(
            bucket,
            endpoint=endpoint,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            max_connections=max_connections,
        )
        self.prefix = prefix
        self.part_size = min(max(part_size, MIN_PART), MAX_PART)
        self.idle_flush_seconds = idle_flush_seconds
        self.stale_after = timedelta(seconds=stale_after_seconds)

    # -- keys ------------------------------------------------------------------------------

    def key(self, upload_id: str, suffix: str = "") -> str:
        if not is_valid_upload_id(upload_id):
            # The service validates ids first; this is the last line of defence.
            raise UploadError(ErrorKind.NOT_FOUND, "no such upload")
        return f"{self.prefix}{upload_id}{suffix}"

    def stage_key(self, upload_id: str, number: int) -> str:
        return self.key(upload_id, f".stage.{number}")

    # -- core ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Abort and delete what crashes left behind, once older than `stale_after`.

        Only stale leftovers: on a shared bucket another node may be creating, concatenating
        or staging right now, and none of that takes a day.
        """
        cutoff = datetime.now(UTC) - self.stale_after
        ids = {upload_id async for upload_id in self.list_ids()}
        await self._abort_stale_multiparts(ids, cutoff)
        async for key, modified in self._objects(self.prefix):
            name = key[len(self.prefix) :]
            upload_id, _, suffix = name.partition(".")
            if not is_valid_upload_id(upload_id) or modified >= cutoff:
                continue  # not ours (the prefix should be the store's alone), or not stale
            if suffix.startswith("stage.") or (upload_id not in ids and suffix in ("", "tail")):
                await self.delete(key)
                log.info("stale object deleted key=%s", key)

    async def create(self, new: NewUpload) -> UploadInfo:
        record = new_record(new)
        record["multipart"] = await self._start_bytes(new.id, new.size)
        await self.put_record(new.id, record)
        return info_from_record(new.id, record, 0, datetime.now(UTC).timestamp())

    async def _start_bytes(self, upload_id: str, size: int | None) -> str | None:
        """An empty upload is complete at once; any other gets its multipart upload."""
        s3 = await self.s3()
        if size == 0:
            await s3.put_object(Bucket=self.bucket, Key=self.key(upload_id), Body=b"")
            return None
        started = await s3.create_multipart_upload(Bucket=self.bucket, Key=self.key(upload_id))
        return str(started["UploadId"])

    async def get_info(self, upload_id: str) -> UploadInfo:
        record, modified = await self._record(upload_id)
        offset = 0
        if UploadState(record.get("state", "uploading")) not in GONE_STATES:
            offset, data_modified = await self._stored(upload_id, record.get("multipart"))
            modified = max(modified, data_modified)
        return info_from_record(upload_id, record, offset, modified.timestamp())

    async def _stored(self, upload_id: str, multipart: str | None) -> tuple[int, datetime]:
        """Bytes stored now and when they last changed: parts and tail, or the object."""
        if multipart is not None:
            layout = await self._layout(upload_id, multipart)
            if layout is not None:
                return layout.offset, layout.modified
        head = await self._head(self.key(upload_id))  # complete (or aborted by a crash)
        return (0, EPOCH) if head is None else (head.size, head.modified)

    async def write(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        keep: Callable[[], bool] | None = None,
    ) -> int:
        writer = await self._open_writer(upload_id)
        if writer is None:
            return await self._write_closed(upload_id, offset, chunks)
        if writer.start != offset:
            raise UploadError(
                ErrorKind.OFFSET_MISMATCH,
                f"offset is {writer.start}, not {offset}",
                offset=writer.start,
            )
        return await writer.write(chunks, keep, self.idle_flush_seconds)

    async def _write_closed(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """A complete (or gone) upload takes no more bytes; an empty body is a no-op."""
        stored = (await self.get_info(upload_id)).offset
        if stored != offset:
            raise UploadError(
                ErrorKind.OFFSET_MISMATCH, f"offset is {stored}, not {offset}", offset=stored
            )
        async for chunk in chunks:
            if chunk:
                raise UploadError(ErrorKind.SIZE_EXCEEDED, "the upload has all its bytes")
        return offset

    async def _open_writer(self, upload_id: str) -> PartWriter | None:
        """A writer at the stored offset; None once the multipart upload is over."""
        record, _ = await self._record(upload_id)
        multipart = record.get("multipart")
        if multipart is None:
            return None
        layout = await self._layout(upload_id, multipart)
        if layout is None:  # completed, or aborted, by a crash before the record said so
            return None
        return PartWriter(self, upload_id, record, layout)

    async def update(self, upload_id: str, **changes: object) -> UploadInfo:
        check_changes(changes)
        record, _ = await self._record(upload_id)
        apply_changes(record, changes)
        await self.put_record(upload_id, record)
        return await self.get_info(upload_id)

    async def list_ids(self) -> AsyncIterator[str]:
        async for key, _ in self._objects(self.prefix):
            name = key[len(self.prefix) :]
            if name.endswith(".info") and is_valid_upload_id(name[: -len(".info")]):
                yield name[: -len(".info")]

    # -- capabilities ----------------------------------------------------------------------

    async def terminate(self, upload_id: str, state: UploadState) -> None:
        record, _ = await self._record(upload_id)
        # The tombstone first: a crash after it leaves garbage for `forget`, never an upload
        # that looks alive with its bytes half gone.
        record.update(state=str(state), multipart=None)
        await self.put_record(upload_id, record)
        await self._remove_bytes(upload_id)

    async def forget(self, upload_id: str) -> None:
        await self._remove_bytes(upload_id)
        await self.delete(self.key(upload_id, ".info"))

    async def concatenate(self, new: NewUpload, parts: Sequence[UploadInfo]) -> UploadInfo:
        for part in parts:
            await self._ensure_final(part.id)
        sources = [(self.key(part.id), part.offset) for part in parts]
        await Concatenation(self, self.key(new.id)).run(sources)
        record = new_record(new)
        record["multipart"] = None
        await self.put_record(new.id, record)
        return await self.get_info(new.id)

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        await self._ensure_final(upload_id)
        if end <= start:
            return
        s3 = await self.s3()
        got = await s3.get_object(
            Bucket=self.bucket, Key=self.key(upload_id), Range=f"bytes={start}-{end - 1}"
        )
        body = got["Body"]
        try:
            while chunk := await body.read(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def _ensure_final(self, upload_id: str) -> None:
        """Complete the multipart upload of an upload that has all its bytes.

        Normally done by the write that brought the last byte; this covers a crash between
        that byte and CompleteMultipartUpload.
        """
        writer = await self._open_writer(upload_id)
        if writer is None:
            return
        if writer.size is None or writer.start != writer.size:
            raise UploadError(ErrorKind.INCOMPLETE, "the upload is not complete yet")
        await writer.load_tail()
        await writer.settle()

    # -- what is stored: the record, the layout, leftovers -------------------------------

    async def _record(self, upload_id: str) -> tuple[Record, datetime]:
        s3 = await self.s3()
        try:
            got = await s3.get_object(Bucket=self.bucket, Key=self.key(upload_id, ".info"))
        except ClientError as error:
            if is_missing(error):
                raise UploadError(ErrorKind.NOT_FOUND, "no such upload") from None
            raise
        async with got["Body"] as body:
            record = load_record(await body.read())
        return record, utc(got["LastModified"])

    async def put_record(self, upload_id: str, record: Record) -> None:
        s3 = await self.s3()
        body = dump_record(record)
        await s3.put_object(Bucket=self.bucket, Key=self.key(upload_id, ".info"), Body=body)

    async def _layout(self, upload_id: str, multipart: str) -> Layout | None:
        """Parts and tail of an unfinished upload; None if its multipart upload is over."""
        tail = await self._head(self.key(upload_id, ".tail"))  # before the parts: see above
        parts: dict[int, Part] = {}
        s3 = await self.s3()
        pages = s3.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=self.key(upload_id), UploadId=multipart
        )
        try:
            async for page in pages:
                for item in page.get("Parts", []):
                    # A retried part can be listed twice (SeaweedFS): the later one counts.
                    number, size = int(item["PartNumber"]), int(item["Size"])
                    parts[number] = Part(number, size, item["ETag"], utc(item["LastModified"]))
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        return Layout(parts, tail)

    async def _abort_stale_multiparts(self, ids: set[str], cutoff: datetime) -> None:
        async for key, multipart, initiated in self._multiparts(self.prefix):
            upload_id = key[len(self.prefix) :]
            if initiated >= cutoff or not is_valid_upload_id(upload_id):
                continue
            if upload_id in ids:
                record, _ = await self._record(upload_id)
                if record.get("multipart") == multipart:
                    continue  # a live upload, just an old one
            await self.abort(key, multipart)
            log.info("stale multipart upload aborted key=%s", key)

    async def _remove_bytes(self, upload_id: str) -> None:
        """Abort the multipart upload(s) and delete every object but the info."""
        key = self.key(upload_id)
        async for listed, multipart, _ in self._multiparts(key):
            if listed == key:  # the prefix also matches longer ids
                await self.abort(key, multipart)
        for doomed in (key, self.key(upload_id, ".tail")):
            await self.delete(doomed)
        async for staged, _ in self._objects(self.key(upload_id, ".stage.")):
            await self.delete(staged)

    def target_part_size(self, number: int, start: int, size: int | None) -> int:
        """How big part `number`, starting at byte `start`, must be before it is uploaded."""
        if number > MAX_PARTS:
            raise UploadError(ErrorKind.SIZE_EXCEEDED, "the upload needs more than 10,000 parts")
        if size is None:
            wanted = self.part_size << ((number - 1) // GROWTH_EVERY)
        else:
            parts_left = MAX_PARTS - number + 1
            wanted = max(self.part_size, -(-(size - start) // parts_left))
        return min(max(wanted, MIN_PART), MAX_PART)
