"""Accepting connections on bound sockets and closing them all at the end."""

from __future__ import annotations

import asyncio
import mmap
import socket

from tornado import httputil

from formforge.http1.connection import Http1Connection
from formforge.http1.params import Http1Params

# Every connection reads into one buffer (the loop runs one read at a time, and the parser
# copies out what it keeps) of a size the open connections share: a body is read a piece
# at a time, and its next read waits until the store took the piece, so about READ_BUDGET
# bytes of bodies are in memory at most. tusbench, fresh server per run: one 1 GiB PATCH
# 2,463-2,538 MiB/s (256 KiB reads: 1,478-1,535); 200 uploads at once peak at 86 MiB
# (1 MiB reads: 234-241). Sized by the bodies streaming instead, the first of 200 uploads
# still got 1 MiB reads while the others connected: 109-128 MiB.
MAX_READ = 1024 * 1024
MIN_READ = 64 * 1024
READ_BUDGET = 64 * 1024 * 1024


class Http1Listener:
    """Serves `delegate` (a Tornado Application) on sockets bound beforehand (by the server, or
    by a supervisor for its workers), each kept at its listen backlog."""

    def __init__(
        self, delegate: httputil.HTTPServerConnectionDelegate, params: Http1Params, backlog: int
    ) -> None:
        self.delegate = delegate
        self.params = params
        self._backlog = backlog
        # An anonymous map: its pages cost memory only once a read that large fills them.
        self._buffer = memoryview(mmap.mmap(-1, MAX_READ))
        self.read_buffer = self._buffer  # what the next read may fill: see `_size_reads`
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[Http1Connection] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            # The backlog again: asyncio's create_server listens anew, with 100 by default.
            server = await loop.create_server(
                lambda: Http1Connection(self), sock=sock, backlog=self._backlog
            )
            self._servers.append(server)

    def stop(self) -> None:
        """Accept no more connections."""
        for server in self._servers:
            server.close()
        self._servers = []

    async def close_all_connections(self) -> None:
        """Close every connection (after what is written to it) and wait until they are gone."""
        for connection in list(self._connections):
            connection.close()
        await self._all_closed.wait()

    def _size_reads(self) -> None:
        share = READ_BUDGET // max(1, len(self._connections))
        size = min(MAX_READ, max(MIN_READ, 1 << (share.bit_length() - 1)))
        if size != len(self.read_buffer):
            self.read_buffer = self._buffer[:size]

    def opened(self, connection: Http1Connection) -> None:
        self._connections.add(connection)
        self._all_closed.clear()
        self._size_reads()

    def closed(self, connection: Http1Connection) -> None:
        self._connections.discard(connection)
        self._size_reads()
        if not self._connections:
            self._all_closed.set()
