"""Reading a slow body in fewer, larger pieces: the socket's receive low-water mark.

A phone on a thin link sends its body in small TCP segments. Tornado woke up, read and ran
its HTTP/1 body path (a future, a `data_received`, a store write) for each of them: 1,000
clients x 1 MiB at 32 KiB/s in 4 KiB writes cost FormForge 28 s of CPU, tusd 12 s (issue
13). With `SO_RCVLOWAT` the kernel reports the socket readable only once that many bytes
wait, so a slow body is read about once a second, about a second of its bytes at a time.

What this changes, and how each stays right:

- Progress: bytes are stored (and reported) once a second for a slow body, whatever
  `events.progress_interval_ms`; a body faster than `MAX_MARK` a second is read as before.
- Throughput: bytes held back below the mark fill the receive window, so the mark never
  takes more than half of it (`TCP_WINDOW_CLAMP`). A 64 KiB mark on a fresh connection's
  80 KiB window over a 150 ms link let the client send one window per round trip (about
  500 KiB/s) and kept the kernel from growing the window, which grows as the reader drains
  it: tuspy gave up on 50 MiB after 110 s in tests/system/test_lossy_network.py.
- The end of the body: the mark never exceeds what is left of it, so the last bytes are
  read as soon as they arrive, and it is 1 again before the next request's headers.
- Stall detection (idle time-out, take-over): bytes waiting in the kernel below the mark are
  not silence. `quiet_seconds` asks the kernel when data last arrived (TCP_INFO).
- A body stopped early (stalled, taken over, server stopping) first takes what waits in the
  kernel (`unread`), so it keeps every byte that reached the server, as before.

Tornado reads into a fresh buffer of `read_chunk_size` bytes per read, zeroed (1 MiB here:
`app.CHUNK_SIZE`); py-spy put 34 % of the slow-client samples on that one line. A slow
connection's reads are at most a mark's worth, so its buffer follows what it delivers.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from formforge.fronts.connection import BodyConnection

LOWAT_SECONDS = 1.0  # about one read a second per slow body
MIN_MARK = 1024  # below this the saving is small and the wait per read long
MAX_MARK = 64 * 1024  # faster bodies wake less than once per 64 KiB anyway
RATE_AFTER_SECONDS = 0.2  # a body's rate is measured after this long; the mark is 1 before
MIN_READ_SIZE = 4096  # a page
# struct tcp_info (linux/tcp.h): tcpi_last_data_recv, ms since data last arrived.
TCPI_LAST_DATA_RECV_OFFSET = 52
TCP_INFO_BYTES = 104


class LowWaterMark:
    """One streamed request body on one connection (`length` bytes, from Content-Length)."""

    def __init__(self, connection: BodyConnection, length: int, max_read_size: int) -> None:
        self._connection = connection
        self._socket = connection.raw_socket()
        self._left = length
        self._max_read_size = max_read_size
        self._mark = 1
        self._first_at: float | None = None
        self._since_first = 0
        self._window_asked_at = -LOWAT_SECONDS
        self._half_window_seen = 1

    def after_chunk(self, size: int) -> None:
        """The connection handed over `size` more bytes of the body: set the mark for the next
        read."""
        self._left -= size
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
        else:
            self._since_first += size
        self._connection.read_body_in(read_size_for(size, self._max_read_size))
        self._set_mark(self._next_mark(now))

    def release(self) -> None:
        """The body is over (or abandoned): read whatever arrives, as for any request."""
        self._set_mark(1)

    def quiet_seconds(self) -> float:
        """Seconds since the kernel last received bytes on this connection, read or not;
        0 while a read's worth waits in the kernel (the mark reached): a server that fell
        behind (its loop stalled for a second) must not take a client whose bytes are already
        here for a stalled one. Fewer bytes than the mark are a trickle that may have
        stopped: their arrival time counts."""
        try:
            if waiting_bytes(self._socket) >= self._mark:
                return 0.0
            info = self._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
        except OSError:  # closed: nothing arrives any more
            return float("inf")
        (milliseconds,) = struct.unpack_from("I", info, TCPI_LAST_DATA_RECV_OFFSET)
        return float(milliseconds) / 1000.0

    def unread(self) -> bytes:
        """The body's bytes waiting in the kernel, taken without waiting for the mark. Only
        while the connection waits for the socket: then everything read before was handed
        over and these bytes come next."""
        if self._left <= 0 or self._mark <= 1:
            return b""
        data = self._connection.receive_waiting(min(self._left, MAX_MARK))
        self._left -= len(data)
        return data

    def _next_mark(self, now: float) -> int:
        if self._left <= 0:
            return 1
        elapsed = now - (self._first_at or now)
        if elapsed < RATE_AFTER_SECONDS:
            return 1
        mark = mark_for_rate(self._since_first / elapsed)
        if mark > 1:
            mark = min(mark, self._left, self._half_window(now))
        return mark

    def _half_window(self, now: float) -> int:
        """Asked of the kernel at most once a `LOWAT_SECONDS`: the window grows over seconds,
        and a system call per read was 4 % of the samples of 1,000 slow uploads."""
        if now - self._window_asked_at < LOWAT_SECONDS:
            return self._half_window_seen
        try:
            window = self._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP)
        except OSError:  # closed meanwhile: the mark no longer matters
            return 1
        self._window_asked_at = now
        self._half_window_seen = max(1, floor_power_of_two(window // 2))
        return self._half_window_seen

    def _set_mark(self, mark: int) -> None:
        if mark == self._mark:
            return
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
        except OSError:  # closed meanwhile; nothing left to read
            return
        self._mark = mark


def mark_for_rate(bytes_per_second: float) -> int:
    """About `LOWAT_SECONDS` of the body, as a power of two (so it rarely changes) between
    `MIN_MARK` and `MAX_MARK`; 1 (every byte wakes the reader, as without a mark) for a body
    faster than `MAX_MARK` a second, which gains little from a mark and needs its window."""
    wanted = int(bytes_per_second * LOWAT_SECONDS)
    if wanted <= MIN_MARK:
        return MIN_MARK
    if wanted > MAX_MARK:
        return 1
    return floor_power_of_two(wanted)


def waiting_bytes(sock: socket.socket) -> int:
    """Bytes received and not yet read (FIONREAD, which is SIOCINQ for TCP)."""
    (count,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))
    return int(count)


def floor_power_of_two(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value > 0 else 0


def read_size_for(delivered: int, max_read_size: int) -> int:
    """Twice the last delivery, so a connection that sends faster grows back within a read
    or two (Tornado reads again at once while bytes are there). A 64 KiB floor still put
    6.4 % of the samples of 5,000 slow uploads on zeroing the buffer (py-spy)."""
    if delivered * 2 >= max_read_size:
        return max_read_size
    return max(MIN_READ_SIZE, 1 << (delivered * 2 - 1).bit_length())
