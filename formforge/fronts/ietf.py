"""The IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload) at /files/.

A request that carries `Upload-Draft-Interop-Version` is routed here (`ietf_routes`, placed
before the tus routes); every other request to /files/ stays with the tus front, and so do
downloads (GET). Both fronts call the same upload service: a draft upload has the same store,
lock, events, hooks and expiry as a tus one, and the same URL.

Interop versions (`ietf_interop.py`). Clients name the draft revision they speak; what
differs between the revisions is one row of `INTEROP`, read here, never tested by number.
A creation in a version we do not know is served as a plain, non-resumable upload (no 104,
the body is the whole file), which is what the draft asks of servers that do not take part;
other requests in an unknown version get 400.

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

104 interim responses. Tornado has no API for 1xx responses, so `InterimResponses` writes
them as raw bytes on the connection's IOStream (`HTTP1Connection.stream`):

- only to HTTP/1.1 requests of a known interop version (1xx must not go to HTTP/1.0, and the
  draft forbids 104 for a missing or other version); each carries the client's version;
- the first, with `Location` (and `Upload-Limit` where the version has it), as soon as the
  upload exists, still inside `prepare`: before any byte of the body is read, since Tornado
  reads the body (and answers `Expect: 100-continue`) only after `prepare`. If the write then
  cannot start (423, 503), the client already knows where to resume;
- progress ones, `Upload-Offset` only, where the version has them: a task wakes every
  `PROGRESS_INTERVAL_SECONDS`, and only if new bytes arrived asks the service for the upload's
  stored offset (what the store reports, so a later HEAD never says less) and sends it if it
  grew. Progress stops when the body ends;
- never interleaved with the final response. IOStream writes go out in the order they are
  queued and each 104 is one synchronous `write`, so the one rule is that no 104 may be queued
  after the final response's status line. Every final response (success or error) writes it
  in `flush`, which closes the gate first; the method handlers also close it as soon as the
  body is complete, and the progress task re-checks the gate after each await and is
  cancelled on close.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from email.message import Message
from email.utils import collapse_rfc2231_value
from http.client import responses
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.iostream import IOStream, StreamClosedError
from tornado.routing import PathMatches, Rule
from tornado.web import stream_request_body

from formforge.core.body import BodyStream
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.metadata import parse_metadata
from formforge.core.model import UploadInfo
from formforge.core.write_request import WriteRequest
from formforge.fronts.ietf_interop import (
    COMPLETED_UPLOAD,
    INCONSISTENT_LENGTH,
    INTEROP,
    LATEST,
    MISMATCHING_OFFSET,
    PROBLEM_BASE,
    PROBLEM_TITLES,
    Variant,
    sf_integer,
    variant_for,
)
from formforge.fronts.streaming import StreamingWriteHandler

log = logging.getLogger(__name__)

VERSION_FIELD = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"
INTERIM_STATUS_LINE = "HTTP/1.1 104 Upload Resumption Supported"
PROGRESS_INTERVAL_SECONDS = 0.25  # at most four progress 104s a second per request
CREATION_METHODS = frozenset({"POST", "PUT"})
# Content types that say nothing about the file: ours, or what a client adds when the app
# set none (Foundation's default for a request with a body).
NOT_FILE_TYPES = frozenset(
    {PARTIAL_UPLOAD, "application/offset+octet-stream", "application/x-www-form-urlencoded"}
)


# -- routing -------------------------------------------------------------------------------


class DraftRequests(PathMatches):
    """A /files/ path, for requests of the draft; GET (a download) stays with tus."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if VERSION_FIELD not in request.headers or request.method == "GET":
            return None
        return super().match(request)


def ietf_routes(patterns: Sequence[str], kwargs: dict[str, Any]) -> list[Rule]:
    """Rules for the route table, placed before the tus routes of the same patterns."""
    return [Rule(DraftRequests(pattern), IetfHandler, kwargs) for pattern in patterns]


# -- 104 interim responses -----------------------------------------------------------------


class InterimResponses:
    """`104 (Upload Resumption Supported)` responses on one HTTP/1.1 connection, until the
    final response starts (`close`). See the module docstring for why this is safe."""

    def __init__(self, stream: IOStream, version: int) -> None:
        self._stream = stream
        self._version = version
        self._open = True
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    def send(self, fields: Mapping[str, str]) -> bool:
        """Queue one interim response; False once closed (nothing is sent then)."""
        if not self._open or self._stream.closed():
            return False
        if any("\r" in value or "\n" in value for value in fields.values()):
            raise ValueError("a field value of an interim response spans lines")
        lines = [INTERIM_STATUS_LINE, f"{VERSION_FIELD}: {self._version}"]
        lines += [f"{name}: {value}" for name, value in fields.items()]
        try:
            self._stream.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except StreamClosedError:
            self._open = False
            return False
        self.sent += 1
        return True

    def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a task that sends interim responses; `close` cancels it."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """The final response owns the connection from now on."""
        self._open = False
        for task in list(self._tasks):
            task.cancel()


# -- the handler -----------------------------------------------------------------------------


@stream_request_body
class IetfHandler(StreamingWriteHandler):
    SUPPORTED_METHODS = ("OPTIONS", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    variant: Variant = LATEST
    interim: InterimResponses | None = None
    created: UploadInfo | None = None
    completes = False  # the request says it ends the upload
    length: int | None = None  # the upload length the request indicates
    provided_offset: int | None = None

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
            self.interim = InterimResponses(self.connection().stream, self.variant.version)
        if not upload_id and method in CREATION_METHODS:
            await self._start_creation()
        elif upload_id and method == "PATCH":
            await self._start_append(upload_id)
        elif upload_id and method in ("HEAD", "DELETE"):
            self._refuse_state_fields()

    async def _start_creation(self) -> None:
        self.completes = self.variant.completeness.requested(self.request.headers)
        self.length = self._indicated_length(0)
        self.created = await self.service.create(
            None, self._creation_metadata(), None, self.request_info(), intended_length=self.length
        )
        # Announced as soon as it exists: a client cut off from here on can resume.
        fields = {"Location": self.upload_url(self.created.id)}
        limit = self._upload_limit(self.created)
        if limit is not None:
            fields["Upload-Limit"] = limit
        if self.interim is not None:
            self.interim.send(fields)
        if self._has_body():
            await self._start_write(self.created.id, 0)

    async def _start_append(self, upload_id: str) -> None:
        media_type = _media_type(self.request.headers.get("Content-Type"))
        if self.variant.partial_upload_type and media_type != PARTIAL_UPLOAD:
            raise UploadError(
                ErrorKind.UNSUPPORTED_MEDIA_TYPE, f"an append needs Content-Type {PARTIAL_UPLOAD}"
            )
        self.provided_offset = sf_integer(self.request.headers.get("Upload-Offset"))
        if self.provided_offset is None:
            raise UploadError(ErrorKind.BAD_REQUEST, "Upload-Offset is missing or invalid")
        self.completes = self.variant.completeness.requested(self.request.headers)
        info = await self.service.get(upload_id)
        if info.is_complete:
            # Draft: never modify a complete upload; bytes for it are an inconsistent length.
            problem = INCONSISTENT_LENGTH if self._has_body() else COMPLETED_UPLOAD
            raise UploadError(ErrorKind.BAD_REQUEST, "the upload is complete", problem=problem)
        # The service checks under the lock that this agrees with the length said before.
        indicated = self._indicated_length(self.provided_offset)
        self.length = info.intended_length if indicated is None else indicated
        await self._start_write(upload_id, self.provided_offset)

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
        interim = self.interim
        if interim is not None and self.variant.progress_interim and self.body is not None:
            interim.run(self._report_progress(interim, upload_id, offset, self.body))

    async def _report_progress(
        self, interim: InterimResponses, upload_id: str, offset: int, body: BodyStream
    ) -> None:
        """Progress 104s while the body streams: the stored offset, when it grew."""
        seen = body.received
        while body.end is None:
            await asyncio.sleep(PROGRESS_INTERVAL_SECONDS)
            if body.received == seen:
                continue  # nothing new: no need to ask the store
            seen = body.received
            try:
                stored = (await self.service.get(upload_id)).offset
            except UploadError:
                return  # terminated or gone meanwhile; the final response says so
            if stored <= offset or body.end is not None:
                continue
            if not interim.send({"Upload-Offset": str(stored)}):
                return
            offset = stored

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
        upload_id = self._require_id(upload_id)
        try:
            info = await self.service.stop_writing(upload_id)
        except UploadError as error:
            if error.kind is not ErrorKind.UPLOAD_LOCKED:
                raise
            info = await self.service.get(upload_id)
        self.set_header("Cache-Control", "no-store")
        self._describe(info)
        self.set_status(204)

    async def delete(self, upload_id: str | None = None) -> None:
        # The service's forced lock take-over stops a write in flight, as the draft asks.
        await self.service.terminate(self._require_id(upload_id), self.request_info())
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
        if error.kind is ErrorKind.OFFSET_MISMATCH and "offset" in error.details:
            self.set_header("Upload-Offset", str(error.details["offset"]))
        limit = self._upload_limit(None)
        if error.kind is ErrorKind.SIZE_EXCEEDED and limit is not None:
            self.set_header("Upload-Limit", limit)
        self.set_header("Content-Type", "application/problem+json")
        self.finish(json.dumps(self._problem(error)))

    def _problem(self, error: UploadError) -> dict[str, Any]:
        """RFC 9457 problem details: the draft's type where this version defines one."""
        status = self.get_status()
        mismatch = error.kind is ErrorKind.OFFSET_MISMATCH
        name = error.details.get("problem") or _problem_name(error)
        problem: dict[str, Any] = {"type": "about:blank", "title": responses.get(status, "")}
        if name in self.variant.problem_types:
            problem = {"type": PROBLEM_BASE + name, "title": PROBLEM_TITLES[name]}
        problem.update(status=status, detail=error.message, code=error.kind.code)
        if mismatch:
            problem["expected-offset"] = error.details.get("offset")
            problem["provided-offset"] = self.provided_offset
        return problem

    # -- helpers ---------------------------------------------------------------------------

    def _indicated_length(self, offset: int) -> int | None:
        """The upload length this request indicates: `Upload-Length`, or the offset plus
        `Content-Length` of a request that completes the upload. Both must agree, with each
        other and with the body."""
        declared = sf_integer(self.request.headers.get("Upload-Length"))
        content_length = self._content_length()
        implied = None
        if self.completes and content_length is not None:
            implied = offset + content_length
        if declared is not None and implied is not None and declared != implied:
            raise _inconsistent(f"Upload-Length {declared} but the request ends at {implied}")
        length = implied if declared is None else declared
        if length is None:
            return None
        if length < offset + (content_length or 0):
            raise _inconsistent(f"the request goes past the upload length {length}")
        if length > self.service.limits.max_size:
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
        media_type = _media_type(headers.get("Content-Type"))
        if media_type and media_type not in NOT_FILE_TYPES:
            metadata.setdefault("filetype", media_type)
        filename = _filename(headers.get("Content-Disposition"))
        if filename:
            metadata.setdefault("filename", filename)
        return metadata

    def _content_length(self) -> int | None:
        raw = self.request.headers.get("Content-Length")
        return int(raw) if raw is not None and raw.isdigit() else None  # Tornado checked it

    def _has_body(self) -> bool:
        chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        return chunked or (self._content_length() or 0) > 0

    def _require_id(self, upload_id: str | None) -> str:
        if not upload_id:
            raise UploadError(ErrorKind.METHOD_NOT_ALLOWED, "this method needs an upload URL")
        return upload_id


def _problem_name(error: UploadError) -> str | None:
    """The draft's problem type for an error the service raised."""
    if error.kind is ErrorKind.OFFSET_MISMATCH:
        return MISMATCHING_OFFSET
    return INCONSISTENT_LENGTH if "intended_length" in error.details else None


def _inconsistent(message: str) -> UploadError:
    return UploadError(ErrorKind.BAD_REQUEST, message, problem=INCONSISTENT_LENGTH)


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def _filename(header: str | None) -> str | None:
    """The file name of a Content-Disposition: `filename*` (RFC 6266 prefers it), else
    `filename`."""
    if not header:
        return None
    message = Message()
    message["Content-Disposition"] = header
    params = message.get_params(header="content-disposition") or []
    names = [value for key, value in params if key == "filename" and value]
    names.sort(key=lambda value: not isinstance(value, tuple))  # the RFC 2231 form first
    if not names:
        return None
    return collapse_rfc2231_value(names[0]) or None
