"""The JSON REST front at /api/files/upload: the same service, store, locks and events as tus.

`Content-Range: bytes START-END/TOTAL` says where a chunk goes; a retry of a range that was
already received is answered 200 without storing it twice.
"""

from __future__ import annotations

import json
import re

from tornado.web import stream_request_body

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.metadata import is_text
from formforge.core.model import UploadInfo
from formforge.core.write_request import WriteRequest
from formforge.fronts.base import FrontHandler
from formforge.fronts.connection import connection_of
from formforge.fronts.streaming import StreamingWriteHandler
from formforge.wire import error_body, iso, status_payload

MAX_JSON_BYTES = 64 * 1024  # a creation document; metadata has its own, smaller limit
DRAIN_LIMIT = 16 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d{1,20})-(\d{1,20})/(\d{1,20}|\*)")


class RestFront(FrontHandler):
    def render_error(self, error: UploadError) -> None:
        extra = {"offset": error.details["offset"]} if "offset" in error.details else {}
        self.finish(error_body(error.kind, error.message, **extra))

    def options(self, upload_id: str | None = None) -> None:
        self.answer_preflight()

    def chunk_size(self) -> int:
        """What this client should send per request, after how fast its bodies came so far."""
        return self.throughput.chunk_size(self.client_address())

    def urls(self, upload_id: str) -> dict[str, str]:
        base = self.base_url()
        return {
            "uploadUrl": f"{base}/api/files/upload/{upload_id}",
            "tusUrl": self.upload_url(upload_id),
        }


@stream_request_body  # so an oversized body is refused with JSON, not by Tornado's limit
class RestCreateHandler(RestFront):
    """POST /api/files/upload with a small JSON body."""

    def prepare(self) -> None:
        self.document = bytearray()
        self.too_big = False
        # Read (and drop) a body up to this size, so its sender gets the 413 and no reset.
        connection_of(self.request).set_max_body_size(DRAIN_LIMIT)

    def data_received(self, chunk: bytes) -> None:
        if self.too_big or len(self.document) + len(chunk) > MAX_JSON_BYTES:
            self.too_big = True
            self.document.clear()
            return
        self.document += chunk

    async def post(self) -> None:
        if self.too_big:
            raise UploadError(
                ErrorKind.SIZE_EXCEEDED, f"the JSON body is larger than {MAX_JSON_BYTES} bytes"
            )
        size, metadata = _parse_creation(bytes(self.document))
        info = await self.service.create(size, metadata, request=self.request_info())
        urls = self.urls(info.id)
        self.set_status(201)
        self.set_header("Location", urls["uploadUrl"])
        self.finish(
            {
                "uploadId": info.id,
                **urls,
                "offset": info.offset,
                "size": info.size,
                "chunkSize": self.chunk_size(),
                "expiresAt": iso(self.service.expires_at(info)),
            }
        )


@stream_request_body
class RestUploadHandler(StreamingWriteHandler, RestFront):
    """PUT/PATCH a chunk (streamed), GET the status, DELETE the upload."""

    already_received: UploadInfo | None = None

    async def prepare_body(self) -> None:
        if self.request.method not in ("PUT", "PATCH"):
            return
        upload_id = self.path_kwargs["upload_id"]
        start, end, total = _parse_content_range(self.request.headers.get("Content-Range"))
        length = end - start
        if self.request.headers.get("Content-Length") != str(length):
            raise UploadError(
                ErrorKind.BAD_REQUEST, "Content-Length must be the length of the Content-Range"
            )
        info = await self.service.get(upload_id)
        if total is not None and info.size is not None and total != info.size:
            raise UploadError(
                ErrorKind.BAD_REQUEST, f"the upload's size is {info.size}, not {total}"
            )
        if length > 0 and end <= info.offset:
            self.already_received = info  # a retry: answer 200 and drop the body
            return
        await self.start_body_write(WriteRequest(upload_id, start, total, length), length)

    async def put(self, upload_id: str) -> None:
        info = self.already_received or await self.finish_body_write()
        assert info is not None
        self.finish(
            {
                "uploadId": info.id,
                "offset": info.offset,
                "size": info.size,
                "complete": info.is_complete,
                "chunkSize": self.chunk_size(),  # this chunk's pace is already in it
            }
        )

    patch = put

    async def get(self, upload_id: str) -> None:
        info = await self.service.status(upload_id)
        processing = self.service.processor.progress.status(info.id)
        self.finish(status_payload(info, self.service.expires_at(info), processing))

    async def delete(self, upload_id: str) -> None:
        await self.service.terminate(upload_id, self.request_info())
        self.set_status(204)


def _parse_content_range(header: str | None) -> tuple[int, int, int | None]:
    """`bytes START-END/TOTAL` -> [start, end) and the total (None for `*`)."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if match is None:
        raise UploadError(
            ErrorKind.BAD_REQUEST, "Content-Range must be 'bytes START-END/TOTAL' (TOTAL may be *)"
        )
    start, last, total = int(match[1]), int(match[2]), match[3]
    size = None if total == "*" else int(total)
    if last < start or (size is not None and last >= size):
        raise UploadError(ErrorKind.BAD_REQUEST, "Content-Range is not a range inside TOTAL")
    return start, last + 1, size


def _parse_creation(raw: bytes) -> tuple[int | None, dict[str, str]]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise UploadError(ErrorKind.BAD_REQUEST, "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise UploadError(ErrorKind.BAD_REQUEST, "the body must be a JSON object")
    filename, size = document.get("filename"), document.get("size")
    mime, extra = document.get("mimeType"), document.get("metadata", {})
    if not isinstance(filename, str) or not filename or len(filename) > 1024:
        raise UploadError(ErrorKind.BAD_REQUEST, "filename must be a non-empty string")
    if size is not None and (type(size) is not int or size < 0):
        raise UploadError(ErrorKind.BAD_REQUEST, "size must be a non-negative integer or null")
    if mime is not None and not isinstance(mime, str):
        raise UploadError(ErrorKind.BAD_REQUEST, "mimeType must be a string")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise UploadError(ErrorKind.BAD_REQUEST, "metadata must map strings to strings")
    # JSON strings are text: one with a lone surrogate (`"\\udcff"`) names no bytes.
    if not all(map(is_text, [filename, mime or "", *extra, *extra.values()])):
        raise UploadError(ErrorKind.INVALID_METADATA, "metadata must be Unicode text")
    metadata = {**extra, "filename": filename}
    if mime:
        metadata["filetype"] = mime
    return size, metadata
