"""Socket.IO fan-out between the worker processes of one host, without Redis.

python-socketio's pub/sub manager needs only `_publish` and `_listen`; here each worker binds
a Unix datagram socket in `<data_dir>/.fanout/` and a message is sent to every other one.
With `cluster.redis_url` set, python-socketio's own Redis manager is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from socketio.async_pubsub_manager import AsyncPubSubManager

MAX_MESSAGE_BYTES = 64 * 1024


class LocalFanoutManager(AsyncPubSubManager):
    name = "formforge-local-fanout"

    def __init__(self, directory: Path) -> None:
        super().__init__(channel="formforge")
        self.directory = directory
        self._socket: socket.socket | None = None
        self._path: Path | None = None

    def _bind(self) -> socket.socket:
        if self._socket is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self._path))
            sock.setblocking(False)
            self._socket = sock
        return self._socket

    async def _publish(self, data: Any) -> None:
        sock = self._bind()
        message = self.json.dumps(data).encode()
        if len(message) > MAX_MESSAGE_BYTES:
            self._get_logger().warning("fan-out message too large: %d bytes", len(message))
            return
        for peer in self.directory.glob("*.sock"):
            if peer == self._path:
                continue
            try:
                sock.sendto(message, str(peer))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    peer.unlink()  # a worker that died without cleaning up
            except BlockingIOError:
                self._get_logger().warning("fan-out peer is not reading: %s", peer.name)

    async def _listen(self) -> AsyncIterator[bytes]:
        sock = self._bind()
        loop = asyncio.get_running_loop()
        while True:
            yield await loop.sock_recv(sock, MAX_MESSAGE_BYTES)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
