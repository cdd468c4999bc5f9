"""FormForge's HTTP/1.1 connection (formforge/http1/) under a small Tornado Application, on a
real loopback socket: what a client sees is what Tornado's own HTTP1Connection shows it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest
from tornado import web

from formforge.http1.connection import QUEUED_BYTES_LIMIT
from formforge.http1.listener import MAX_READ, Http1Listener
from formforge.http1.params import Http1Params

pytestmark = pytest.mark.unit

MiB = 1024 * 1024


class Echo(web.RequestHandler):
    def get(self) -> None:
        self.write({"path": self.request.path, "ip": self.request.remote_ip})

    def head(self) -> None:
        self.set_header("Content-Length", "5")

    def post(self) -> None:
        self.write({"length": len(self.request.body)})


@web.stream_request_body
class Streamed(web.RequestHandler):
    """Holds every piece of its body until the test lets it go."""

    SUPPORTED_METHODS = ("PUT", "POST")

    def initialize(self, state: dict[str, object]) -> None:
        self.state = state

    async def prepare(self) -> None:
        if self.request.headers.get("X-Refuse"):
            self.set_status(403)
            self.finish("no")

    async def data_received(self, chunk: bytes) -> None:
        pieces = self.state["pieces"]
        assert isinstance(pieces, list)
        pieces.append(len(chunk))
        gate = self.state["gate"]
        assert isinstance(gate, asyncio.Event)
        await gate.wait()

    def put(self) -> None:
        pieces = self.state["pieces"]
        assert isinstance(pieces, list)
        self.write({"received": sum(pieces)})

    post = put


class Chunky(web.RequestHandler):
    async def get(self) -> None:
        for part in (b"one", b"two"):
            self.write(part)
            await self.flush()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[int, dict[str, object], Http1Listener]]:
    state: dict[str, object] = {"pieces": [], "gate": asyncio.Event()}
    app = web.Application(
        [("/echo.*", Echo), ("/streamed", Streamed, {"state": state}), ("/chunky", Chunky)]
    )
    params = Http1Params(
        max_header_size=8192, max_body_size=16 * MiB, chunk_size=MiB, idle_timeout=1
    )
    listener = Http1Listener(app, params, backlog=16)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    await listener.add_sockets([sock])
    try:
        yield sock.getsockname()[1], state, listener
    finally:
        listener.stop()
        await asyncio.wait_for(listener.close_all_connections(), 5)


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)  # to the end: the server closes
    finally:
        writer.close()


def answers(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a stream of answers with Content-Length framing."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, raw[:length]))
        raw = raw[length:]
    return out


@pytest.mark.gen_test(timeout=30)
async def test_pipelined_requests_are_answered_one_after_another_in_order() -> None:
    async with serving() as (port, _, _):
        request = b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n"
        raw = await exchange(
            port,
            request % 1
            + request % 2
            + b"GET /echo/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        got = answers(raw)
        assert [json.loads(body)["path"] for _, _, body in got] == ["/echo/1", "/echo/2", "/echo/3"]
        assert [status for status, _, _ in got] == ["HTTP/1.1 200 OK"] * 3
        assert got[-1][1]["connection"] == "close"
        assert json.loads(got[0][2])["ip"] == "127.0.0.1"


@pytest.mark.gen_test(timeout=30)
async def test_http_1_0_without_keep_alive_is_closed_after_its_answer() -> None:
    async with serving() as (port, _, _):
        got = answers(await exchange(port, b"GET /echo HTTP/1.0\r\n\r\n"))
        assert [status for status, _, _ in got] == ["HTTP/1.1 200 OK"]


@pytest.mark.gen_test(timeout=30)
async def test_a_malformed_request_gets_a_json_400_and_the_connection_closes() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        ((status, headers, body),) = answers(raw)
        assert status == "HTTP/1.1 400 Bad Request"
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "bad-request"


@pytest.mark.gen_test(timeout=30)
async def test_a_request_without_host_is_refused_as_tornado_refuses_it() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(port, b"GET /echo HTTP/1.1\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")
        assert b"Missing Host header" in raw


@pytest.mark.gen_test(timeout=30)
async def test_a_header_block_over_the_bound_is_refused() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(
            port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 400 ")


@pytest.mark.gen_test(timeout=30)
async def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(
            port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nabc" % (16 * MiB + 1),
        )
        assert raw.startswith(b"HTTP/1.1 400 ")
        assert b"Content-Length too long" in raw


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_request_body_arrives_decoded() -> None:
    async with serving() as (port, _, _):
        body = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        raw = await exchange(
            port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + body,
        )
        assert json.loads(answers(raw)[0][2]) == {"length": 7}


@pytest.mark.gen_test(timeout=30)
async def test_an_answer_without_length_is_chunked_and_head_has_no_body() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(port, b"GET /chunky HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in raw
        assert raw.endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
        raw = await exchange(port, b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"Content-Length: 5\r\n" in raw
        assert raw.endswith(b"\r\n\r\n")  # and no body


@pytest.mark.gen_test(timeout=30)
async def test_expect_100_continue_is_answered_once_the_handler_took_the_headers() -> None:
    async with serving() as (port, state, _):
        gate = state["gate"]
        assert isinstance(gate, asyncio.Event)
        gate.set()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"PUT /streamed HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert (
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            == b"HTTP/1.1 100 (Continue)\r\n\r\n"
        )
        writer.write(b"abc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.close()
        # A handler that answers in `prepare` gets no 100, and the connection closes after it.
        refused = b"PUT /streamed HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Refuse: 1\r\n"
        raw = await exchange(port, refused + b"Expect: 100-continue\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 403 ")
        assert b"100 (Continue)" not in raw
        # ...and `exchange` read to the end: the connection closed after the answer.


@pytest.mark.gen_test(timeout=30)
async def test_a_busy_handler_holds_back_reading_so_the_rest_waits_in_the_kernel() -> None:
    """While `data_received`'s future is pending, the connection reads nothing more: one
    piece is handed over, at most a read's worth waits queued, the rest stays in the kernel."""
    async with serving() as (port, state, listener):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = 8 * MiB
        writer.write(b"PUT /streamed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sender = asyncio.ensure_future(_send(writer, size))
        await asyncio.sleep(0.5)
        pieces = state["pieces"]
        assert isinstance(pieces, list)
        assert len(pieces) == 1  # the one piece handed over, waiting for the handler
        (connection,) = listener._connections
        assert connection._reader.queued_bytes < QUEUED_BYTES_LIMIT + MAX_READ
        assert not sender.done()  # the client is held back by TCP: the server stopped reading
        gate = state["gate"]
        assert isinstance(gate, asyncio.Event)
        gate.set()
        await asyncio.wait_for(sender, 10)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.close()


async def _send(writer: asyncio.StreamWriter, size: int) -> None:
    piece = b"x" * MiB
    for _ in range(size // MiB):
        writer.write(piece)
        await writer.drain()


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_idle_between_requests_is_closed_after_the_time_out() -> None:
    async with serving() as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the 1 s time-out
        writer.close()
