"""Header blocks over the server's limit get `431 Request Header Fields Too Large`.

Tornado closes a connection whose header block passes `HTTPServer(max_header_size=...)`
without a word (the read fails before any request exists). So the server lets Tornado read
header blocks up to `HEADER_READ_BOUND` (the public `max_header_size` parameter) and the
route table's first rule answers those over `header_limit(...)` here with a clear 431,
before any body is read. Only a header block past the read bound still gets the connection
closed; that bound is what one connection may hold while its headers arrive.
"""

from __future__ import annotations

from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher, Rule
from tornado.web import RequestHandler, stream_request_body

# Tornado reads (and buffers) header blocks up to this; anything smaller gets an answer.
HEADER_READ_BOUND = 2 * 1024 * 1024
# What a request's headers may take besides Upload-Metadata (which has its own limit, 400).
HEADER_ALLOWANCE = 64 * 1024
MIN_HEADER_LIMIT = 256 * 1024


def header_limit(max_metadata_bytes: int) -> int:
    """The largest header block served: room for Upload-Metadata up to its own limit (so an
    oversized one is a tus 400 that names it), and never under 256 KiB."""
    return max(MIN_HEADER_LIMIT, HEADER_ALLOWANCE + max_metadata_bytes)


def header_read_bound(limit: int) -> int:
    """Tornado's `max_header_size`: past the limit, so the 431 can be written."""
    return max(HEADER_READ_BOUND, 2 * limit)


def header_block_bytes(request: HTTPServerRequest) -> int:
    """The size of the request line and header fields, as sent (CRLF line ends)."""
    start = len(request.method or "") + len(request.uri or "") + len(request.version) + 4
    fields = sum(len(name) + len(value) + 4 for name, value in request.headers.get_all())
    return start + fields + 2


class OversizedHeaders(Matcher):
    """Matches any request whose header block is over `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def match(self, request: HTTPServerRequest) -> dict[str, object] | None:
        return {} if header_block_bytes(request) > self.limit else None


@stream_request_body  # so it answers right after the headers, before any body is read
class HeadersTooLargeHandler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, limit: int) -> None:
        self.limit = limit

    def prepare(self) -> None:
        size = header_block_bytes(self.request)
        self.set_status(431)
        self.set_header("Connection", "close")  # the body, if any, is not read
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"the request's header fields take {size} bytes; the limit is {self.limit}\n")


def oversized_headers_rule(limit: int) -> Rule:
    """The route table's first rule: 431 for a header block over `limit` bytes."""
    return Rule(OversizedHeaders(limit), HeadersTooLargeHandler, {"limit": limit})
