"""Thousands of phones at once: bursts of connections and many slow bodies (issue 13).

CONTRACT.md, config.yaml: `server.backlog` — "listen queue length; null = the kernel's
limit (somaxconn)". Tus at /files/: a cut or stalled body keeps what reached the server; a
PATCH that collides with a request "that has received no bytes for about a second" takes
over; `uploadProgress` arrives "during a long request too".

A slow body is read when about a second of it waits at the socket (`SO_RCVLOWAT`), so the
tests below check what that must not change: bytes that trickle in below the mark are not
silence (no idle cut), a stalled holder is still taken over and keeps the bytes that sat in
the kernel, the end of a body is never held back, and the next request on the connection is
read at once. Functional checks only: no timing thresholds beyond generous deadlines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.protocol.test_realtime import send_slowly, watching
from tests.system.test_interruptions import (
    create,
    download_sha256,
    offset_of,
    open_patch,
    patch,
    read_response,
    request_head,
    sha256,
    wait_for_offset,
)
from tests.system.test_reliability import config, ensure_file_descriptors

pytestmark = pytest.mark.slow

KiB = 1024
BURST = 2000
SLOW_UPLOADS = 1000
SLOW_SIZE = 64 * KiB
SLOW_RATE = 32 * KiB  # bytes/s: each slow body takes 2 s
SLOW_PIECE = 2 * KiB
IDLE_TIMEOUT = 2  # server.idle_timeout_seconds for the low-water-mark tests
SHORT_IDLE = f"server:\n  idle_timeout_seconds: {IDLE_TIMEOUT}\n"
DEADLINE = 120.0  # seconds for a whole crowd, far above what it needs


# ============================================================ crowds (asyncio, one socket each)


async def exchange(port: int, head: bytes, body: bytes = b"", rate: int = 0) -> bytes:
    """Send one request (the body paced at `rate` bytes/s if given); the status line back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        began, sent = time.monotonic(), 0
        while sent < len(body):
            piece = body[sent : sent + (SLOW_PIECE if rate else len(body))]
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            if rate:
                await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))
        return (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0]
    finally:
        writer.close()


def creation(url: str, length: int) -> bytes:
    return request_head(
        "POST", url, {"Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Content-Length": "0"}
    )


def port_of(url: str) -> int:
    return urlsplit(url).port or 80


async def burst_of_creations(url: str, count: int) -> list[bytes | BaseException]:
    """`count` connections opened at once (one loop turn issues every connect)."""
    return await asyncio.wait_for(
        asyncio.gather(
            *(exchange(port_of(url), creation(url, KiB)) for _ in range(count)),
            return_exceptions=True,
        ),
        DEADLINE,
    )


def test_a_burst_of_2000_connections_is_answered_every_one(start_server: Any) -> None:
    """2,000 connections at once, each creating an upload: every one gets its 201. With
    Tornado's default backlog (128) the kernel drops or resets what does not fit."""
    ensure_file_descriptors(2 * BURST + 512)
    server = start_server()
    answers = asyncio.run(burst_of_creations(server.files_url, BURST))
    failures = [a for a in answers if not (isinstance(a, bytes) and b" 201 " in a + b" ")]
    assert not failures, f"{len(failures)} of {BURST} unanswered, e.g. {failures[:3]!r}"


def listen_backlogs(port: int) -> list[int]:
    """The backlog of each socket listening on `port` (`ss` shows it as Send-Q)."""
    if shutil.which("ss") is None:
        pytest.skip("needs `ss` (Debian's iproute2) to read a listen queue's length")
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.startswith("LISTEN")]


def kernel_somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.parametrize("workers", [1, 2])
def test_the_listen_queue_is_the_kernels_limit_unless_configured(
    start_server: Any, tmp_path: Path, workers: int
) -> None:
    """server.backlog null: the kernel's somaxconn, on every listening socket (--workers
    too); a configured value is used as it is."""
    flags = ["--workers", str(workers)]
    server = start_server(args=flags)
    assert set(listen_backlogs(server.port)) == {kernel_somaxconn()}
    server.terminate()
    other = start_server(args=[*flags, *config(tmp_path, "server:\n  backlog: 321\n")])
    assert set(listen_backlogs(other.port)) == {321}


async def slow_crowd(url: str, paths: list[str], body: bytes) -> list[bytes | BaseException]:
    port, spread = port_of(url), 1.0 / len(paths)

    async def one(index: int, path: str) -> bytes:
        await asyncio.sleep(index * spread)  # all started within a second
        head = request_head(
            "PATCH",
            url.rstrip("/") + path[len("/files") :],
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(len(body)),
            },
        )
        return await exchange(port, head, body, SLOW_RATE)

    crowd = asyncio.gather(*(one(i, p) for i, p in enumerate(paths)), return_exceptions=True)
    return await asyncio.wait_for(crowd, DEADLINE)


async def create_many(url: str, count: int) -> list[str]:
    paths: list[str] = []
    for first in range(0, count, 100):
        heads = await asyncio.gather(*(location_of(url) for _ in range(min(100, count - first))))
        paths += heads
    return paths


async def location_of(url: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(url))
    try:
        writer.write(creation(url, SLOW_SIZE))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    finally:
        writer.close()
    assert " 201 " in head.split("\r\n", 1)[0], head
    location = next(ln for ln in head.split("\r\n") if ln.lower().startswith("location:"))
    return urlsplit(location.split(":", 1)[1].strip()).path


def test_a_thousand_slow_uploads_at_once_all_complete(start_server: Any, tmp_path: Path) -> None:
    """1,000 uploads of 64 KiB, each sent at 32 KiB/s in 2 KiB writes, all started within
    a second: every PATCH gets its 204 and every upload is complete, byte for byte."""
    ensure_file_descriptors(2 * SLOW_UPLOADS + 512)
    # fsync off: 1,000 fdatasyncs at the end of the bodies would only test the disk.
    server = start_server(args=config(tmp_path, "storage:\n  fsync: false\n"))
    body = os.urandom(SLOW_SIZE)
    paths = asyncio.run(create_many(server.files_url, SLOW_UPLOADS))
    answers = asyncio.run(slow_crowd(server.files_url, paths, body))
    failures = [a for a in answers if not (isinstance(a, bytes) and b" 204 " in a + b" ")]
    assert not failures, f"{len(failures)} of {SLOW_UPLOADS} failed, e.g. {failures[:3]!r}"
    for path in paths[:: SLOW_UPLOADS // 10]:  # a sample, to keep the test quick
        url = server.url + path
        assert offset_of(url) == SLOW_SIZE
        assert download_sha256(url) == sha256(body)


# ============================================================ the low-water mark, one body


def fast_then(sock: socket.socket, source: bytes, fast: int) -> None:
    """Send `fast` bytes at ~40 KiB/s: the server then reads this body 32 KiB at a time."""
    for start in range(0, fast, 4 * KiB):
        sock.sendall(source[start : min(fast, start + 4 * KiB)])
        time.sleep(0.1)


def low_water_server(start_server: Any, tmp_path: Path, idle_timeout: float) -> Any:
    """A server with the low-water mark on: the default, said here so these tests keep
    testing it whatever the default becomes."""
    server_config = f"server:\n  idle_timeout_seconds: {idle_timeout}\n  receive_low_water: true\n"
    return start_server(args=config(tmp_path, server_config))


def test_bytes_trickling_in_below_the_mark_are_not_cut_by_the_idle_timeout(
    start_server: Any, tmp_path: Path
) -> None:
    """After a faster start, a body slows to 2 KiB/s for twice the idle time-out (2 s): its
    bytes wait in the kernel below the mark, but they arrive, so the body is not cut."""
    server = low_water_server(start_server, tmp_path, IDLE_TIMEOUT)
    source = os.urandom(128 * KiB)
    url = create(server, len(source))
    sock = open_patch(url, 0, len(source))
    try:
        fast_then(sock, source, 32 * KiB)
        sent = 32 * KiB
        for _ in range(4 * IDLE_TIMEOUT * 2):  # 4 s at 2 KiB/s
            sock.sendall(source[sent : sent + 512])
            sent += 512
            time.sleep(0.25)
        sock.sendall(source[sent:])
        response = read_response(sock, deadline=30.0)
    finally:
        sock.close()
    assert_stored_whole(response, url, source)


def assert_stored_whole(response: Any, url: str, source: bytes) -> None:
    assert (response.status, response.headers.get("upload-offset")) == (204, str(len(source)))
    assert download_sha256(url) == sha256(source)


def test_a_stalled_holder_is_taken_over_and_keeps_the_bytes_that_waited_in_the_kernel(
    start_server: Any, tmp_path: Path
) -> None:
    """The holder sends 32 KiB at ~40 KiB/s, then 1 KiB (below its mark, so unread), then
    nothing. A new PATCH a second later takes over; the 1 KiB is kept, not dropped."""
    server = low_water_server(start_server, tmp_path, 60)
    source = os.urandom(128 * KiB)
    url = create(server, len(source))
    holder = open_patch(url, 0, len(source))
    try:
        fast_then(holder, source, 32 * KiB)
        holder.sendall(source[32 * KiB : 33 * KiB])
        wait_for_offset(url, lambda offset: offset > 0)
        time.sleep(1.5)  # the holder is silent for over a second
        offset = offset_of(url)
        first = patch(url, offset, source[offset:])
        if first.status == 409:  # the kept bytes moved the offset on: resume from there
            offset = int(first.headers["upload-offset"])
            first = patch(url, offset, source[offset:])
        assert offset == 33 * KiB, f"resumed at {offset}: bytes that reached the server lost"
    finally:
        holder.close()
    assert_stored_whole(first, url, source)


def test_the_last_bytes_of_a_body_are_read_and_the_next_request_at_once(
    start_server: Any, tmp_path: Path
) -> None:
    """A slow body whose last piece is far below the mark still completes (the mark is
    lowered to what is left), and a HEAD sent next on the same connection is answered
    (the mark is 1 again before headers are read)."""
    server = low_water_server(start_server, tmp_path, IDLE_TIMEOUT)
    source = os.urandom(32 * KiB + 100)
    url = create(server, len(source))
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=30.0) as sock:
        sock.sendall(keep_alive_patch(url, len(source)))
        fast_then(sock, source, 32 * KiB)
        time.sleep(0.5)
        sock.sendall(source[32 * KiB :])  # 100 bytes: the end of the body
        response = read_response(sock, deadline=IDLE_TIMEOUT + 10.0)
        assert (response.status, response.headers.get("upload-offset")) == (204, str(len(source)))
        sock.sendall(keep_alive_request("HEAD", url))
        after = read_response(sock, deadline=10.0, method="HEAD")
    assert (after.status, after.headers.get("upload-offset")) == (200, str(len(source)))


def keep_alive_patch(url: str, length: int) -> bytes:
    parts = urlsplit(url)
    return (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def keep_alive_request(method: str, url: str) -> bytes:
    parts = urlsplit(url)
    return (
        f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n\r\n"
    ).encode()


def test_progress_still_arrives_during_a_long_slow_request(
    start_server: Any, tmp_path: Path
) -> None:
    """128 KiB at 32 KiB/s in 4 KiB writes (4 s, read about once a second once its rate is
    known): uploadProgress events arrive while the request runs, offsets rising, before the
    end-of-request flush."""
    server = low_water_server(start_server, tmp_path, 60)  # 60: the default
    source = os.urandom(128 * KiB)
    url = create(server, len(source))
    upload_id = url.rsplit("/", 1)[1]

    async def scenario() -> list[tuple[int, float]]:
        async with watching(server) as watcher:
            await watcher.join(upload_id)
            joined = len(watcher.seen)
            head = keep_alive_patch(url, len(source))
            pieces = [source[i : i + 4 * KiB] for i in range(0, len(source), 4 * KiB)]
            status, answered = await asyncio.to_thread(send_slowly, server, head, pieces, 0.125)
            assert status == 204
            return [
                (seen.data["offset"], seen.at)
                for seen in watcher.seen[joined:]
                if seen.name == "uploadProgress" and seen.at < answered
            ]

    during = asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    offsets = [offset for offset, _ in during if 0 < offset < len(source)]
    assert len(offsets) >= 2, f"progress during a 4 s request: {during}"
    assert offsets == sorted(offsets)
