"""What the fronts need of the connection a request came on, the same for both kinds:
FormForge's own (`formforge/http1/`, what `formforge serve` runs) and Tornado's
`HTTP1Connection` (a host application's `HTTPServer`, `docs/embedding.md`)."""

from __future__ import annotations

import socket
from typing import Any, Protocol

from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamClosedError

from formforge.fronts import readahead
from formforge.http1.connection import Http1Connection


class BodyConnection(Protocol):
    def set_max_body_size(self, max_body_size: int) -> None: ...

    def close(self) -> None: ...

    def closed(self) -> bool: ...

    def raw_socket(self) -> Any:
        """The connection's socket, for its options (`fronts/lowwater.py`)."""

    def waiting_for_socket(self) -> bool:
        """Every byte read so far is handed over: the next ones are still in the kernel."""

    def receive_waiting(self, limit: int) -> bytes:
        """Up to `limit` bytes waiting in the kernel, without waiting; only while
        `waiting_for_socket`."""

    def read_body_in(self, size: int) -> None:
        """A body streams: read it about `size` bytes at a time."""

    def between_bodies(self) -> None:
        """The headers are in, or a body is over."""

    def write_raw(self, data: bytes) -> bool:
        """Bytes outside the answer's framing (an interim response); False once closed."""

    @property
    def chunk_size(self) -> int:
        """The largest piece a body is handed over in."""


def connection_of(request: HTTPServerRequest) -> BodyConnection:
    connection = request.connection
    if isinstance(connection, Http1Connection):
        return OwnConnection(connection)
    assert isinstance(connection, HTTP1Connection)  # the only other kind Tornado's server makes
    return TornadoConnection(connection)


class OwnConnection:
    """FormForge's connection reads through one shared buffer and holds back at most a read:
    it has no read sizes to set."""

    def __init__(self, connection: Http1Connection) -> None:
        self._connection = connection
        self.chunk_size = connection.params.chunk_size

    def set_max_body_size(self, max_body_size: int) -> None:
        self._connection.set_max_body_size(max_body_size)

    def close(self) -> None:
        self._connection.close()

    def closed(self) -> bool:
        return self._connection.closed()

    def raw_socket(self) -> Any:
        return self._connection.raw_socket()

    def waiting_for_socket(self) -> bool:
        return self._connection.waiting_for_socket()

    def receive_waiting(self, limit: int) -> bytes:
        if not self.waiting_for_socket():
            return b""
        # The transport's socket object cannot recv: a second object over the descriptor can.
        sock = socket.socket(fileno=self.raw_socket().fileno())
        try:
            return sock.recv(limit, socket.MSG_DONTWAIT)
        except OSError:
            return b""
        finally:
            sock.detach()  # the transport owns the descriptor

    def read_body_in(self, size: int) -> None:
        pass

    def between_bodies(self) -> None:
        pass

    def write_raw(self, data: bytes) -> bool:
        return self._connection.write_raw(data)


class TornadoConnection:
    def __init__(self, connection: HTTP1Connection) -> None:
        self._connection = connection
        self.chunk_size = connection.params.chunk_size

    def set_max_body_size(self, max_body_size: int) -> None:
        self._connection.set_max_body_size(max_body_size)

    def close(self) -> None:
        self._connection.close()

    def closed(self) -> bool:
        stream = self._connection.stream
        return stream is None or stream.closed()

    def raw_socket(self) -> Any:
        return self._connection.stream.socket

    def waiting_for_socket(self) -> bool:
        # Tornado's buffer is empty while it waits for the socket.
        return bool(self._connection.stream.reading())

    def receive_waiting(self, limit: int) -> bytes:
        if not self.waiting_for_socket():
            return b""
        try:
            return bytes(self._connection.stream.socket.recv(limit, socket.MSG_DONTWAIT))
        except OSError:
            return b""

    def read_body_in(self, size: int) -> None:
        readahead.for_body(self._connection.stream, size)

    def between_bodies(self) -> None:
        readahead.between_bodies(self._connection.stream)

    def write_raw(self, data: bytes) -> bool:
        try:
            self._connection.stream.write(data)
        except StreamClosedError:
            return False
        return True
