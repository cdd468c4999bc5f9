"""The tus 1.0.0 front at /files/: core protocol plus creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination and concatenation.

Headers are parsed in `prepare`, so a bad request is a 4xx before any body is read; the
body then streams into the service through a `BodyStream`.
"""

from __future__ import annotations

from urllib.parse import urlparse

from tornado.web import stream_request_body

from formforge.core.checksum import Checksum, parse_upload_checksum
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.ids import is_valid_upload_id
from formforge.core.metadata import encode_metadata, parse_metadata
from formforge.core.model import ConcatRole, UploadInfo
from formforge.core.write_request import WriteRequest
from formforge.fronts.download import (
    DOWNLOAD_CACHE_CONTROL,
    content_disposition,
    content_type,
    entity_tag,
    is_fresh,
    parse_range,
)
from formforge.fronts.headers import has_body, http_date, media_type, require_id
from formforge.fronts.streaming import StreamingWriteHandler

TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
# What X-HTTP-Method-Override is for: clients that can only send GET and POST.
OVERRIDABLE = frozenset({"PATCH", "DELETE"})


def tus_extensions(can_terminate: bool, can_concatenate: bool) -> str:
    """Built from what the store really supports, so the header cannot drift."""
    names = ["creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum"]
    if can_terminate:
        names.append("termination")
    if can_concatenate:
        names.append("concatenation")
    return ",".join(names)


@stream_request_body
class TusHandler(StreamingWriteHandler):
    SUPPORTED_METHODS = ("OPTIONS", "HEAD", "GET", "POST", "PATCH", "DELETE")

    created: UploadInfo | None = None

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.clear_header("Content-Type")  # tus answers carry no body unless they say so
        self.set_header("Tus-Resumable", TUS_VERSION)

    def compute_etag(self) -> None:
        return None  # HEAD answers change with every PATCH; no caching, no ETag

    # -- request start: method override, version, headers, lock --------------------------

    async def prepare_body(self) -> None:
        override = self.request.headers.get("X-HTTP-Method-Override", "").upper()
        if self.request.method == "POST" and override in OVERRIDABLE:
            self.request.method = override
        if self.request.method in ("OPTIONS", "GET"):
            return
        if self.request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise UploadError(ErrorKind.UNSUPPORTED_VERSION, "Tus-Resumable must be 1.0.0")
        upload_id = self.path_kwargs.get("upload_id")
        if self.request.method == "PATCH" and upload_id:
            await self._start_patch(upload_id)
        elif self.request.method == "POST" and not upload_id:
            await self._start_creation()

    async def _start_patch(self, upload_id: str) -> None:
        if media_type(self.request.headers.get("Content-Type")) != OFFSET_TYPE:
            raise UploadError(
                ErrorKind.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be {OFFSET_TYPE}"
            )
        offset = self._header_int("Upload-Offset", required=True)
        assert offset is not None
        await self._start_write(upload_id, offset, length=self._header_int("Upload-Length"))

    async def _start_write(self, upload_id: str, offset: int, length: int | None) -> None:
        request = WriteRequest(
            upload_id, offset, length, self._header_int("Content-Length"), self._checksum()
        )
        await self.start_body_write(request, self.service.limits.max_size)

    def _checksum(self) -> Checksum | None:
        header = self.request.headers.get("Upload-Checksum")
        if header is None:
            return None
        return parse_upload_checksum(header, self.service.limits.checksum_algorithms)

    # -- creation --------------------------------------------------------------------------

    async def _start_creation(self) -> None:
        metadata = parse_metadata(
            self.request.headers.get("Upload-Metadata", ""), self.service.limits.max_metadata_bytes
        )
        concat = self.request.headers.get("Upload-Concat")
        if concat is not None and concat.startswith("final;"):
            # tus: the final upload is created from its parts; it takes no body.
            if "Upload-Length" in self.request.headers:
                raise UploadError(ErrorKind.BAD_REQUEST, "a final upload takes no Upload-Length")
            self.created = await self.service.create_final(
                _part_ids(concat[6:]), metadata, self.request_info()
            )
            return
        role = _concat_role(concat)
        size = self._creation_size()
        with_body = has_body(self.request.headers, self._header_int("Content-Length"))
        if with_body:
            self._check_creation_body(size)
        self.created = await self.service.create(size, metadata, role, self.request_info())
        if with_body:
            await self._start_write(self.created.id, 0, None)

    def _creation_size(self) -> int | None:
        defer = self.request.headers.get("Upload-Defer-Length")
        length = self._header_int("Upload-Length")
        if defer is not None and defer != "1":
            raise UploadError(ErrorKind.BAD_REQUEST, "Upload-Defer-Length must be 1")
        if (defer is None) == (length is None):
            raise UploadError(
                ErrorKind.BAD_REQUEST,
                "give exactly one of Upload-Length and Upload-Defer-Length: 1",
            )
        return length

    def _check_creation_body(self, size: int | None) -> None:
        """Everything that could refuse the body, checked before the upload is created."""
        if media_type(self.request.headers.get("Content-Type")) != OFFSET_TYPE:
            raise UploadError(
                ErrorKind.UNSUPPORTED_MEDIA_TYPE,
                f"a creation body needs Content-Type {OFFSET_TYPE}",
            )
        self._checksum()
        length = self._header_int("Content-Length")
        if size is not None and length is not None and length > size:
            raise UploadError(ErrorKind.SIZE_EXCEEDED, "the body goes past Upload-Length")

    # -- methods ---------------------------------------------------------------------------

    def options(self, upload_id: str | None = None) -> None:
        if self.is_preflight():
            self.answer_preflight()
            return
        limits = self.service.limits
        self.set_header("Tus-Version", TUS_VERSION)
        self.set_header(
            "Tus-Extension",
            tus_extensions(self.service.can_terminate, self.service.can_concatenate),
        )
        self.set_header("Tus-Max-Size", str(limits.max_size))
        self.set_header("Tus-Checksum-Algorithm", ",".join(limits.checksum_algorithms))
        self.set_status(204)

    async def post(self, upload_id: str | None = None) -> None:
        if upload_id:
            raise UploadError(ErrorKind.METHOD_NOT_ALLOWED, "POST goes to the creation URL")
        written = await self.finish_body_write()
        info = written or self.created
        assert info is not None
        self.set_header("Location", self.upload_url(info.id))
        if written is not None:
            self.set_header("Upload-Offset", str(written.offset))
        self._set_expires(info)
        self.set_status(201)

    async def head(self, upload_id: str | None = None) -> None:
        info = await self.service.get(require_id(upload_id))
        self.set_header("Cache-Control", "no-store")
        self.set_header("Upload-Offset", str(info.offset))
        if info.size is None:
            self.set_header("Upload-Defer-Length", "1")
        else:
            self.set_header("Upload-Length", str(info.size))
        if info.metadata:
            self.set_header("Upload-Metadata", encode_metadata(info.metadata))
        if info.concat is ConcatRole.PARTIAL:
            self.set_header("Upload-Concat", "partial")
        elif info.concat is ConcatRole.FINAL:
            self.set_header(
                "Upload-Concat",
                "final;" + " ".join(self.upload_url(part) for part in info.parts),
            )
        self._set_expires(info)
        self.set_status(200)

    async def patch(self, upload_id: str | None = None) -> None:
        if not upload_id:
            raise UploadError(ErrorKind.METHOD_NOT_ALLOWED, "PATCH goes to an upload's URL")
        info = await self.finish_body_write()
        assert info is not None
        self.set_header("Upload-Offset", str(info.offset))
        self._set_expires(info)
        self.set_status(204)

    async def delete(self, upload_id: str | None = None) -> None:
        await self.service.terminate(require_id(upload_id), self.request_info())
        self.set_status(204)

    async def get(self, upload_id: str | None = None) -> None:
        info, reader = await self.service.open_download(require_id(upload_id))
        assert info.size is not None
        etag = entity_tag(info)
        self.set_header("Cache-Control", DOWNLOAD_CACHE_CONTROL)
        self.set_header("ETag", etag)
        if is_fresh(self.request.headers.get("If-None-Match"), etag):
            self.set_status(304)
            return
        span = parse_range(self.request.headers.get("Range"), info.size)
        start, end = span or (0, info.size)
        mime = content_type(info)
        self.set_header("Content-Type", mime)
        self.set_header("Content-Disposition", content_disposition(info, mime))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Length", str(end - start))
        if span is not None:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{info.size}")
        async for chunk in reader.read(info.id, start, end):
            self.write(chunk)
            await self.flush()

    # -- helpers ---------------------------------------------------------------------------

    def render_error(self, error: UploadError) -> None:
        if error.kind is ErrorKind.UNSUPPORTED_VERSION:
            self.set_header("Tus-Version", TUS_VERSION)
        if error.kind is ErrorKind.RANGE_NOT_SATISFIABLE:
            self.set_header("Content-Range", f"bytes */{error.details.get('size', 0)}")
        if "offset" in error.details and error.kind is ErrorKind.OFFSET_MISMATCH:
            self.set_header("Upload-Offset", str(error.details["offset"]))
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{error.message}\n")

    def _header_int(self, name: str, *, required: bool = False) -> int | None:
        raw = self.request.headers.get(name)
        if raw is None:
            if required:
                raise UploadError(ErrorKind.BAD_REQUEST, f"{name} is missing")
            return None
        if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
            raise UploadError(ErrorKind.BAD_REQUEST, f"{name} must be a non-negative integer")
        return int(raw)

    def _set_expires(self, info: UploadInfo) -> None:
        expires = self.service.expires_at(info)
        if expires is not None:
            self.set_header("Upload-Expires", http_date(expires))


def _concat_role(header: str | None) -> ConcatRole | None:
    if header is None:
        return None
    if header.strip() == "partial":
        return ConcatRole.PARTIAL
    raise UploadError(ErrorKind.BAD_REQUEST, "Upload-Concat must be partial or final;<urls>")


def _part_ids(urls: str) -> list[str]:
    """`/files/a http://host/files/b c` -> ["a", "b", "c"]: each URL must name an upload of
    this endpoint (`.../files/<id>`, any host or prefix, as behind a proxy, or the bare id
    relative to /files/), nothing else."""
    ids = []
    for url in urls.split():
        if is_valid_upload_id(url):  # a relative reference: resolved against /files/
            ids.append(url)
            continue
        segments = urlparse(url).path.rstrip("/").split("/")
        if (
            len(segments) < 2
            or segments[-2] != "files"
            or segments.count("files") != 1
            or not is_valid_upload_id(segments[-1])
            or "," in url
            or ";" in url
        ):
            raise UploadError(ErrorKind.BAD_REQUEST, f"{url[:100]!r} is not an upload URL")
        ids.append(segments[-1])
    return ids
