"""The Application that checks bearer tokens before routing, so no handler can forget to."""

from __future__ import annotations

from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import Rule
from tornado.web import Application, RequestHandler, _HandlerDelegate, stream_request_body

from formforge.auth import TokenCheck
from formforge.core.errors import ErrorKind
from formforge.fronts.connection import connection_of
from formforge.fronts.request_id import EchoRequestId, assign_request_id
from formforge.wire import error_body


class GuardedApplication(Application):
    def __init__(
        self, routes: list[Rule | tuple[Any, ...]], tokens: TokenCheck, **settings: Any
    ) -> None:
        super().__init__(routes, **settings)
        self.tokens = tokens
        self.add_transform(EchoRequestId)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> _HandlerDelegate:
        assign_request_id(request)  # first: a refused request has an id too
        # Right after the header read, before the loop runs again (`fronts/readahead.py`).
        connection_of(request).between_bodies()
        # Routing first (it runs nothing): a handler that checks a token of its own (a
        # hook's progress URL) needs no bearer token.
        delegate = super().find_handler(request, **kwargs)
        if (
            self.tokens.enabled
            and not self.tokens.exempts(request)
            and not getattr(delegate.handler_class, "checks_its_own_token", False)
            and not (self.tokens.allows_header(request.headers.get("Authorization")))
        ):
            return self.get_handler_delegate(request, UnauthorizedHandler)
        return delegate


@stream_request_body  # so it answers right after the headers, before any body is read
class UnauthorizedHandler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Bearer realm="formforge"')
        self.set_header("Connection", "close")
        self.set_header("Cache-Control", "no-store")
        app = self.application
        prefix = app.tokens.prefix if isinstance(app, GuardedApplication) else ""
        if self.request.path.startswith(f"{prefix}/files"):  # a tus client's answer
            self.set_header("Tus-Resumable", "1.0.0")
        message = "a valid 'Authorization: Bearer <token>' header is required"
        self.finish(error_body(ErrorKind.UNAUTHORIZED, message))
