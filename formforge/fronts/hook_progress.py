"""POST /hooks/progress/{token}: a post-finish HTTP hook reports how far its work got.

The hook found the URL as `progressUrl` in its JSON. The token in the path stands for that
one hook call and dies with it, so it is the request's only authorization (with
`auth.bearer_tokens` too). The body is `{"percent": 0-100 or null, "message": "..."}`;
what it says is checked and clamped by the core, and the answer is `204`.
"""

from __future__ import annotations

import json
import logging
from types import TracebackType

from tornado.web import stream_request_body

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.hooks import HookProgress
from formforge.fronts.connection import connection_of
from formforge.fronts.rest import RestFront

log = logging.getLogger(__name__)

HOOK_PROGRESS_PATH = "/hooks/progress/"  # under FormForge's prefix
MAX_REPORT_BYTES = 16 * 1024
DRAIN_LIMIT = 1024 * 1024  # read (and drop) up to this much, so the sender gets its 413


@stream_request_body  # never buffer what an unauthenticated sender sends
class HookProgressHandler(RestFront):
    checks_its_own_token = True  # the guard lets it through: its token is in the path

    def prepare(self) -> None:
        self.body_bytes = bytearray()
        self.too_big = False
        connection_of(self.request).set_max_body_size(DRAIN_LIMIT)

    def data_received(self, chunk: bytes) -> None:
        if self.too_big or len(self.body_bytes) + len(chunk) > MAX_REPORT_BYTES:
            self.too_big = True
            self.body_bytes.clear()
            return
        self.body_bytes += chunk

    def post(self, token: str) -> None:
        report = self._report(token)
        if self.too_big:
            raise UploadError(
                ErrorKind.SIZE_EXCEEDED, f"a report is at most {MAX_REPORT_BYTES} bytes"
            )
        fields = _parse(bytes(self.body_bytes))
        report.report(fields.get("percent", fields.get("progress")), fields.get("message"))
        self.set_status(204)

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(value, UploadError):  # one line, without the path: it holds the token
            log.info("hook progress refused status=%d error=%s", value.status, value.kind.code)
        else:
            super().log_exception(typ, value, tb)

    def _report(self, token: str) -> HookProgress:
        report = self.service.processor.progress.by_token(token)
        if report is None:
            raise UploadError(
                ErrorKind.NOT_FOUND, "no hook call is running under this token (it ended?)"
            )
        return report


def _parse(raw: bytes) -> dict[str, object]:
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError):
        raise UploadError(ErrorKind.BAD_REQUEST, "the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise UploadError(ErrorKind.BAD_REQUEST, "the body must be a JSON object")
    return fields
