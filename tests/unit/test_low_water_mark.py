"""The receive low-water mark a slow body's connection gets (`fronts/lowwater.py`).

Real connected TCP sockets on 127.0.0.1; the mark is read back from the kernel
(`SO_RCVLOWAT`). The clock is the test's, so a body's rate is exact.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream

from formforge.fronts import lowwater
from formforge.fronts.connection import TornadoConnection
from formforge.fronts.lowwater import LowWaterMark, mark_for_rate

KiB = 1024
MiB = 1024 * KiB


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(lowwater, "time", clock)
    return clock


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Both ends of a fresh loopback connection: the server's, then the client's."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                yield accepted, client


@pytest.fixture
def server_side(connection: tuple[socket.socket, socket.socket]) -> socket.socket:
    """The server's end of a fresh loopback connection."""
    return connection[0]


def mark_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def body_at(clock: Clock, sock: socket.socket, rate: int, length: int = 10 * MiB) -> None:
    """A body of `length` bytes arriving at `rate` bytes a second, a piece each 1/4 s, for
    2 s: long enough for its rate to be measured."""
    mark = LowWaterMark(on_tornado(sock), length, MiB)
    for _ in range(8):
        mark.after_chunk(rate // 4)
        clock.now += 0.25


@pytest.mark.gen_test
async def test_a_slow_body_is_read_about_once_a_second(
    clock: Clock, server_side: socket.socket
) -> None:
    body_at(clock, server_side, rate=32 * KiB)
    assert mark_of(server_side) == 32 * KiB


@pytest.mark.gen_test
async def test_a_body_faster_than_the_largest_mark_is_read_as_it_arrives(
    clock: Clock, server_side: socket.socket
) -> None:
    body_at(clock, server_side, rate=512 * KiB)
    assert mark_of(server_side) == 1


@pytest.mark.gen_test
async def test_the_mark_never_takes_more_than_half_the_receive_window(
    clock: Clock, server_side: socket.socket
) -> None:
    """Bytes held back below the mark fill the window: a mark near the window's size let a
    client over a 150 ms link send one window per round trip, and the window never grew."""
    server_side.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, 20 * KiB)
    body_at(clock, server_side, rate=60 * KiB)
    assert 1 < mark_of(server_side) <= 10 * KiB


@pytest.mark.gen_test
async def test_the_mark_never_waits_for_more_than_is_left_of_the_body(
    clock: Clock, server_side: socket.socket
) -> None:
    body_at(clock, server_side, rate=32 * KiB, length=8 * (32 * KiB // 4) + 3000)
    assert mark_of(server_side) == 3000


def test_marks_are_powers_of_two_between_the_bounds() -> None:
    assert mark_for_rate(100) == lowwater.MIN_MARK
    assert mark_for_rate(40 * KiB) == 32 * KiB
    assert mark_for_rate(64 * KiB) == 64 * KiB
    assert mark_for_rate(65 * KiB) == 1


@pytest.mark.gen_test
async def test_a_read_worth_waiting_in_the_kernel_is_never_silence(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    """A server that fell behind (its loop stalled) has not read what arrived: that client
    is not stalled, however long ago its bytes came. Once they are read, silence counts."""
    server, client = connection
    mark = LowWaterMark(on_tornado(server), 10 * MiB, MiB)
    client.sendall(b"x" * 1000)
    await asyncio.sleep(0.3)
    assert lowwater.waiting_bytes(server) == 1000
    assert mark.quiet_seconds() == 0.0
    server.recv(1000)
    assert mark.quiet_seconds() >= 0.25


@pytest.mark.gen_test
async def test_a_trickle_below_the_mark_that_stops_is_silence(
    clock: Clock, connection: tuple[socket.socket, socket.socket]
) -> None:
    """Bytes under the mark are not read until more come: if none do, the client has
    stalled, and the idle time-out must still see it."""
    server, client = connection
    mark = LowWaterMark(on_tornado(server), 10 * MiB, MiB)
    for _ in range(8):  # 32 KiB/s: the mark is 32 KiB
        mark.after_chunk(8 * KiB)
        clock.now += 0.25
    assert mark_of(server) == 32 * KiB
    client.sendall(b"x" * 1000)
    await asyncio.sleep(0.3)
    assert mark.quiet_seconds() >= 0.25


def on_tornado(sock: socket.socket) -> TornadoConnection:
    """The socket as Tornado's server connection has it."""
    return TornadoConnection(HTTP1Connection(IOStream(sock), is_client=False))
