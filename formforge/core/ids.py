"""Upload ids: opaque, URL-safe, unguessable, and safe to use as a file name."""

from __future__ import annotations

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
