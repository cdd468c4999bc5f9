"""A request id for every HTTP request: the client's or proxy's `X-Request-ID`, or a new one.

It is set, for the request's context, before the request is routed (so the 401 of the token
guard has one too), echoed in the `X-Request-ID` response header of every answer, stamped on
the log lines about the request (`formforge.logs`) and handed to hooks (`request.requestId`).
"""

from __future__ import annotations

import re

from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import OutputTransform

from formforge.core.ids import new_serial_id
from formforge.logs import REQUEST_ID

HEADER = "X-Request-ID"
# What we take from outside: visible ASCII only (no spaces, no controls: it goes into log
# lines and back into a header as is), and short; anything else is replaced, not trimmed.
_ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")


def choose_request_id(given: str | None) -> str:
    """The id a client or proxy sent, if it is acceptable; else a new, random one."""
    if given is not None and _ACCEPTED.fullmatch(given):
        return given
    return new_serial_id()


def assign_request_id(request: HTTPServerRequest) -> str:
    """Gives the request its id, for everything that runs in its context from now on.

    Called as the request is routed, in the connection's task: the handler's task, and every
    task it starts (writes, processing), copy the context and so see this id.
    """
    request_id = choose_request_id(request.headers.get(HEADER))
    REQUEST_ID.set(request_id)
    return request_id


class EchoRequestId(OutputTransform):
    """Puts `X-Request-ID` on every answer, whichever handler (static files, errors...) gave it.

    A transform, because it is the one hook Tornado applies to the output of every handler.
    """

    def __init__(self, request: HTTPServerRequest) -> None:
        super().__init__(request)
        self.request_id = REQUEST_ID.get()

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        if self.request_id is not None:
            headers[HEADER] = self.request_id
        return status_code, headers, chunk
