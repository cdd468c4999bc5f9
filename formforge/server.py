"""Server: the HTTP listener around the app, with a clean start and a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from tornado.netutil import bind_sockets

from formforge.app import FormForge, Role
from formforge.config import Settings
from formforge.http1.listener import Http1Listener
from formforge.http1.params import Http1Params
from formforge.realtime.client_errors import quiet_client_errors
from formforge.runtime.event_loop import loop_name
from formforge.runtime.listening import backlog_for
from formforge.runtime.memory import release_memory_when_idle

log = logging.getLogger(__name__)

# Bodies of non-streaming requests (REST JSON); streaming handlers raise it per request.
DEFAULT_MAX_BODY = 1024 * 1024
CLOSE_TIMEOUT_SECONDS = 3.0


def listening_url(host: str, sockets: list[socket.socket]) -> str:
    port = sockets[0].getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    def __init__(
        self,
        settings: Settings,
        sockets: list[socket.socket] | None = None,
        role: Role | None = None,
    ) -> None:
        """`sockets` already bound (by a supervisor, shared by its workers), or None to bind."""
        self.settings = settings
        self.sockets = sockets
        self.role = role or Role()
        self.app: FormForge | None = None
        self._http: Http1Listener | None = None
        self._memory_releaser: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Recover the store, bind, and return the URL clients use."""
        server = self.settings.server
        # Bind first: a taken port starts nothing.
        backlog = backlog_for(server.backlog)
        sockets = self.sockets or bind_sockets(server.port, server.host, backlog=backlog)
        url = listening_url(server.host, sockets)
        self.app = FormForge(self.settings, role=self.role)
        await self.app.start(url)
        options = self.app.http_options
        params = Http1Params(
            max_header_size=options["max_header_size"],
            max_body_size=DEFAULT_MAX_BODY,
            chunk_size=options["chunk_size"],
            idle_timeout=server.idle_timeout_seconds,
        )
        self._http = Http1Listener(self.app.application, params, backlog)
        asyncio.get_running_loop().set_exception_handler(quiet_client_errors)
        await self._http.add_sockets(sockets)
        service = self.app.service
        self._memory_releaser = asyncio.create_task(
            release_memory_when_idle(lambda: service.writes_started, lambda: service.writing)
        )
        log.info(
            "listening url=%s data_dir=%s loop=%s", url, self.settings.storage.path, loop_name()
        )
        return url

    async def stop(self) -> None:
        """Stop accepting, let every write in flight persist what it got, then close."""
        if self._memory_releaser is not None:
            self._memory_releaser.cancel()
        if self._http is not None:
            self._http.stop()
        if self.app is not None:
            await self.app.stop()
        if self._http is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._http.close_all_connections(), CLOSE_TIMEOUT_SECONDS)
        log.info("stopped")
