"""What the fronts need of the connection a request came on, the same for both kinds:
FormForge's own (`formforge/http1/`, what `formforge serve` runs) and Tornado's
`HTTP1Connection` (a host application's `HTTPServer`: README, "In your own Tornado app")."""

from __future__ import annotations

import abc
import socket
from typing import Protocol

from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamClosedError

from formforge.fronts import readahead
from formforge.http1.connection import Http1Connection


class _Wire(Protocol):
    """What both kinds of connection have under the same names."""

    def set_max_body_size(self, max_body_size: int) -> None: ...

    def close(self) -> None: ...


class BodyConnection(abc.ABC):
    def __init__(self, wire: _Wire, chunk_size: int) -> None:
        self._wire = wire
        self.chunk_size = chunk_size  # the largest piece a body is handed over in

    def set_max_body_size(self, max_body_size: int) -> None:
        self._wire.set_max_body_size(max_body_size)

    def close(self) -> None:
        self._wire.close()

    @abc.abstractmethod
    def closed(self) -> bool: ...

    @abc.abstractmethod
    def raw_socket(self) -> socket.socket:
        """The connection's socket, for its options (`fronts/lowwater.py`)."""

    @abc.abstractmethod
    def waiting_for_socket(self) -> bool:
        """Every byte read so far is handed over: the next ones are still in the kernel."""

    @abc.abstractmethod
    def write_raw(self, data: bytes) -> bool:
        """Bytes outside the answer's framing (an interim response); False once closed."""

    def receive_waiting(self, limit: int) -> bytes:
        """Up to `limit` bytes waiting in the kernel, without waiting; only while
        `waiting_for_socket` (else they would come before bytes read already)."""
        if not self.waiting_for_socket():
            return b""
        try:
            return self.raw_socket().recv(limit, socket.MSG_DONTWAIT)
        except OSError:  # nothing there, or the connection is gone
            return b""

    @abc.abstractmethod
    def read_body_in(self, size: int) -> None:
        """A body streams: read it about `size` bytes at a time."""

    @abc.abstractmethod
    def between_bodies(self) -> None:
        """The headers are in, or a body is over."""


def connection_of(request: HTTPServerRequest) -> BodyConnection:
    connection = request.connection
    if isinstance(connection, Http1Connection):
        return OwnConnection(connection)
    assert isinstance(connection, HTTP1Connection)  # the only other kind Tornado's server makes
    return TornadoConnection(connection)


class OwnConnection(BodyConnection):
    """FormForge's connection reads through one shared buffer and holds back at most a read:
    it has no read sizes to set."""

    _wire: Http1Connection

    def __init__(self, connection: Http1Connection) -> None:
        super().__init__(connection, connection.params.chunk_size)

    def closed(self) -> bool:
        return self._wire.closed()

    def raw_socket(self) -> socket.socket:
        return self._wire.raw_socket()

    def waiting_for_socket(self) -> bool:
        return self._wire.waiting_for_socket()

    def write_raw(self, data: bytes) -> bool:
        return self._wire.write_raw(data)

    def read_body_in(self, size: int) -> None:
        pass  # each read is what the kernel has, up to the loop's one shared buffer

    def between_bodies(self) -> None:
        pass


class TornadoConnection(BodyConnection):
    _wire: HTTP1Connection

    def __init__(self, connection: HTTP1Connection) -> None:
        super().__init__(connection, connection.params.chunk_size)

    def closed(self) -> bool:
        stream = self._wire.stream
        return stream is None or stream.closed()

    def raw_socket(self) -> socket.socket:
        return self._wire.stream.socket

    def waiting_for_socket(self) -> bool:
        # Tornado's buffer is empty while it waits for the socket.
        return bool(self._wire.stream.reading())

    def read_body_in(self, size: int) -> None:
        readahead.for_body(self._wire.stream, size)

    def between_bodies(self) -> None:
        readahead.between_bodies(self._wire.stream)

    def write_raw(self, data: bytes) -> bool:
        try:
            self._wire.stream.write(data)
        except StreamClosedError:
            return False
        return True
