"""Concatenation in S3: a final upload made of the partial objects, copied server-side.

The partial objects are copied server-side (UploadPartCopy), in ranges of at most 1 GiB. A
partial (or its rest) below 5 MiB cannot be a part of its own unless it is last: such bytes
are downloaded and topped up to exactly 5 MiB from the next partial's head, then uploaded
as one part, so at most 5 MiB pass through memory. Any failure aborts the multipart upload:
the final object exists only once it is whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from formforge.core.errors import ErrorKind, UploadError
from formforge.stores.s3.bucket import MAX_PARTS, MIB, MIN_PART, READ_CHUNK, PartBody, S3Bucket

COPY_RANGE = 1024 * MIB  # the largest range one UploadPartCopy moves


@dataclass
class Concatenation:
    """A final upload made of the partial objects, as the parts S3 allows (module doc).

    `store` is any S3 bucket the partials are in; the final object is `key` in it.
    """

    store: S3Bucket
    key: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    small: list[tuple[str, int, int]] = field(default_factory=list)  # to download
    small_size: int = 0
    multipart: str = ""

    async def run(self, sources: Sequence[tuple[str, int]]) -> None:
        """Make `key` of the `(key, size)` sources, in order; complete on return."""
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
                Body=PartBody(view),
            )
        self._added(done["ETag"])
        self.small, self.small_size = [], 0

    def _number(self) -> int:
        if len(self.parts) >= MAX_PARTS:
            raise UploadError(ErrorKind.SIZE_EXCEEDED, "the parts need more than 10,000 S3 parts")
        return len(self.parts) + 1

    def _added(self, etag: object) -> None:
        self.parts.append({"PartNumber": len(self.parts) + 1, "ETag": str(etag)})
