"""One HTTP/1.1 connection: llhttp parses what the transport reads, Tornado's delegates serve.

The parser runs ahead of the application: it turns every read into events (a request's
headers, pieces of its body, its end) in a queue, and the queue is handed to Tornado's
delegate one event at a time, waiting where Tornado's own connection waits (a handler's
`prepare`, a `data_received` that returns a future, the answer to one request before the next
one starts). Reading pauses while the queue holds more than `QUEUED_BYTES_LIMIT`, so a busy
connection keeps at most that and one read in memory and the rest waits in the kernel.

What a client sees is what Tornado's HTTP1Connection does: keep-alive rules, `100 Continue`,
a 400 and a close for a malformed request or a body over the limit, `Connection: close` when
the answer came before the body was read, chunked answers without a Content-Length, the
idle time-out while waiting for a request's headers, and `detach` for websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado import httputil
from tornado.iostream import IOStream, StreamClosedError

from formforge.http1.message import BadRequest, Message, RequestContext, bad_request
from formforge.http1.params import ConnectionSet
from formforge.http1.reader import RequestReader

app_log = logging.getLogger("tornado.application")
gen_log = logging.getLogger("tornado.general")

QUEUED_BYTES_LIMIT = 64 * 1024
CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"


class Http1Connection(asyncio.BufferedProtocol, httputil.HTTPConnection):
    def __init__(self, listener: ConnectionSet) -> None:
        self._listener = listener
        self.params = listener.params
        self._transport: asyncio.Transport | None = None
        self._reader = RequestReader(self.params.max_header_size)
        self._waiting = False  # for a delegate's future or for an answer to finish
        self._pumping = False
        self._body_waiting = False
        self._reading_paused = False
        self._message: Message | None = None
        self._close_callback: Callable[[], None] | None = None
        self._write_waiters: list[asyncio.Future[None]] = []
        self._writing_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._detached = False
        self._socket: socket.socket | None = None
        self.context: RequestContext = RequestContext(None)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.context = RequestContext(transport.get_extra_info("peername"))
        self._listener.opened(self)
        self._start_idle_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._listener.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._listener.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            self._reader.feed(data)
        except BadRequest as error:
            self._refuse(error)
            return
        self._pump()

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed client sends no further request

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._socket is not None:
            self._socket.detach()  # the transport owned (and closed) the descriptor
        self._cancel_idle_timer()
        self._listener.closed(self)
        self.resume_writing()  # a writer waiting for room learns of the close on its next write
        if self._detached:
            return
        message, self._message = self._message, None
        if message is not None and not message.read_finished:
            with contextlib.suppress(BadRequest):
                self._call(message.delegate.on_connection_close)
        elif self._close_callback is not None:
            callback, self._close_callback = self._close_callback, None
            callback()
        self._reader.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # Handing events to Tornado's delegates

    def _pump(self) -> None:
        self._pumping = True
        try:
            self._pump_events()
        finally:
            self._pumping = False
        self._flow_control()

    def _pump_events(self) -> None:
        while self._reader.events and not self._waiting and not self._closed:
            if self._reader.events[0][0] == "headers" and self._message is not None:
                self._waiting = True  # the previous answer is not finished: wait for it
                return
            event = self._reader.next_event()
            try:
                if event[0] == "headers":
                    self._start_message(*event[1:])
                elif event[0] == "body":
                    self._deliver_body(event[1])
                else:
                    self._end_message()
            except BadRequest as error:
                self._refuse(error)
                return

    def _flow_control(self) -> None:
        if self._transport is None or self._closed or self._detached:
            return
        full = (
            self._body_waiting
            # Over, not at: a whole 64 KiB body waiting for its handler's `prepare` paused
            # and resumed the socket for every such PATCH (2 epoll changes per request).
            or self._reader.queued_bytes > QUEUED_BYTES_LIMIT
            or self._reader.upgrade_tail is not None
        )
        if full and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True
        elif not full and self._reading_paused:
            self._transport.resume_reading()
            self._reading_paused = False

    def _start_message(
        self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders, keep_alive: bool
    ) -> None:
        self._cancel_idle_timer()
        delegate = self._listener.delegate.start_request(self, self)
        message = self._message = Message(
            delegate, start_line, headers, keep_alive, self.params.max_body_size
        )
        self._wait_for(
            self._call(delegate.headers_received, start_line, headers),
            lambda: self._after_headers(message),
        )

    def _after_headers(self, message: Message) -> None:
        """What Tornado does once the delegate took the headers (and its `prepare` ran)."""
        if self._detached or self._closed:
            return
        if message.headers.get("Expect") == "100-continue" and not message.write_finished:
            self._write(CONTINUE)
        length = message.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > message.max_body_size:
            raise BadRequest("Content-Length too long")

    def _deliver_body(self, chunk: bytes) -> None:
        message = self._message
        if message is None or message.write_finished:
            return  # answered already: the rest of the body is not the handler's
        message.body_received += len(chunk)
        if message.body_received > message.max_body_size:
            raise BadRequest("body too large")
        self._wait_for(self._call(message.delegate.data_received, chunk), holds_body=True)

    def _end_message(self) -> None:
        message = self._message
        if message is None:
            return
        message.read_finished = True
        if not message.write_finished:
            self._call(message.delegate.finish)
        if message.done:
            self._finish_message(message)

    def _wait_for(
        self,
        result: Awaitable[None] | None,
        then: Callable[[], None] | None = None,
        holds_body: bool = False,
    ) -> None:
        """Hold the queue until the delegate's future resolves, then run `then`. While a
        body's piece waits (the store is busy), nothing more is read."""
        if result is None:
            if then is not None:
                then()
            return
        future = asyncio.ensure_future(result)
        if future.done():
            self._settled(future, then)
            return
        self._waiting = True
        self._body_waiting = holds_body
        future.add_done_callback(lambda done: self._resume(done, then))

    def _settled(self, future: asyncio.Future[None], then: Callable[[], None] | None) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._log_delegate_error(future.exception())
        elif then is not None:
            then()

    def _resume(self, future: asyncio.Future[None], then: Callable[[], None] | None) -> None:
        self._waiting = self._body_waiting = False
        try:
            self._settled(future, then)
        except BadRequest as error:
            self._refuse(error)
            return
        self._pump()

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        """A delegate's method; an exception is logged and the connection closed, as Tornado's
        own connection does."""
        try:
            return method(*args)
        except httputil.HTTPInputError as error:  # the request's fault (no Host, ...): a 400
            raise BadRequest(str(error)) from None
        except Exception as error:  # the application's error, logged here
            self._log_delegate_error(error)
            return None

    def _log_delegate_error(self, error: BaseException | None) -> None:
        app_log.error("Uncaught exception", exc_info=error)
        self.close()

    def _finish_message(self, message: Message) -> None:
        """The request is read and answered: close, or make way for the next one."""
        if self._message is not message:
            return
        self._message = None
        self._close_callback = None
        if message.disconnect_on_finish:
            self.close()
        elif self._reader.upgrade_tail is not None:
            # An Upgrade request: a websocket handler detaches right after its answer.
            asyncio.get_running_loop().call_soon(self._close_unless_detached)
        else:
            self._waiting = False
            if not self._reader.events:
                self._start_idle_timer()
            if not self._pumping:  # the next request starts once this handler is done
                asyncio.get_running_loop().call_soon(self._pump)

    def _close_unless_detached(self) -> None:
        if not self._detached:
            self.close()

    def _refuse(self, error: Exception) -> None:
        gen_log.info("Malformed HTTP message from %s: %s", self.context, error)
        message = self._message
        if message is None or not message.write_finished:
            self._write(bad_request(str(error)))
        self.close()

    # tornado.httputil.HTTPConnection

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        if self._message is not None:
            self._message.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        """Tornado's interface; FormForge's own idle time-out watches bodies instead."""

    def write_headers(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        assert isinstance(start_line, httputil.ResponseStartLine)
        message = self._message
        if message is None or self._closed:
            return self._write(b"")
        return self._write(self._framed(message.head, start_line, headers, chunk or b""))

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        message = self._message
        if message is None or self._closed:
            return self._write(b"")
        return self._write(self._framed(message.body, chunk))

    def finish(self) -> None:
        message = self._message
        if message is None or self._closed:
            return
        if end := self._framed(message.end):  # the last chunk of a chunked answer
            self._write(end)
        if message.disconnect_on_finish or message.read_finished:
            self._finish_message(message)

    def detach(self) -> IOStream:
        """The socket as a Tornado IOStream, for a websocket; no more HTTP on it."""
        assert self._transport is not None
        self._detached = True
        self._cancel_idle_timer()
        sock = self._transport.get_extra_info("socket")
        stream = IOStream(socket.socket(fileno=os.dup(sock.fileno())))
        self._transport.abort()  # its own descriptor only; the socket lives on in the stream
        return stream

    def _framed(self, frame: Callable[..., bytes], *args: Any) -> bytes:
        """An answer's bytes; a handler that writes past its Content-Length (or short of it)
        gets Tornado's error and the connection closes, so no client reads a broken frame."""
        try:
            return frame(*args)
        except httputil.HTTPOutputError:
            self.close()
            raise

    def _write(self, data: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed or self._transport is None or self._transport.is_closing():
            future.set_exception(StreamClosedError())
            future.exception()  # retrieved: nobody has to look
            return future
        self._transport.write(data)
        if self._writing_paused:
            self._write_waiters.append(future)
        else:
            future.set_result(None)
        return future

    # For the fronts (fronts/connection.py)

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()
            self._closed = True
            self._reader.clear()

    def closed(self) -> bool:
        return self._closed or self._transport is None or self._transport.is_closing()

    def raw_socket(self) -> socket.socket:
        """The connection's socket for its options. uvloop's own socket object builds a new
        `socket.socket` for every option read (4 % of the samples of 1,000 slow uploads):
        this one is built once, over the transport's descriptor, and let go of at the end."""
        if self._socket is None:
            assert self._transport is not None
            fd = self._transport.get_extra_info("socket").fileno()
            self._socket = socket.socket(fileno=fd)
        return self._socket

    def waiting_for_socket(self) -> bool:
        """Every byte read so far is handed over: the next ones are still in the kernel."""
        return not self._reader.events and not self._reading_paused and not self._closed

    def write_raw(self, data: bytes) -> bool:
        """Bytes outside any framing (an interim response); False once closed."""
        if self.closed():
            return False
        self._write(data)
        return True

    # The idle time-out between requests

    def _start_idle_timer(self) -> None:
        timeout = self.params.idle_timeout
        if timeout and self._idle_timer is None and not self._closed:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout, self.close)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
