"""Accepting connections on bound sockets and closing them all at the end."""

from __future__ import annotations

import asyncio
import socket

from tornado import httputil

from formforge.http1.connection import Http1Connection
from formforge.http1.params import Http1Params


class Http1Listener:
    """Serves `delegate` (a Tornado Application) on sockets bound beforehand (by the server, or
    by a supervisor for its workers), each kept at its listen backlog."""

    def __init__(
        self, delegate: httputil.HTTPServerConnectionDelegate, params: Http1Params, backlog: int
    ) -> None:
        self.delegate = delegate
        self.params = params
        self._backlog = backlog
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

    def opened(self, connection: Http1Connection) -> None:
        self._connections.add(connection)
        self._all_closed.clear()

    def closed(self, connection: Http1Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._all_closed.set()
