"""What Tornado reads of a busy connection's body (`fronts/readahead.py`).

A real Tornado server on 127.0.0.1, in this process, and a client socket. The client sends a
request's headers and the first bytes of its body; the handler takes them and then holds the
body back, as the store does while it writes. The client then fills the kernel's buffers in
one go, and the server's loop runs: what its stream reads now is what one busy connection
holds in memory beside the chunk being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, stream_request_body

from formforge.fronts.readahead import between_bodies

KiB = 1024
MiB = 1024 * KiB
READ_SIZE = 16 * KiB  # Tornado's read_chunk_size here
HEADER_BOUND = 1 * MiB  # max_header_size: how far Tornado reads ahead while it is not cleared
BODY = 16 * MiB
FIRST = 1 * KiB


class Holder:
    """The server side, as the test sees it: the stream, and the body held back."""

    def __init__(self, clear_bound: bool) -> None:
        self.clear_bound = clear_bound
        self.stream: IOStream | None = None
        self.delivered = 0
        self.held = asyncio.get_running_loop().create_future()


def handler_for(holder: Holder) -> type[RequestHandler]:
    @stream_request_body
    class HoldingHandler(RequestHandler):
        def prepare(self) -> None:
            connection = self.request.connection
            assert isinstance(connection, HTTP1Connection)
            stream = holder.stream = connection.stream
            if holder.clear_bound:
                between_bodies(stream)
                stream.read_chunk_size = READ_SIZE

        def data_received(self, chunk: bytes) -> Any:
            holder.delivered += len(chunk)
            return holder.held  # the store is busy with the first chunk for good

        def put(self) -> None:
            self.set_status(204)

    return HoldingHandler


@contextlib.asynccontextmanager
async def server_for(holder: Holder) -> AsyncIterator[int]:
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(
        Application([(r"/", handler_for(holder))]),
        chunk_size=READ_SIZE,
        max_header_size=HEADER_BOUND,
    )
    server.add_sockets(sockets)
    try:
        yield sockets[0].getsockname()[1]
    finally:
        server.stop()
        if holder.stream is not None:
            holder.stream.close()


async def buffered_while_held(holder: Holder, port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as client:
        head = f"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n".encode()
        client.sendall(head)
        await asyncio.sleep(0.1)  # the server waits on the socket for the body, as for a phone
        client.sendall(b"x" * FIRST)
        deadline = time.monotonic() + 5
        while not holder.delivered and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert holder.delivered == FIRST, "the handler did not get the first bytes alone"
        # Fill the kernel's buffers while the server's loop cannot run, then let it run.
        client.setblocking(False)
        sent = FIRST
        try:
            while sent < BODY:
                sent += client.send(b"x" * min(64 * KiB, BODY - sent))
        except BlockingIOError:
            pass
        assert sent < BODY, "the kernel buffered the whole body"
        await asyncio.sleep(0.3)
        assert holder.stream is not None
        return holder.stream._read_buffer_size  # what this test is about


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("clear_bound", [False, True])
async def test_a_busy_connection_is_read_at_most_one_read_ahead(clear_bound: bool) -> None:
    holder = Holder(clear_bound)
    async with server_for(holder) as port:
        buffered = await buffered_while_held(holder, port)
    if clear_bound:
        assert buffered <= READ_SIZE
    else:
        # Tornado as it is: it reads ahead to the header bound. When this fails, Tornado
        # clears the bound itself and `between_bodies` need not.
        assert buffered >= HEADER_BOUND
