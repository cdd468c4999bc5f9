"""Interrupted uploads against a real `formforge serve` process, over raw sockets.

CONTRACT.md, tus at /files/:
- "Bytes that reached the server are never lost: if a PATCH is cut off mid-body, what
  arrived is kept and the next HEAD reports it in Upload-Offset, also after the server
  process is killed and restarted."
- "One writer at a time, and no client locked out by its own dead connection."
- "SIGTERM/SIGINT: stop accepting, persist what in-flight requests already received,
  exit 0 within a few seconds."
- server.idle_timeout_seconds: "a body that stalls this long is cut; its bytes are kept".

Every request is HTTP/1.1 written by hand on a socket to 127.0.0.1, so a test can send part
of a body and then fall silent, close (FIN), reset (RST), or have the server killed under
it. Every wait polls with a deadline. The only sleeps pace a sender or *are* the scenario
(a client that says nothing for a while); none waits for the server to get somewhere.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow

KiB = 1024
MiB = 1024 * KiB
TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
IO_TIMEOUT = 10.0  # seconds, for any one socket operation of ours
POLL_DEADLINE = 5.0  # seconds, for the server to show what it received
POLL_INTERVAL = 0.01
AT_ONCE = 0.5  # seconds: "HEAD never waits for a lock", "409/423 at once"
STALL = 1.2  # seconds of client silence: past the contract's "about a second"
TAKEOVER = 1.0  # "the new request proceeds within a second"
SLACK = 0.5  # scheduling slack on top of a contract's time


# ============================================================ cut mid-body: FIN and RST


def close_with_fin(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def close_with_rst(sock: socket.socket) -> None:
    # An RST throws away what is still in our own send queue: those bytes never reached the
    # server. Reset only once its TCP has acknowledged every byte sent.
    wait_until(lambda: unacknowledged_bytes(sock) == 0, "the server's TCP to take our bytes")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("cut", [close_with_fin, close_with_rst], ids=["fin", "rst"])
def test_a_patch_cut_mid_body_keeps_exactly_the_bytes_sent(
    start_server: Any, cut: Callable[[socket.socket], None]
) -> None:
    server = start_server()
    source = os.urandom(1 * MiB)
    sent = 300 * KiB + 7
    url = create(server, len(source))

    sock = open_patch(url, 0, len(source))
    try:
        sock.sendall(source[:sent])
    finally:
        cut(sock)

    assert wait_for_offset(url, sent) == sent
    # The client is not locked out by its own dead connection: it resumes at once.
    assert_patch_finishes(url, sent, source)
    assert download_sha256(url) == sha256(source)


# ============================================================ SIGKILL mid-body, restart


def test_a_server_killed_mid_patch_keeps_what_it_wrote_and_resumes(
    start_server: Any, tmp_path: Path
) -> None:
    server = start_server()
    source = random_file(tmp_path / "source.bin", 200 * MiB)
    size = source.stat().st_size
    url = create(server, size)

    sender = BodySender(url, 0, size, file_chunks(source, 0, 1 * MiB))
    sender.start()
    try:
        wait_for_offset(url, lambda offset: offset >= 16 * MiB, deadline=30.0)
        server.kill()
    finally:
        sender.finish()
    assert sender.response is None, f"the PATCH ended before the kill: {sender.response}"

    server.restart()
    kept = offset_of(url)
    assert 0 < kept <= sender.sent, f"kept {kept} of {sender.sent} bytes sent"
    assert kept < size
    response = patch_from_file(url, kept, source)
    assert (response.status, response.headers.get("upload-offset")) == (204, str(size))
    assert download_sha256(url) == file_sha256(source)
    # 400 MiB would otherwise stay in pytest's kept temporary directories.
    assert call("DELETE", url).status == 204
    source.unlink()


# ============================================================ one writer at a time


def test_head_answers_at_once_while_a_patch_is_stalled_and_a_newer_patch_takes_over(
    start_server: Any,
) -> None:
    server = start_server()
    source = os.urandom(2 * MiB)
    half, three_quarters = 1 * MiB + 13, 1536 * KiB
    url = create(server, len(source))

    stalled = open_patch(url, 0, len(source))
    newer: socket.socket | None = None
    try:
        stalled.sendall(source[:half])
        last_byte = time.monotonic()
        wait_for_offset(url, half)

        # HEAD never waits for the lock the stalled PATCH holds.
        asked = time.monotonic()
        assert offset_of(url) == half
        assert time.monotonic() - asked < AT_ONCE

        # The stalled client says nothing for over a second (this sleep *is* the stall).
        time.sleep(max(0.0, last_byte + STALL - time.monotonic()))
        newer = open_patch(url, half, len(source) - half)
        asked = time.monotonic()
        newer.sendall(source[half:three_quarters])
        wait_for_offset(
            url, three_quarters, deadline=TAKEOVER + SLACK + POLL_DEADLINE, answered_on=newer
        )
        assert time.monotonic() - asked < TAKEOVER + SLACK, "the take-over took too long"

        # The stalled request let go: its connection is closed, and its late bytes go nowhere.
        wait_closed_by_server(stalled, deadline=POLL_DEADLINE)
        with contextlib.suppress(OSError):
            stalled.sendall(b"\0" * (64 * KiB))

        newer.sendall(source[three_quarters:])
        response = read_response(newer)
        assert (response.status, response.headers.get("upload-offset")) == (204, str(len(source)))
    finally:
        stalled.close()
        if newer is not None:
            newer.close()

    # One writer's bytes, never a mix.
    assert download_sha256(url) == sha256(source)


def test_a_patch_racing_an_active_one_gets_423_and_the_active_one_finishes(
    start_server: Any,
) -> None:
    server = start_server()
    source = os.urandom(4 * MiB)  # 64 KiB every 20 ms: about 1.3 s of steady sending
    url = create(server, len(source))

    active = BodySender(url, 0, len(source), steady_chunks(source, 64 * KiB, 0.02))
    active.start()
    try:
        offset = wait_for_offset(url, lambda offset: offset > 0)
        racer = open_patch(url, offset, len(source) - offset)
        try:
            asked = time.monotonic()
            response = early_answer(racer, deadline=3.0)
            answered = time.monotonic() - asked
        finally:
            racer.close()
        # 423: "a PATCH that collides with a request still receiving bytes"; 409 if the
        # offset it named has moved on meanwhile. Either comes at once.
        assert isinstance(response, Response), (
            f"the racing PATCH was not refused within 3 s but: {response or 'accepted'}"
        )
        assert response.status in (423, 409), response
        assert answered < TAKEOVER, f"answered after {answered:.2f} s"
    finally:
        active.finish(deadline=30.0)

    assert active.error is None, f"the active PATCH was harmed: {active.error!r}"
    assert active.response is not None
    assert (active.response.status, active.response.headers.get("upload-offset")) == (
        204,
        str(len(source)),
    )
    # One writer's bytes, never a mix.
    assert download_sha256(url) == sha256(source)


def test_a_delete_during_an_active_patch_takes_over(start_server: Any) -> None:
    server = start_server()
    source = os.urandom(4 * MiB)
    url = create(server, len(source))

    active = BodySender(url, 0, len(source), steady_chunks(source, 64 * KiB, 0.02))
    active.start()
    try:
        wait_for_offset(url, lambda offset: offset > 0)
        asked = time.monotonic()
        response = call("DELETE", url)
        answered = time.monotonic() - asked
        assert response.status == 204, response
        assert answered < TAKEOVER + SLACK, f"answered after {answered:.2f} s"
        assert head(url).status in (404, 410)
    finally:
        active.finish(deadline=30.0)

    # The writer was stopped, and nothing it sent brings the upload back.
    assert active.response is None or active.response.status != 204, active.response
    assert head(url).status in (404, 410)
    assert patch(url, 0, source[:KiB]).status in (404, 410)


# ============================================================ idle time-out


# The idle time-out (a stalled body cut, its bytes kept, its lock free) is tested in
# test_reliability.py with the rest of the slow-client cases.


def test_sigterm_mid_patch_exits_0_and_keeps_every_byte_received(start_server: Any) -> None:
    server = start_server()
    source = os.urandom(4 * MiB)
    sent = 3 * MiB + 5
    url = create(server, len(source))

    sock = open_patch(url, 0, len(source))
    try:
        sock.sendall(source[:sent])
        wait_for_offset(url, sent)  # the server has received every byte sent
        asked = time.monotonic()
        status = server.terminate(timeout=10.0)
        stopped_in = time.monotonic() - asked
    finally:
        sock.close()
    assert status == 0
    assert stopped_in < 5.0, f"SIGTERM took {stopped_in:.2f} s"

    server.start()  # same port, same data dir
    assert offset_of(url) == sent
    assert_patch_finishes(url, sent, source)
    assert download_sha256(url) == sha256(source)


# ============================================================ raw HTTP/1.1


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes = b""

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers}, {self.body[:200]!r})"


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", "these tests talk to loopback only"
    return socket.create_connection(("127.0.0.1", parts.port or 80), timeout=IO_TIMEOUT)


def request_head(method: str, url: str, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    lines = [
        f"{method} {parts.path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(
    sock: socket.socket, *, deadline: float = IO_TIMEOUT, method: str = ""
) -> Response:
    """Reads one response: status line, headers, and a Content-Length body."""
    sock.settimeout(deadline)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(64 * KiB)
        if not data:
            raise ConnectionError(f"closed before a whole response: {buffer!r}")
        buffer += data
    head_bytes, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(64 * KiB)
        if not data:
            break
        body += data
    return Response(int(status_line.split()[1]), headers, body[:length])


def call(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Response:
    sock = connect(url)
    try:
        all_headers = {"Tus-Resumable": TUS_VERSION, **(headers or {})}
        if body or method in ("POST", "PATCH"):
            all_headers["Content-Length"] = str(len(body))
        sock.sendall(request_head(method, url, all_headers) + body)
        return read_response(sock, method=method)
    finally:
        sock.close()


def open_patch(url: str, offset: int, length: int) -> socket.socket:
    """A PATCH whose headers are sent; the caller sends (some of) its `length`-byte body."""
    sock = connect(url)
    try:
        sock.sendall(request_head("PATCH", url, patch_headers(offset, length)))
    except BaseException:
        sock.close()
        raise
    return sock


def patch_headers(offset: int, length: int) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(offset),
        "Content-Type": OFFSET_TYPE,
        "Content-Length": str(length),
    }


def patch(url: str, offset: int, body: bytes) -> Response:
    return call("PATCH", url, {"Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE}, body)


def patch_from_file(url: str, offset: int, source: Path) -> Response:
    """PATCH the rest of `source` from `offset`, streamed from disk."""
    count = source.stat().st_size - offset
    sock = open_patch(url, offset, count)
    try:
        with source.open("rb") as data:
            sock.sendfile(data, offset, count)
        return read_response(sock, deadline=60.0)
    finally:
        sock.close()


def unacknowledged_bytes(sock: socket.socket) -> int:
    """Bytes in our TCP send queue the peer has not acknowledged yet (Linux TIOCOUTQ)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    return count[0]


def wait_until(done: Callable[[], bool], what: str, deadline: float = POLL_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not done():
        if time.monotonic() > end:
            pytest.fail(f"waited {deadline} s for {what}")
        time.sleep(POLL_INTERVAL)


def wait_closed_by_server(sock: socket.socket, *, deadline: float) -> None:
    """Returns once the server has closed `sock` (EOF or reset); fails after `deadline`."""
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(64 * KiB):
                return
        except (ConnectionResetError, BrokenPipeError):
            return
        except TimeoutError:
            break
    pytest.fail(f"the server kept the connection open for over {deadline} s")


# ============================================================ tus steps


def create(server: Any, size: int) -> str:
    response = call("POST", server.files_url, {"Upload-Length": str(size)})
    assert response.status == 201, response
    location = response.headers["location"]
    assert location.startswith(server.url + "/files/"), location
    return location


def head(url: str) -> Response:
    return call("HEAD", url)


def offset_of(url: str) -> int:
    response = head(url)
    assert response.status == 200, response
    return int(response.headers["upload-offset"])


def wait_for_offset(
    url: str,
    wanted: int | Callable[[int], bool],
    *,
    deadline: float = POLL_DEADLINE,
    answered_on: socket.socket | None = None,
) -> int:
    """Polls HEAD until Upload-Offset is `wanted` (or satisfies it); returns that offset.

    On failure, says what the server answered on `answered_on` (a PATCH refused early).
    """
    ok = wanted if callable(wanted) else (lambda offset: offset == wanted)
    end = time.monotonic() + deadline
    offset = offset_of(url)
    while not ok(offset):
        if time.monotonic() > end:
            answer = early_answer(answered_on) if answered_on is not None else None
            pytest.fail(
                f"Upload-Offset still {offset} after {deadline} s (wanted {wanted})"
                + (f"; the PATCH was answered {answer}" if answer else "")
            )
        time.sleep(POLL_INTERVAL)
        offset = offset_of(url)
    return offset


def early_answer(sock: socket.socket, deadline: float = 0.5) -> Response | str | None:
    """What the server answered on `sock` before its body: a response, an error, or None."""
    try:
        return read_response(sock, deadline=deadline)
    except (OSError, ValueError) as error:
        return None if isinstance(error, TimeoutError) else repr(error)


def assert_patch_finishes(url: str, offset: int, source: bytes) -> None:
    response = patch(url, offset, source[offset:])
    assert (response.status, response.headers.get("upload-offset")) == (204, str(len(source))), (
        response
    )


def download_sha256(url: str) -> str:
    sock = connect(url)
    try:
        sock.sendall(request_head("GET", url, {}))
        sock.settimeout(IO_TIMEOUT)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(64 * KiB)
            assert data, f"closed before a whole response: {buffer!r}"
            buffer += data
        head_bytes, _, body = buffer.partition(b"\r\n\r\n")
        assert head_bytes.split(b" ", 2)[1] == b"200", head_bytes
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head_bytes.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        digest, received = hashlib.sha256(body), len(body)
        while received < length:
            data = sock.recv(1 * MiB)
            assert data, f"the download stopped at {received} of {length} bytes"
            digest.update(data)
            received += len(data)
        return digest.hexdigest()
    finally:
        sock.close()


# ============================================================ sources and senders


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def file_chunks(path: Path, start: int, size: int) -> Iterator[bytes]:
    with path.open("rb") as data:
        data.seek(start)
        while chunk := data.read(size):
            yield chunk


def steady_chunks(source: bytes, size: int, pause: float) -> Iterator[bytes]:
    """A client still receiving bytes: `size` bytes every `pause` seconds (pacing, not sync)."""
    for start in range(0, len(source), size):
        if start:
            time.sleep(pause)
        yield source[start : start + size]


@dataclass
class BodySender:
    """A PATCH sent from a thread; `sent` counts the bytes the kernel took from us."""

    url: str
    offset: int
    length: int
    chunks: Iterable[bytes]
    sent: int = 0
    response: Response | None = None
    error: BaseException | None = None
    _thread: threading.Thread = field(init=False)
    _sock: socket.socket | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def finish(self, deadline: float = IO_TIMEOUT) -> None:
        """Waits for the PATCH to end; past `deadline`, cuts it (then `error` says so)."""
        self._thread.join(deadline)
        if self._thread.is_alive() and self._sock is not None:
            self._sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(IO_TIMEOUT)

    def _run(self) -> None:
        try:
            self._sock = sock = open_patch(self.url, self.offset, self.length)
        except OSError as error:
            self.error = error
            return
        try:
            for chunk in self.chunks:
                view = memoryview(chunk)
                while view:
                    count = sock.send(view)
                    self.sent += count
                    view = view[count:]
            self.response = read_response(sock, deadline=30.0)
        except OSError as error:
            self.error = error
        finally:
            sock.close()
