"""One request on a connection and the framing of its answer, as Tornado's HTTP1Connection
frames it: keep-alive and `Connection` headers, chunked answers without a Content-Length,
no body for HEAD, 1xx, 204 and 304, and no more or fewer bytes than a Content-Length says."""

from __future__ import annotations

import json
from typing import Any

from tornado import httputil

from formforge.core.errors import ErrorKind
from formforge.wire import error_body


class BadRequest(Exception):
    """The client's request is malformed or over a limit: a 400, then the connection closes."""


def bad_request(reason: str) -> bytes:
    """The answer to a request that is not valid HTTP/1.1 (or over a limit)."""
    body = json.dumps(error_body(ErrorKind.BAD_REQUEST, f"malformed request: {reason}"))
    return (
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode("latin-1")


class RequestContext:
    """`HTTPServerRequest` reads `remote_ip` and `protocol` from here."""

    protocol = "http"

    def __init__(self, peer: Any) -> None:
        self.address = peer
        self.remote_ip = peer[0] if isinstance(peer, tuple) and peer else "0.0.0.0"

    def __str__(self) -> str:
        return str(self.remote_ip)


class Message:
    def __init__(
        self,
        delegate: httputil.HTTPMessageDelegate,
        start_line: httputil.RequestStartLine,
        headers: httputil.HTTPHeaders,
        keep_alive: bool,
        max_body_size: int,
    ) -> None:
        self.delegate = delegate
        self.start_line = start_line
        self.headers = headers
        self.disconnect_on_finish = not keep_alive
        self.max_body_size = max_body_size
        self.body_received = 0
        self.read_finished = False
        self.write_finished = False
        self._chunking = False
        self._expected_remaining: int | None = None

    @property
    def done(self) -> bool:
        return self.read_finished and self.write_finished

    def head(
        self, start_line: httputil.ResponseStartLine, headers: httputil.HTTPHeaders, chunk: bytes
    ) -> bytes:
        """The status line and headers (and a first piece of the body)."""
        request, code = self.start_line, start_line.code
        self._chunking = (
            request.version == "HTTP/1.1"
            and request.method != "HEAD"
            and code not in (204, 304)
            and not 100 <= code < 200
            and "Content-Length" not in headers
        )
        # 101: the connection goes on as a websocket, whatever keep-alive said.
        if request.version == "HTTP/1.1" and self.disconnect_on_finish and code != 101:
            headers["Connection"] = "close"
        if request.version == "HTTP/1.0" and self.headers.get("Connection", "").lower() == (
            "keep-alive"
        ):
            headers["Connection"] = "Keep-Alive"
        if self._chunking:
            headers["Transfer-Encoding"] = "chunked"
        if request.method == "HEAD" or code == 304:
            self._expected_remaining = 0
        elif "Content-Length" in headers:
            self._expected_remaining = int(headers["Content-Length"])
        else:
            self._expected_remaining = None
        lines = [f"HTTP/1.1 {code} {start_line.reason}".encode("latin-1")]
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in headers.get_all())
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise ValueError(f"Illegal characters (CR or LF) in header: {line!r}")
        return b"\r\n".join(lines) + b"\r\n\r\n" + (self.body(chunk) if chunk else b"")

    def body(self, chunk: bytes) -> bytes:
        if self._expected_remaining is not None:
            self._expected_remaining -= len(chunk)
            if self._expected_remaining < 0:
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self._chunking and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def end(self) -> bytes:
        """The end of the answer. One that came before the whole body was read closes the
        connection after it: that is the only way not to read the rest."""
        if self._expected_remaining not in (None, 0):
            raise httputil.HTTPOutputError(
                f"Tried to write {self._expected_remaining} bytes less than Content-Length"
            )
        self.write_finished = True
        if not self.read_finished:
            self.disconnect_on_finish = True
        return b"0\r\n\r\n" if self._chunking else b""
