"""A real `redis-server` for the tests: started once per session on a free loopback port.

No persistence (no RDB snapshots, no AOF), a working dir of its own, bound to 127.0.0.1 only.
Skipped, with the reason, where `redis-server` is not installed (Debian: `apt-get install
redis-server`; nothing needs the system service running, the tests start their own).

A test module imports the fixture (`redis_url_fixture`) and asks for it by name (`redis_url`):
a `redis://127.0.0.1:<port>/0` URL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    """Until the server answers PING with PONG."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert server.poll() is None, "redis-server exited at start"
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                probe.sendall(b"PING\r\n")
                if probe.recv(64).startswith(b"+PONG"):
                    return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.fixture(name="redis_url", scope="session")
def redis_url_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, server)
        yield f"redis://{HOST}:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
