"""The draft's requests at /files/: creation, offset retrieval, append, cancellation, OPTIONS.

Completion. An upload is complete only once a request that says so (`Upload-Complete: ?1`,
`Upload-Incomplete: ?0` in version 3) had its body end normally. Uploads are created with a
deferred length, and the length (= the offset reached) is declared through the service only
at that point, by a zero-byte write that carries it. A body that is cut, stalls or is taken
over never gets there: its bytes stay, the upload stays incomplete, and HEAD says
`Upload-Complete: ?0`.

Length. The length a request indicates (`Upload-Length`, or the offset plus `Content-Length`
of a request that completes the upload) is recorded as the upload's intended length, not its
size: "The offset could match the length, but the upload can still be incomplete", and the
service completes an upload whose offset reaches its size. Later requests must agree with
it and cannot go past it (400, inconsistent length), it caps their bodies, and HEAD reports
it as `Upload-Length`.

Concurrency. A new append or HEAD stops a request still writing to the upload, even one still
receiving bytes (the draft's recommended approach; see `head`): what it received stays. The
tus front stops only a stalled one, and answers 423 otherwise, which draft clients do not retry.

Interim responses (`interim.py`): the first 104, with `Location` (and `Upload-Limit` where the
version has it), goes out as soon as the upload exists, still inside `prepare`: before any
byte of the body is read, since Tornado reads the body (and answers `Expect: 100-continue`,
which the draft says a 104 must not replace) only after `prepare`. If the write then cannot
start (423, 503), the client already knows where to resume. Every final response (success or
error) is written in `flush`, which closes the interim gate first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from tornado.web import stream_request_body

from formforge.core.body import BodyStream
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.metadata import parse_metadata
from formforge.core.model import UploadInfo
from formforge.core.write_request import WriteRequest
from formforge.fronts.headers import (
    disposition_filename,
    has_body,
    media_type,
    require_id,
)
from formforge.fronts.ietf.interim import (
    VERSION_FIELD,
    InterimResponses,
    ProgressRelay,
    relay_progress,
)
from formforge.fronts.ietf.interop import INTEROP, LATEST, Variant, sf_integer, variant_for
from formforge.fronts.ietf.problems import (
    COMPLETED_UPLOAD,
    INCONSISTENT_LENGTH,
    inconsistent,
    problem_document,
)
from formforge.fronts.streaming import StreamingWriteHandler

log = logging.getLogger(__name__)

PARTIAL_UPLOAD = "application/partial-upload"
CREATION_METHODS = frozenset({"POST", "PUT"})
# Content types that say nothing about the file: ours, or what a client adds when the app
# set none (Foundation's default for a request with a body).
NOT_FILE_TYPES = frozenset(
    {PARTIAL_UPLOAD, "application/offset+octet-stream", "application/x-www-form-urlencoded"}
)


@stream_request_body
class IetfHandler(StreamingWriteHandler):
    SUPPORTED_METHODS = ("OPTIONS", "HEAD", "GET", "POST", "PUT", "PATCH", "DELETE")

    variant: Variant = LATEST
    interim: InterimResponses | None = None
    created: UploadInfo | None = None
    completes = False  # the request says it ends the upload
    length: int | None = None  # the upload length the request indicates
    provided_offset: int | None = None

    def initialize(  # type: ignore[override]  # the fronts' collaborators, and the relay
        self, progress: ProgressRelay, **front: Any
    ) -> None:
        super().initialize(**front)
        self.progress = progress

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.clear_header("Content-Type")  # no body unless an answer says so

    def compute_etag(self) -> None:
        return None  # HEAD answers change with every append

    # -- request start: version, headers, upload, write, first 104 -------------------------

    async def prepare_body(self) -> None:
        self.variant = variant_for(self.request.headers.get(VERSION_FIELD))
        method, upload_id = self.request.method, self.path_kwargs.get("upload_id")
        if method == "OPTIONS":
            return
        if self.variant.version is None and (upload_id or method not in CREATION_METHODS):
            versions = ", ".join(map(str, INTEROP))
            raise UploadError(ErrorKind.BAD_REQUEST, f"{VERSION_FIELD} must be one of {versions}")
        if self.variant.version is not None and self.request.version == "HTTP/1.1":
            self.interim = InterimResponses(self.connection(), self.variant.version)
        if not upload_id and method in CREATION_METHODS:
            await self._start_creation()
        elif upload_id and method == "PATCH":
            await self._start_append(upload_id)
        elif upload_id and method in ("HEAD", "GET", "DELETE"):
            self._refuse_state_fields()

    async def _start_creation(self) -> None:
        self.completes = self.variant.completeness.requested(self.request.headers)
        self.length = self._indicated_length(0, creating=True)
        self.created = await self.service.create(
            None, self._creation_metadata(), None, self.request_info(), intended_length=self.length
        )
        # Announced as soon as it exists: a client cut off from here on can resume.
        # Draft: the 104 "MUST include `Location` ... and MUST include the `Upload-Limit`
        # header field with the corresponding limits ... if existing".
        fields = {"Location": self.upload_url(self.created.id)}
        limit = self._upload_limit(self.created)
        if limit is not None:
            fields["Upload-Limit"] = limit
        if self.interim is not None:
            self.interim.send(fields)
        if has_body(self.request.headers, self._content_length()):
            await self._start_write(self.created.id, 0)

    async def _start_append(self, upload_id: str) -> None:
        headers = self.request.headers
        if self.variant.partial_upload_type and media_type(headers.get("Content-Type")) != (
            PARTIAL_UPLOAD
        ):
            raise UploadError(
                ErrorKind.UNSUPPORTED_MEDIA_TYPE, f"an append needs Content-Type {PARTIAL_UPLOAD}"
            )
        self.provided_offset = sf_integer(headers.get("Upload-Offset"))
        if self.provided_offset is None:
            raise UploadError(ErrorKind.BAD_REQUEST, "Upload-Offset is missing or invalid")
        self._require_completeness()
        self.completes = self.variant.completeness.requested(headers)
        info = await self.service.get(upload_id)
        if info.is_complete:
            # Draft: never modify a complete upload; bytes for it are an inconsistent length.
            with_body = has_body(headers, self._content_length())
            problem = INCONSISTENT_LENGTH if with_body else COMPLETED_UPLOAD
            raise UploadError(ErrorKind.BAD_REQUEST, "the upload is complete", problem=problem)
        # The service checks under the lock that this agrees with the length said before.
        indicated = self._indicated_length(self.provided_offset, creating=False)
        self.length = info.intended_length if indicated is None else indicated
        await self._start_write(upload_id, self.provided_offset)

    def _require_completeness(self) -> None:
        """Interop 10: "The request MUST include the `Upload-Complete` header field"."""
        completeness = self.variant.completeness
        missing = completeness.value(self.request.headers) is None
        if self.variant.append_needs_completeness and completeness.header and missing:
            raise UploadError(
                ErrorKind.BAD_REQUEST, f"an append needs {completeness.header}: ?0 or ?1"
            )

    async def _start_write(self, upload_id: str, offset: int) -> None:
        request = WriteRequest(
            upload_id,
            offset,
            content_length=self._content_length(),
            intended_length=self.length,
            take_over=True,  # see `head`
        )
        # The body may not take the upload past its indicated length, or past max_size.
        limit = self.service.limits.max_size if self.length is None else self.length
        await self.start_body_write(request, max(limit - offset, 0))
        if self.interim is not None and self.variant.progress_interim:
            relay_progress(self.progress, self.interim, upload_id, offset)

    def _refuse_state_fields(self) -> None:
        if not self.variant.strict_state_fields:
            return
        names = ("Upload-Offset", self.variant.completeness.header, "Upload-Length")
        present = [name for name in names if name and name in self.request.headers]
        if present:
            raise UploadError(
                ErrorKind.BAD_REQUEST, f"{self.request.method} takes no {', '.join(present)}"
            )

    # -- methods ---------------------------------------------------------------------------

    def options(self, upload_id: str | None = None) -> None:
        if self.is_preflight():
            self.answer_preflight()
            return
        # Draft: "the server MUST include the `Accept-Patch` header field"; Upload-Limit
        # "SHOULD be included ... if limits apply" (required here from interop 9 on).
        if self.variant.partial_upload_type:
            self.set_header("Accept-Patch", PARTIAL_UPLOAD)
        limit = self._upload_limit(None)
        if limit is not None:
            self.set_header("Upload-Limit", limit)
        self.set_status(204)

    async def post(self, upload_id: str | None = None) -> None:
        if upload_id:
            raise UploadError(ErrorKind.METHOD_NOT_ALLOWED, "an upload is created at /files/")
        info = await self._finish_request()
        self.set_header("Location", self.upload_url(info.id))
        self._describe(info)
        self.set_status(201)

    async def put(self, upload_id: str | None = None) -> None:
        await self.post(upload_id)

    async def patch(self, upload_id: str | None = None) -> None:
        if not upload_id:
            raise UploadError(ErrorKind.METHOD_NOT_ALLOWED, "PATCH goes to an upload's URL")
        info = await self._finish_request()
        self._describe(info)
        self.set_status(self.variant.append_status)

    async def head(self, upload_id: str | None = None) -> None:
        # Draft: a new offset retrieval or append while an earlier request is "still ongoing":
        # "the server SHOULD ... [terminate] the previous request before processing the new
        # request" (a client asks anew only once it gave up on that one), and the offset sent
        # "MUST be accepted in a subsequent request to append". If the earlier request does
        # not let go in time, say what is stored rather than 423, which clients do not retry.
        upload_id = require_id(upload_id)
        try:
            info = await self.service.stop_writing(upload_id)
        except UploadError as error:
            if error.kind is not ErrorKind.UPLOAD_LOCKED:
                raise
            info = await self.service.get(upload_id)
        self.set_header("Cache-Control", "no-store")
        self._describe(info)
        self.set_status(204)

    async def get(self, upload_id: str | None = None) -> None:
        # Routed here only in versions where GET retrieves the offset (see `routes`).
        await self.head(upload_id)

    async def delete(self, upload_id: str | None = None) -> None:
        # The service's forced lock take-over stops a write in flight, as the draft asks.
        await self.service.terminate(require_id(upload_id), self.request_info())
        self._say_incomplete()
        self.set_status(204)

    # -- request end -----------------------------------------------------------------------

    async def _finish_request(self) -> UploadInfo:
        """The whole body arrived: no more interim responses; store it, complete if asked."""
        self._close_interim()
        info = await self.finish_body_write() or self.created
        assert info is not None  # a creation made one, an append always writes
        return await self._complete(info) if self.completes else info

    async def _complete(self, info: UploadInfo) -> UploadInfo:
        """Declare the length (the offset reached) and finish the upload, through the
        service's deferred-length write of zero bytes, under the upload's lock. The service
        refuses it if the upload's intended length is another."""
        if info.is_complete:
            return info
        body = BodyStream(self.settings["idle_timeout_seconds"], self._drop_connection)
        body.finish()
        declare = WriteRequest(info.id, info.offset, length=info.offset, content_length=0)
        return await (await self.service.start_write(declare, body))

    def flush(self, include_footers: bool = False) -> asyncio.Future[None]:
        self._close_interim()  # the final response starts here, whichever way it comes
        return super().flush(include_footers)

    def on_connection_close(self) -> None:
        self._close_interim()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._close_interim()

    def _close_interim(self) -> None:
        if self.interim is not None:
            self.interim.close()
            log.debug("interim closed path=%s sent=%d", self.request.path, self.interim.sent)
            self.interim = None

    # -- answers ---------------------------------------------------------------------------

    def _describe(self, info: UploadInfo) -> None:
        """The upload's state, as final responses and HEAD report it."""
        self.set_header("Upload-Offset", str(info.offset))
        field = self.variant.completeness.field(info.is_complete)
        if field is not None:
            self.set_header(*field)
        length = info.intended_length if info.size is None else info.size
        if length is not None:
            self.set_header("Upload-Length", str(length))
        limit = self._upload_limit(info)
        if limit is not None:
            self.set_header("Upload-Limit", limit)

    def _say_incomplete(self) -> None:
        """This request did not complete the upload (from interop 7: -08's general rule;
        -12 names the 409 for a wrong offset)."""
        field = self.variant.completeness.field(False)
        if self.variant.incomplete_on_refusal and field is not None:
            self.set_header(*field)

    def _upload_limit(self, info: UploadInfo | None) -> str | None:
        """`Upload-Limit` where the version has it: max-size, and the remaining lifetime of
        `info` (of a new upload when None; none once complete)."""
        key = self.variant.lifetime_limit
        if key is None:
            return None
        limits = [f"max-size={self.service.limits.max_size}"]
        if info is None:
            limits.append(f"{key}={int(self.service.limits.unfinished_ttl_seconds)}")
        elif (expires := self.service.expires_at(info)) is not None:
            seconds = int((expires - datetime.now(UTC)).total_seconds())
            limits.append(f"{key}={max(seconds, 0)}")
        return ", ".join(limits)

    def render_error(self, error: UploadError) -> None:
        if error.kind in (ErrorKind.TERMINATED, ErrorKind.EXPIRED):
            self.set_status(404)  # draft: an upload resource that is not active is a 404
        # Draft: the 409 "MUST include the correct offset in the `Upload-Offset` header field".
        if error.kind is ErrorKind.OFFSET_MISMATCH and "offset" in error.details:
            self.set_header("Upload-Offset", str(error.details["offset"]))
        # Draft: a 413 "as a result of its upload limits MUST include the Upload-Limit header".
        limit = self._upload_limit(None)
        if error.kind is ErrorKind.SIZE_EXCEEDED and limit is not None:
            self.set_header("Upload-Limit", limit)
        self._say_incomplete()
        self.set_header("Content-Type", "application/problem+json")
        problem = problem_document(
            error, self.get_status(), self.variant.problem_types, self.provided_offset
        )
        self.finish(json.dumps(problem))

    # -- helpers ---------------------------------------------------------------------------

    def _indicated_length(self, offset: int, *, creating: bool) -> int | None:
        """The upload length this request indicates: `Upload-Length`, or the offset plus
        `Content-Length` of a request that completes the upload. Both must agree, with each
        other and with the body. An append's length is checked against max_size by the
        service, which tells the upload's room when it refuses it."""
        declared = sf_integer(self.request.headers.get("Upload-Length"))
        content_length = self._content_length()
        implied = None
        if self.completes and content_length is not None:
            implied = offset + content_length
        if declared is not None and implied is not None and declared != implied:
            raise inconsistent(f"Upload-Length {declared} but the request ends at {implied}")
        length = implied if declared is None else declared
        if length is None:
            return None
        if length < offset + (content_length or 0):
            raise inconsistent(f"the request goes past the upload length {length}")
        if creating and length > self.service.limits.max_size:
            raise UploadError(
                ErrorKind.SIZE_EXCEEDED, f"the upload is larger than {self.service.limits.max_size}"
            )
        return length

    def _creation_metadata(self) -> dict[str, str]:
        """Upload-Metadata (tus-js-client sends it), else what the representation says."""
        headers = self.request.headers
        metadata = parse_metadata(
            headers.get("Upload-Metadata", ""), self.service.limits.max_metadata_bytes
        )
        file_type = media_type(headers.get("Content-Type"))
        if file_type and file_type not in NOT_FILE_TYPES:
            metadata.setdefault("filetype", file_type)
        filename = disposition_filename(headers.get("Content-Disposition"))
        if filename:
            metadata.setdefault("filename", filename)
        return metadata

    def _content_length(self) -> int | None:
        raw = self.request.headers.get("Content-Length")
        return int(raw) if raw is not None and raw.isdigit() else None  # Tornado checked it
