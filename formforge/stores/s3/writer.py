"""The S3 store's writes: a body pulled into parts of a multipart upload and a tail object.

**What a write leaves** (`Layout`): the parts ListParts reports and maybe `<id>.tail`, the
bytes after the last part, fewer than a full part. The tail's metadata names the part number
it will begin; once that part exists the tail is stale and ignored. Promoting a tail (upload
part n holding it, then delete it) thus never counts a byte twice, whenever a crash comes.

**Buffering**: a part is uploaded only once it is full (the store's `target_part_size`).
Bytes short of a full part become the tail (even past 5 MiB: parts of odd sizes would break
the store's 10,000-part guarantee), so a write that ends mid-part costs a tail PUT, and the
next one a tail GET, as tusd's `.part` object does. A write keeps one part in memory (the
tail it resumes from plus what it pulls, sent from that buffer without a copy), so memory
follows the part size, not the upload's: a 64 MiB write peaks near 11 MiB with 8 MiB parts.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from formforge.stores.records import Record
from formforge.stores.s3.bucket import READ_CHUNK, Head, PartBody

log = logging.getLogger(__name__)

MAX_IDLE_FLUSH_SECONDS = 60.0
EPOCH = datetime.fromtimestamp(0, UTC)


class UploadObjects(Protocol):
    """What a writer needs of the store (`S3Store` is one): its bucket, keys, sizes, records."""

    bucket: str

    async def s3(self) -> Any: ...

    def key(self, upload_id: str, suffix: str = "") -> str: ...

    def stage_key(self, upload_id: str, number: int) -> str: ...

    def target_part_size(self, number: int, start: int, size: int | None) -> int: ...

    async def delete(self, key: str) -> None: ...

    async def finish_multipart(
        self, key: str, multipart: str, parts: list[dict[str, Any]]
    ) -> None: ...

    async def put_record(self, upload_id: str, record: Record) -> None: ...


@dataclass
class Part:
    number: int
    size: int
    etag: str
    modified: datetime = EPOCH


@dataclass
class Layout:
    """An unfinished upload as S3 holds it: its parts and (maybe) its tail."""

    parts: dict[int, Part]
    tail: Head | None

    @property
    def next_part(self) -> int:
        return max(self.parts, default=0) + 1

    @property
    def live_tail(self) -> Head | None:
        """The tail, unless a part has absorbed it already (a promotion a crash cut short)."""
        return self.tail if self.tail is not None and self.tail.part >= self.next_part else None

    @property
    def offset(self) -> int:
        tail = self.live_tail
        return sum(part.size for part in self.parts.values()) + (tail.size if tail else 0)

    @property
    def modified(self) -> datetime:
        times = [part.modified for part in self.parts.values()]
        return max([*times, self.live_tail.modified if self.live_tail else EPOCH])


class PartWriter:
    """One write: a buffer of at most one part, shipped to the upload or to staging.

    `parts_end` is where the buffer starts in the upload; `dirty` says the buffer holds
    bytes the tail object does not; `tail_part` is the part number the tail object names.
    """

    def __init__(
        self, store: UploadObjects, upload_id: str, record: Record, layout: Layout
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
        self.staged: list[Part] = []

    @property
    def offset(self) -> int:
        return self.parts_end + len(self.buffer)

    @property
    def size(self) -> int | None:
        size = self.record.get("size")
        return int(size) if size is not None else None

    async def write(
        self, chunks: AsyncIterable[bytes], keep: Callable[[], bool] | None, idle: float
    ) -> int:
        """Pull the body from the stored offset; returns the upload's offset after it.

        `idle` is the first pause after which a stalled body's buffer is flushed as the tail.
        """
        await self.load_tail()
        self.provisional = keep is not None
        pause = None if keep is not None else idle
        try:
            async with contextlib.aclosing(_pulled(chunks, pause, self.flush_tail)) as pulled:
                async for chunk in pulled:
                    await self.add(chunk)
        finally:
            # Runs on a cut body, a cancelled task and an error alike: what arrived stays.
            end = await self.close(keep)
        return end

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
                self.staged.append(Part(self.next_part, count, ""))
            else:
                etag = await self._upload_part(view)
                self.parts[self.next_part] = Part(self.next_part, count, etag)
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
            Body=PartBody(view),
        )
        return str(done["ETag"])

    async def _put(self, key: str, view: memoryview, **extra: Any) -> None:
        s3 = await self.store.s3()
        await s3.put_object(Bucket=self.store.bucket, Key=key, Body=PartBody(view), **extra)

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
            self.parts[part.number] = Part(part.number, part.size, copied["CopyPartResult"]["ETag"])
        self.provisional = False

    async def settle(self) -> None:
        """Ship what is full, then complete the upload or save the rest as the tail."""
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
