"""Upload ids: opaque, URL-safe, unguessable, and safe to use as a file name. And the
cheaper ids of requests and lock holdings, unique but not secret."""

from __future__ import annotations

import itertools
import os
import re
import secrets

# 16 random bytes -> 22 characters of the URL-safe base64 alphabet (128 bits).
_ID_BYTES = 16
_VALID_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_upload_id() -> str:
    return secrets.token_urlsafe(_ID_BYTES)


def is_valid_upload_id(candidate: object) -> bool:
    """True for strings that could be ids; anything else (`..`, `%2e`, `/`) never is.

    Checked before any store access, so no client-chosen string ever reaches a path.
    """
    return isinstance(candidate, str) and _VALID_ID.fullmatch(candidate) is not None


class _Serials:
    """A random prefix per process (drawn again in a forked worker) and a counter: ids that
    no other process or node repeats, at the cost of a counter step. Two random draws per
    small PATCH (its request id, its lock token) took ~3 % of the server's CPU (py-spy)."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_serials = _Serials()


def new_serial_id() -> str:
    """32 hex digits, unique across processes and nodes; guessable, so never an upload id."""
    return _serials.next()
