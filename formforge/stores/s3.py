"""S3 store: uploads as objects in one bucket of any S3-compatible engine, via aiobotocore.

Keys, all under `prefix`:

- `<id>.info` holds the upload's JSON record (the file store's fields, plus `multipart`: the S3
  upload id while bytes are still arriving). Written last on create: it makes an upload exist.
- `<id>` is the upload itself: an S3 multipart upload while bytes arrive, a plain object once
  complete (`read` streams ranged GETs of it).
- `<id>.tail` holds the bytes after the last part, fewer than a full part. Its metadata
  names the part number it will begin; once that part exists the tail is stale and ignored.
  Promoting a tail (upload part n holding it, then delete it) thus never counts a byte twice,
  whenever a crash comes.
- `<id>.stage.<n>` are full parts of a provisional (checksummed) write awaiting its verdict.

**The offset is derived, never stored**: the sizes ListParts reports plus the live tail's, as
tusd's s3store does. That costs get_info a GET, a HEAD and a ListParts (one per 1,000 parts);
a cache in the info object would save the last two, but it is a second copy of durable state
that a crash between a part and its record can put out of step: the house rule says derive.
The tail is read before the parts, so a promotion running meanwhile can make get_info lag
behind the writer, never run ahead of what is stored.

**Parts** follow S3's rules: every part but the last has at least 5 MiB, at most 10,000
parts. A part is uploaded only once it is full; full means `part_size` (default 8 MiB) for a
deferred length, doubling every 1,000 parts (8 TiB in 10,000 parts), and for a known length
at least what the parts left need to reach it (so 10,000 parts always suffice up to 5 TiB).
Bytes short of a full part become the tail (even past 5 MiB: parts of odd sizes would break
that guarantee), so a write that ends mid-part costs a tail PUT, and the next one a tail GET,
as tusd's `.part` object does. A write keeps one part in memory (the tail it resumes from
plus what it pulls, sent from that buffer without a copy), so memory follows the part
size, not the upload's: a 64 MiB write peaks near 11 MiB with 8 MiB parts.

**Durability**: every pulled byte is in a part or the tail when `write` returns or re-raises.
A body that stalls for `idle_flush_seconds` has its buffer written as the tail meanwhile, so
get_info sees it and a crash keeps it; the pause doubles after each such flush in one write,
so a trickling client cannot make the store rewrite a tail of up to a part again and again.
When the last byte arrives, the buffer goes up as the last part and the multipart upload is
completed; if a crash came between the two, the next `read` (processing's sha256, resumed
at start-up, is one) completes it.

**Provisional bytes** (`keep`): full parts go to `<id>.stage.<n>` objects, the rest stays in
memory, and nothing of it counts until `keep()` says yes; then each staged part is copied
server-side (UploadPartCopy) into the upload, in order, and the rest settles as above. A no,
or a crash before the verdict, leaves the upload exactly as it was: the staged objects are
deleted (by the write, by forget, or by `recover` once they are stale). A crash during the
copies keeps a prefix of bytes the verdict accepted, which is what the offset then says.

**Concatenation** copies the partial objects server-side, in ranges of at most 1 GiB. A
partial (or its rest) below 5 MiB cannot be a part of its own unless it is last: such bytes
are downloaded and topped up to exactly 5 MiB from the next partial's head, then uploaded
as one part, so at most 5 MiB pass through memory.

Every key is built from a validated id; the prefix (or bucket) must be the store's alone.
Checksums of requests are left to S3's signature (`when_required`): many S3-compatible
engines reject the newer default checksum headers. The store owns an aiobotocore client,
opened in the running loop on first use: `close()` it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from formforge.errors import ErrorKind, UploadError
from formforge.ids import is_valid_upload_id
from formforge.stores.base import GONE_STATES, NewUpload, Store, UploadInfo, UploadState
from formforge.stores.file import _info_from_record, _new_record

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3: every part but the last
MAX_PART = 5 * 1024 * MIB
MAX_PARTS = 10_000
GROWTH_EVERY = 1_000  # parts, for a deferred length
DEFAULT_PART_SIZE = 8 * MIB
COPY_RANGE = 1024 * MIB  # the largest range one UploadPartCopy moves
READ_CHUNK = MIB
MAX_IDLE_FLUSH_SECONDS = 60.0
_INFO_FIELDS = {"size", "state", "sha256", "error", "metadata"}
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


class S3Store(Store):
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
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = min(max(part_size, MIN_PART), MAX_PART)
        self.idle_flush_seconds = idle_flush_seconds
        self.stale_after = timedelta(seconds=stale_after_seconds)
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": region,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "config": Config(
                s3={"addressing_style": "path"},
                max_pool_connections=max_connections,
                retries={"mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def s3(self) -> Any:
        """The aiobotocore client, opened on first use (in the running event loop)."""
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                context = get_session().create_client("s3", **self._client_args)
                self._client = await self._exit.enter_async_context(context)
        return self._client

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None

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
        record = _new_record(new)
        record["multipart"] = await self._start_bytes(new.id, new.size)
        await self.put_record(new.id, record)
        return _info_from_record(new.id, record, 0, datetime.now(UTC).timestamp())

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
        return _info_from_record(upload_id, record, offset, modified.timestamp())

    async def _stored(self, upload_id: str, multipart: str | None) -> tuple[int, datetime]:
        """Bytes stored now and when they last changed: parts and tail, or the object."""
        if multipart is not None:
            layout = await self._layout(upload_id, multipart)
            if layout is not None:
                return layout.offset, layout.modified
        head = await self._head(self.key(upload_id))  # complete (or aborted by a crash)
        return (0, _EPOCH) if head is None else (head.size, head.modified)

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
        await writer.load_tail()
        writer.provisional = keep is not None
        idle = None if keep is not None else self.idle_flush_seconds
        try:
            async with contextlib.aclosing(_pulled(chunks, idle, writer.flush_tail)) as pulled:
                async for chunk in pulled:
                    await writer.add(chunk)
        finally:
            # Runs on a cut body, a cancelled task and an error alike: what arrived stays.
            end = await writer.close(keep)
        return end

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

    async def _open_writer(self, upload_id: str) -> _Writer | None:
        """A writer at the stored offset; None once the multipart upload is over."""
        record, _ = await self._record(upload_id)
        multipart = record.get("multipart")
        if multipart is None:
            return None
        layout = await self._layout(upload_id, multipart)
        if layout is None:  # completed, or aborted, by a crash before the record said so
            return None
        return _Writer(self, upload_id, record, layout)

    async def update(self, upload_id: str, **changes: object) -> UploadInfo:
        unknown = set(changes) - _INFO_FIELDS
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        record, _ = await self._record(upload_id)
        record.update({k: str(v) if isinstance(v, UploadState) else v for k, v in changes.items()})
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
        await _Concatenation(self, self.key(new.id)).run(sources)
        record = _new_record(new)
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

    # -- S3 helpers ------------------------------------------------------------------------

    async def _record(self, upload_id: str) -> tuple[dict[str, Any], datetime]:
        s3 = await self.s3()
        try:
            got = await s3.get_object(Bucket=self.bucket, Key=self.key(upload_id, ".info"))
        except ClientError as error:
            if _code(error) in _MISSING:
                raise UploadError(ErrorKind.NOT_FOUND, "no such upload") from None
            raise
        async with got["Body"] as body:
            record: dict[str, Any] = json.loads(await body.read())
        return record, _utc(got["LastModified"])

    async def put_record(self, upload_id: str, record: dict[str, Any]) -> None:
        s3 = await self.s3()
        body = json.dumps(record).encode()
        await s3.put_object(Bucket=self.bucket, Key=self.key(upload_id, ".info"), Body=body)

    async def _layout(self, upload_id: str, multipart: str) -> _Layout | None:
        """Parts and tail of an unfinished upload; None if its multipart upload is over."""
        tail = await self._head(self.key(upload_id, ".tail"))  # before the parts: see above
        parts: dict[int, _Part] = {}
        s3 = await self.s3()
        pages = s3.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=self.key(upload_id), UploadId=multipart
        )
        try:
            async for page in pages:
                for item in page.get("Parts", []):
                    # A retried part can be listed twice (SeaweedFS): the later one counts.
                    number, size = int(item["PartNumber"]), int(item["Size"])
                    parts[number] = _Part(number, size, item["ETag"], _utc(item["LastModified"]))
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise
        return _Layout(parts, tail)

    async def _head(self, key: str) -> _Head | None:
        s3 = await self.s3()
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise
        part = head.get("Metadata", {}).get("part", "0")
        return _Head(int(head["ContentLength"]), _utc(head["LastModified"]), int(part))

    async def _objects(self, prefix: str) -> AsyncIterator[tuple[str, datetime]]:
        s3 = await self.s3()
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        async for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"]), _utc(item["LastModified"])

    async def _multiparts(self, prefix: str) -> AsyncIterator[tuple[str, str, datetime]]:
        s3 = await self.s3()
        pages = s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        async for page in pages:
            for item in page.get("Uploads", []):
                yield str(item["Key"]), str(item["UploadId"]), _utc(item["Initiated"])

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

    async def finish_multipart(self, key: str, multipart: str, parts: list[dict[str, Any]]) -> None:
        """Complete a multipart upload; one of no parts becomes an empty object instead."""
        s3 = await self.s3()
        if not parts:  # S3 cannot complete an upload of no parts
            await s3.put_object(Bucket=self.bucket, Key=key, Body=b"")
            await self.abort(key, multipart)
            return
        try:
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=multipart, MultipartUpload={"Parts": parts}
            )
        except ClientError as error:
            # A download racing the last write may have completed it first: fine if it did.
            if _code(error) not in _MISSING or await self._head(key) is None:
                raise

    async def abort(self, key: str, multipart: str) -> None:
        s3 = await self.s3()
        try:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart)
        except ClientError as error:
            if _code(error) not in _MISSING:
                raise

    async def delete(self, key: str) -> None:
        s3 = await self.s3()
        await s3.delete_object(Bucket=self.bucket, Key=key)  # a missing key is no error in S3

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


# -- what is stored ------------------------------------------------------------------------

_EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass
class _Part:
    number: int
    size: int
    etag: str
    modified: datetime = _EPOCH


@dataclass(frozen=True)
class _Head:
    size: int
    modified: datetime
    part: int  # a tail's: the part number it will begin


@dataclass
class _Layout:
    """An unfinished upload as S3 holds it: its parts and (maybe) its tail."""

    parts: dict[int, _Part]
    tail: _Head | None

    @property
    def next_part(self) -> int:
        return max(self.parts, default=0) + 1

    @property
    def live_tail(self) -> _Head | None:
        """The tail, unless a part has absorbed it already (a promotion a crash cut short)."""
        return self.tail if self.tail is not None and self.tail.part >= self.next_part else None

    @property
    def offset(self) -> int:
        tail = self.live_tail
        return sum(part.size for part in self.parts.values()) + (tail.size if tail else 0)

    @property
    def modified(self) -> datetime:
        times = [part.modified for part in self.parts.values()]
        return max([*times, self.live_tail.modified if self.live_tail else _EPOCH])


# -- writing -------------------------------------------------------------------------------


class _PartBody(io.RawIOBase):
    """A seekable read-only view of a part's bytes: botocore streams it, and rewinds it to
    sign or retry, without a copy of the part."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        stop = len(self._view) if size is None or size < 0 else self._position + size
        chunk = bytes(self._view[self._position : stop])
        self._position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return len(self._view)


class _Writer:
    """One write: a buffer of at most one part, shipped to the upload or to staging.

    `parts_end` is where the buffer starts in the upload; `dirty` says the buffer holds
    bytes the tail object does not; `tail_part` is the part number the tail object names.
    """

    def __init__(
        self, store: S3Store, upload_id: str, record: dict[str, Any], layout: _Layout
    ) -> None:
        self.store = store
        self.upload_id = upload_id
        self.record = record
        self.multipart = str(record["multipart"])
        self.parts = layout.parts
        self.start = layout.offset
        self.next_part = layout.next_part
        self.parts_end = sum(part.size for part in layout.parts.values())
        self.tail = layout.live_tail
        self.tail_part = layout.tail.part if layout.tail else None
        self.buffer = bytearray()
        self.dirty = False
        self.provisional = False  # full parts go to staging until the verdict
        self.staged: list[_Part] = []

    @property
    def offset(self) -> int:
        return self.parts_end + len(self.buffer)

    @property
    def size(self) -> int | None:
        size = self.record.get("size")
        return int(size) if size is not None else None

    async def load_tail(self) -> None:
        """Resume from the tail: its bytes start the buffer (less than a part: bounded)."""
        if self.tail is None:
            return
        s3 = await self.store.s3()
        got = await s3.get_object(Bucket=self.store.bucket, Key=self._tail_key)
        async with got["Body"] as body:
            while chunk := await body.read(READ_CHUNK):
                self.buffer += chunk

    async def add(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while True:
            target = self._target()
            if len(self.buffer) >= target:
                await self._ship(target)
                continue
            if not view:
                return
            take = min(len(view), target - len(self.buffer))
            self.buffer += view[:take]
            view = view[take:]
            self.dirty = True

    def _target(self) -> int:
        return self.store.target_part_size(self.next_part, self.parts_end, self.size)

    async def _ship(self, count: int) -> None:
        """Upload the buffer's first `count` bytes as the next part, then drop them."""
        view = memoryview(self.buffer)[:count]
        try:
            if self.provisional:
                await self._put(self.store.stage_key(self.upload_id, self.next_part), view)
                self.staged.append(_Part(self.next_part, count, ""))
            else:
                etag = await self._upload_part(view)
                self.parts[self.next_part] = _Part(self.next_part, count, etag)
        finally:
            view.release()
        del self.buffer[:count]  # O(1) at the front of a bytearray
        self.parts_end += count
        self.next_part += 1
        self.dirty = bool(self.buffer)

    async def _upload_part(self, view: memoryview) -> str:
        s3 = await self.store.s3()
        done = await s3.upload_part(
            Bucket=self.store.bucket,
            Key=self.store.key(self.upload_id),
            UploadId=self.multipart,
            PartNumber=self.next_part,
            Body=_PartBody(view),
        )
        return str(done["ETag"])

    async def _put(self, key: str, view: memoryview, **extra: Any) -> None:
        s3 = await self.store.s3()
        await s3.put_object(Bucket=self.store.bucket, Key=key, Body=_PartBody(view), **extra)

    async def flush_tail(self) -> None:
        """The body stalls: write what the buffer holds as the tail now."""
        if self.dirty and not self.provisional:
            await self._put_tail()

    async def _put_tail(self) -> None:
        view = memoryview(self.buffer)
        try:
            await self._put(self._tail_key, view, Metadata={"part": str(self.next_part)})
        finally:
            view.release()
        self.tail_part = self.next_part
        self.dirty = False

    @property
    def _tail_key(self) -> str:
        return self.store.key(self.upload_id, ".tail")

    # -- the end of a write ----------------------------------------------------------------

    async def close(self, keep: Callable[[], bool] | None) -> int:
        """Make the write's outcome durable; returns the upload's offset after it."""
        try:
            if self.provisional:
                if keep is None or not keep():
                    return self.start
                await self._commit()
            await self.settle()
            return self.offset
        finally:
            for part in self.staged:
                await self.store.delete(self.store.stage_key(self.upload_id, part.number))

    async def _commit(self) -> None:
        """Accepted: copy the staged parts into the upload, in order, server-side."""
        s3 = await self.store.s3()
        for part in self.staged:
            source = self.store.stage_key(self.upload_id, part.number)
            copied = await s3.upload_part_copy(
                Bucket=self.store.bucket,
                Key=self.store.key(self.upload_id),
                UploadId=self.multipart,
                PartNumber=part.number,
                CopySource={"Bucket": self.store.bucket, "Key": source},
            )
            self.parts[part.number] = _Part(
                part.number, part.size, copied["CopyPartResult"]["ETag"]
            )
        self.provisional = False

    async def settle(self) -> None:
        while len(self.buffer) >= self._target():  # a ship that an error cut short
            await self._ship(self._target())
        if self.size is not None and self.offset == self.size:
            await self._complete()
        elif self.dirty:
            await self._put_tail()
        elif not self.buffer and self.tail_part is not None and self.tail_part < self.next_part:
            await self.store.delete(self._tail_key)  # absorbed by a part: housekeeping

    async def _complete(self) -> None:
        """All bytes are here: the buffer is the last part; the upload becomes one object."""
        if self.buffer:
            await self._ship(len(self.buffer))
        key = self.store.key(self.upload_id)
        parts = [{"PartNumber": n, "ETag": p.etag} for n, p in sorted(self.parts.items())]
        await self.store.finish_multipart(key, self.multipart, parts)
        await self.store.delete(self._tail_key)
        self.record["multipart"] = None
        await self.store.put_record(self.upload_id, self.record)
        log.info("upload completed upload_id=%s parts=%d", self.upload_id, len(parts))


async def _pulled(
    chunks: AsyncIterable[bytes], idle: float | None, on_idle: Callable[[], Awaitable[None]]
) -> AsyncGenerator[bytes, None]:
    """The chunks, calling `on_idle` each time the body stalls for `idle` (which doubles).

    The pending `anext` runs in a task of its own, so the stall is waited out without
    cancelling the body's iterator.
    """
    iterator = aiter(chunks)
    pause = idle
    while True:
        pending = asyncio.ensure_future(_next(iterator))
        try:
            while pause is not None:
                done, _ = await asyncio.wait({pending}, timeout=pause)
                if done:
                    break
                await on_idle()
                pause = min(pause * 2, MAX_IDLE_FLUSH_SECONDS)
            chunk = await pending
        finally:
            if not pending.done():
                pending.cancel()
        if chunk is None:
            return
        yield chunk


async def _next(iterator: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None


# -- concatenation -------------------------------------------------------------------------


@dataclass
class _Concatenation:
    """A final upload made of the partial objects, as the parts S3 allows (module doc)."""

    store: S3Store
    key: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    small: list[tuple[str, int, int]] = field(default_factory=list)  # to download
    small_size: int = 0
    multipart: str = ""

    async def run(self, sources: Sequence[tuple[str, int]]) -> None:
        s3 = await self.store.s3()
        started = await s3.create_multipart_upload(Bucket=self.store.bucket, Key=self.key)
        self.multipart = str(started["UploadId"])
        try:
            for source, size in sources:
                await self._add(source, size)
            if self.small:
                await self._upload_small()
            await self.store.finish_multipart(self.key, self.multipart, self.parts)
        except BaseException:
            await self.store.abort(self.key, self.multipart)
            raise

    async def _add(self, source: str, size: int) -> None:
        start = 0
        if self.small:  # top the pending small bytes up to exactly one minimal part
            start = min(size, MIN_PART - self.small_size)
            self._keep_small(source, 0, start)
            if self.small_size >= MIN_PART:
                await self._upload_small()
        if size - start >= MIN_PART:
            await self._copy(source, start, size)
        elif size > start:
            self._keep_small(source, start, size)

    def _keep_small(self, source: str, start: int, end: int) -> None:
        if end > start:
            self.small.append((source, start, end))
            self.small_size += end - start

    async def _copy(self, source: str, start: int, end: int) -> None:
        """Server-side copies of [start, end) in equal ranges of at most COPY_RANGE bytes."""
        s3 = await self.store.s3()
        count = -(-(end - start) // COPY_RANGE)
        bounds = [start + (end - start) * i // count for i in range(count + 1)]
        for first, stop in itertools.pairwise(bounds):
            copied = await s3.upload_part_copy(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self.multipart,
                PartNumber=self._number(),
                CopySource={"Bucket": self.store.bucket, "Key": source},
                CopySourceRange=f"bytes={first}-{stop - 1}",
            )
            self._added(copied["CopyPartResult"]["ETag"])

    async def _upload_small(self) -> None:
        """Download the pending small pieces (5 MiB at most) and upload them as one part."""
        s3 = await self.store.s3()
        buffer = bytearray()
        for source, start, end in self.small:
            got = await s3.get_object(
                Bucket=self.store.bucket, Key=source, Range=f"bytes={start}-{end - 1}"
            )
            async with got["Body"] as body:
                while chunk := await body.read(READ_CHUNK):
                    buffer += chunk
        with memoryview(buffer) as view:
            done = await s3.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self.multipart,
                PartNumber=self._number(),
                Body=_PartBody(view),
            )
        self._added(done["ETag"])
        self.small, self.small_size = [], 0

    def _number(self) -> int:
        if len(self.parts) >= MAX_PARTS:
            raise UploadError(ErrorKind.SIZE_EXCEEDED, "the parts need more than 10,000 S3 parts")
        return len(self.parts) + 1

    def _added(self, etag: object) -> None:
        self.parts.append({"PartNumber": len(self.parts) + 1, "ETag": str(etag)})


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
