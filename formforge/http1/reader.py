"""Bytes from the socket into requests: llhttp (through httptools) parses each read into
events, in order: a request's start line and headers, pieces of its body, its end."""

from __future__ import annotations

from collections import deque
from typing import Any

import httptools
from tornado import httputil

from formforge.http1.message import BadRequest

# Per header line beyond its name and value (": " and CRLF), for the header-size bound.
HEADER_LINE_OVERHEAD = 4


class RequestReader:
    """`events` holds ("headers", start_line, headers, keep_alive), ("body", bytes) and
    ("end",) tuples until the connection hands them over; `queued_bytes` counts the bodies'."""

    def __init__(self, max_header_size: int) -> None:
        self._max_header_size = max_header_size
        self._parser = httptools.HttpRequestParser(self)
        self.events: deque[tuple[Any, ...]] = deque()
        self.queued_bytes = 0
        # After an Upgrade request the bytes are not HTTP any more: kept, never parsed.
        self.upgrade_tail: bytes | None = None
        self._url = b""
        self._headers = httputil.HTTPHeaders()
        self._header_bytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Parse `data`; BadRequest if it is not HTTP/1.1 or a header block is too large."""
        if self.upgrade_tail is not None:
            self.upgrade_tail += bytes(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_tail = bytes(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as error:
            raise (error.__context__ or BadRequest(str(error))) from None
        except httptools.HttpParserError as error:
            raise BadRequest(str(error)) from None

    def next_event(self) -> tuple[Any, ...]:
        event = self.events.popleft()
        if event[0] == "body":
            self.queued_bytes -= len(event[1])
        return event

    def clear(self) -> None:
        self.events.clear()
        self.queued_bytes = 0

    # llhttp's callbacks, from feed_data

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = httputil.HTTPHeaders()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + HEADER_LINE_OVERHEAD)
        self._headers.add(name.decode("latin-1"), value.decode("latin-1").strip())

    def on_headers_complete(self) -> None:
        start_line = httputil.RequestStartLine(
            self._parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            f"HTTP/{self._parser.get_http_version()}",
        )
        self.events.append(("headers", start_line, self._headers, self._parser.should_keep_alive()))

    def on_body(self, body: bytes) -> None:
        self.events.append(("body", body))
        self.queued_bytes += len(body)

    def on_message_complete(self) -> None:
        self.events.append(("end",))

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > self._max_header_size:
            raise BadRequest("header block too large")
