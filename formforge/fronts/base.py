"""What every HTTP front shares: collaborators, CORS, and the one place errors are rendered."""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from types import TracebackType
from typing import Any

import tornado
from tornado.httputil import HTTPHeaders
from tornado.web import HTTPError, RequestHandler

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.hooks import RequestInfo
from formforge.core.service import UploadService
from formforge.fronts.headers import http_date, upload_url
from formforge.fronts.throughput import Throughput
from formforge.logs import current_request_id

log = logging.getLogger(__name__)

ALLOWED_HEADERS = (
    "Authorization, Content-Type, Content-Range, Origin, X-Requested-With, X-Request-ID, "
    "X-HTTP-Method-Override, Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, "
    "Upload-Defer-Length, Upload-Concat, Upload-Checksum, Range"
)
EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Expires, Tus-Version, Tus-Resumable, Tus-Extension, Tus-Max-Size, "
    "Tus-Checksum-Algorithm, Content-Disposition, Content-Range, Accept-Ranges, X-Request-ID"
)
ALLOWED_METHODS = "POST, GET, HEAD, PATCH, PUT, DELETE, OPTIONS"

SERVER = f"TornadoServer/{tornado.version}"
_REASONS = {460: "Checksum Mismatch", 499: "Client Closed Request"}


class FrontHandler(RequestHandler):
    """Base of the fronts' handlers; `initialize` receives the collaborators (no globals)."""

    initialized = False

    def initialize(
        self,
        service: UploadService,
        throughput: Throughput,
        public_url: str | None,
        prefix: str,
        cors_origins: tuple[str, ...],
    ) -> None:
        self.service = service
        self.throughput = throughput
        self.public_url = public_url
        self.prefix = prefix  # where FormForge's routes are mounted: '' or '/a/b'
        self.cors_origins = cors_origins
        self.initialized = True
        self.set_default_headers()  # which needs the collaborators: see `clear`

    def clear(self) -> None:
        """Tornado's own `clear`, with the `Date` formatted once a second instead of once per
        answer (tests/unit/test_front_handler.py holds the two to the same result)."""
        self._headers = HTTPHeaders(
            {
                "Server": SERVER,
                "Content-Type": "text/html; charset=UTF-8",
                "Date": http_date(time.time()),
            }
        )
        # Tornado's __init__ clears before `initialize` has given the headers' inputs (the
        # CORS origins): `initialize` sets them then, once, instead of twice a request.
        if self.initialized:
            self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self) -> None:
        """Also re-applied when an error clears the headers."""
        # Upload state changes with every request (offsets, a deletion): no cache may keep an
        # answer of ours. Downloads, the one exception, say their own (fronts/download.py).
        self.set_header("Cache-Control", "no-store")
        origins = getattr(self, "cors_origins", ())
        origin = self.request.headers.get("Origin")
        if origin and ("*" in origins or origin in origins):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
            self.add_header("Vary", "Origin")

    def is_preflight(self) -> bool:
        return (
            self.request.method == "OPTIONS"
            and "Access-Control-Request-Method" in self.request.headers
        )

    def answer_preflight(self) -> None:
        self.set_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
        self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)

    def request_info(self) -> RequestInfo:
        """The client request, as hooks see it."""
        return RequestInfo(dict(self.request.headers), self.client_address(), current_request_id())

    def client_address(self) -> str:
        """Who sent the request, as far as this server can tell (the peer's address)."""
        return self.request.remote_ip or ""

    def base_url(self) -> str:
        """Where clients reach FormForge's routes: the public URL (or the request's own
        scheme and host) followed by the prefix FormForge is mounted under."""
        if self.public_url:
            return self.public_url.rstrip("/") + self.prefix
        return f"{self.request.protocol}://{self.request.host}{self.prefix}"

    def upload_url(self, upload_id: str) -> str:
        """The upload's URL: tus and the IETF draft at it, and its download."""
        return upload_url(self.base_url(), upload_id)

    # -- errors --------------------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        value = exc_info[1] if exc_info else None
        if isinstance(value, UploadError):
            self.set_status(value.status, _REASONS.get(value.status))
            if "retry_after" in value.details:
                self.set_header("Retry-After", str(value.details["retry_after"]))
            self.render_error(value)
        else:  # Tornado's own (405, a malformed request, a body over the limit) or a bug
            self.render_error(_from_status(status_code, value))

    def render_error(self, error: UploadError) -> None:
        """How this front shows an error; the status is already set."""
        raise NotImplementedError

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(value, UploadError):
            upload_id = self.path_kwargs.get("upload_id")
            log.info(
                "%s %s -> %d %s: %s%s",
                self.request.method,
                self.request.path,
                value.status,
                value.kind.code,
                value.message,
                f" upload_id={upload_id}" if upload_id else "",  # a field of JSON log lines
            )
        else:
            super().log_exception(typ, value, tb)


def _from_status(status: int, value: BaseException | None) -> UploadError:
    kind = next((kind for kind in ErrorKind if kind.status == status), None)
    if kind is None:
        kind = ErrorKind.BAD_REQUEST if 400 <= status < 500 else ErrorKind.INTERNAL
    if isinstance(value, HTTPError) and value.log_message and status < 500:
        return UploadError(kind, value.log_message % value.args)
    try:
        return UploadError(kind, HTTPStatus(status).phrase)
    except ValueError:
        return UploadError(kind, "error")
