"""One S3 bucket through aiobotocore: the client, S3's limits, and the object calls the S3
store's parts share (`s3.py` the store, `s3_writer.py` its writes, `s3_concat.py` its
concatenation).

The client is opened in the running loop on first use: `close()` it at shutdown. Checksums
of requests are left to S3's signature (`when_required`): many S3-compatible engines reject
the newer default checksum headers. An object or multipart upload that is not there answers
None, or nothing, rather than an error, where the callers expect that it may be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3: every part but the last
MAX_PART = 5 * 1024 * MIB
MAX_PARTS = 10_000
READ_CHUNK = MIB
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


@dataclass(frozen=True)
class Head:
    size: int
    modified: datetime
    part: int  # a tail's: the part number it will begin


class S3Bucket:
    """A bucket and the aiobotocore client that reaches it; it owns an HTTP connection pool.

    The underscored listings and HEAD are for the store built on it (and its tests).
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
        max_connections: int,
    ) -> None:
        self.bucket = bucket
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

    async def _head(self, key: str) -> Head | None:
        s3 = await self.s3()
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        part = head.get("Metadata", {}).get("part", "0")
        return Head(int(head["ContentLength"]), utc(head["LastModified"]), int(part))

    async def _objects(self, prefix: str) -> AsyncIterator[tuple[str, datetime]]:
        s3 = await self.s3()
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        async for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"]), utc(item["LastModified"])

    async def _multiparts(self, prefix: str) -> AsyncIterator[tuple[str, str, datetime]]:
        s3 = await self.s3()
        pages = s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        async for page in pages:
            for item in page.get("Uploads", []):
                yield str(item["Key"]), str(item["UploadId"]), utc(item["Initiated"])

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
            if not is_missing(error) or await self._head(key) is None:
                raise

    async def abort(self, key: str, multipart: str) -> None:
        s3 = await self.s3()
        try:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart)
        except ClientError as error:
            if not is_missing(error):
                raise

    async def delete(self, key: str) -> None:
        s3 = await self.s3()
        await s3.delete_object(Bucket=self.bucket, Key=key)  # a missing key is no error in S3


class PartBody(io.RawIOBase):
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


def is_missing(error: ClientError) -> bool:
    """The key, or the multipart upload, is not there (any more)."""
    return str(error.response.get("Error", {}).get("Code", "")) in _MISSING


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
