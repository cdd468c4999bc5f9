"""Bearer tokens (`auth.bearer_tokens`): one check for HTTP and Socket.IO alike."""

from __future__ import annotations

import hmac
from pathlib import Path

from tornado.httputil import HTTPServerRequest

OPEN_PATHS = frozenset({"/healthz"})  # GET only: load balancers probe without a token
# The uploader page and its files (GET and HEAD): a browser must load the page before it can
# ask for a token. Every /static/ path is routed to the static handler, which serves only
# files under static/, so the prefix opens nothing else.
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
PAGE_PREFIX = "/static/"


class TokenCheck:
    """Accepts any of the configured tokens; with none configured, accepts everything."""

    def __init__(self, tokens: frozenset[str] | None, prefix: str = "") -> None:
        self.tokens = tokens
        self.prefix = prefix  # where FormForge is mounted: its open paths are under it

    @classmethod
    def from_setting(cls, setting: tuple[str, ...] | str | None, prefix: str = "") -> TokenCheck:
        """A list of tokens, or the path of a file with one token a line (# comments)."""
        if setting is None:
            return cls(None, prefix)
        if isinstance(setting, str):
            return cls(read_token_file(Path(setting)), prefix)
        return cls(frozenset(setting), prefix)

    @property
    def enabled(self) -> bool:
        return self.tokens is not None

    def allows_token(self, token: object) -> bool:
        if self.tokens is None:
            return True
        if not isinstance(token, str) or not token:
            return False
        # Compare with every token, in constant time, so timing tells nothing.
        matches = [hmac.compare_digest(token.encode(), known.encode()) for known in self.tokens]
        return any(matches)

    def allows_header(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return self.allows_token(token.strip()) if scheme.lower() == "bearer" else not self.enabled

    def exempts(self, request: HTTPServerRequest) -> bool:
        """Health probes, the page, CORS preflights, and Socket.IO (which checks at connect)."""
        if not request.path.startswith(self.prefix):
            return False
        path = request.path[len(self.prefix) :]
        if request.method == "GET" and path in OPEN_PATHS:
            return True
        if request.method in ("GET", "HEAD") and is_page(path):
            return True
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return True
        return path.startswith("/socket.io/")


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIX)


def read_token_file(path: Path) -> frozenset[str]:
    """One token a line; blank lines and lines starting with # are skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))
