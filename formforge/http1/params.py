"""What a connection is given: its limits, and a listener to tell when it opens and closes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tornado import httputil

if TYPE_CHECKING:
    from formforge.http1.connection import Http1Connection


@dataclass(frozen=True, kw_only=True)
class Http1Params:
    max_header_size: int
    max_body_size: int
    chunk_size: int  # the largest piece a body is handed over in
    idle_timeout: float | None  # waiting for a request's headers


class ConnectionSet(Protocol):
    """What a connection needs of its listener."""

    params: Http1Params
    delegate: httputil.HTTPServerConnectionDelegate
    read_buffer: memoryview  # where every connection reads into

    def opened(self, connection: Http1Connection) -> None: ...

    def closed(self, connection: Http1Connection) -> None: ...
