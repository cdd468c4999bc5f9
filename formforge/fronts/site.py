"""Health, metrics and the page."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.web import HTTPError, RequestHandler, StaticFileHandler

from formforge.metrics import Metrics

# Only our own files run or style the page: no inline script or style, no plugin, no <base>.
# Socket.IO needs `connect-src` for its WebSocket (`'self'` does not cover ws: everywhere).
PAGE_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'"
)


class IndexHandler(RequestHandler):
    """`GET /`: the uploader page (`static/index.html`) under `PAGE_CSP`.

    Its scripts and styles are plain files under `/static/`, served by Tornado's static
    handler; the page is read on every request, so it is never stale.
    """

    def initialize(self, path: Path) -> None:
        self.path = path

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("Cache-Control", "no-cache")
        self.write(self.path.read_bytes())

    def head(self) -> None:
        self.get()


class HealthHandler(RequestHandler):
    def get(self) -> None:
        # A stored answer would say "up" for a server that is down: never from a cache.
        self.set_header("Cache-Control", "no-store")
        self.write({"status": "ok"})


class MetricsHandler(RequestHandler):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        # Every scrape must see the counters of now.
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.metrics.render())


class SafeStaticFileHandler(StaticFileHandler):
    """Tornado's static files, with a 404 (not a 500) for paths no file can have.

    The page names its files without a version in the URL, so a cache that kept one for a
    while could pair a new index.html with an old app.js after an upgrade: every use is
    checked with the server first (`no-cache`), which costs a 304 thanks to the ETag and
    Last-Modified Tornado sends.
    """

    def parse_url_path(self, url_path: str) -> str:
        if "\x00" in url_path:
            raise HTTPError(404)
        return super().parse_url_path(url_path)

    def get_cache_time(self, path: str, modified: datetime | None, mime_type: str) -> int:
        return 0  # no max-age or Expires, even for a ?v= URL

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
