"""The one error table: every failure a client can see, with its status and retry advice.

Fronts render `UploadError` in one place each (tus: plain text body + status; REST: JSON);
`uploadError` events reuse the same codes. Clients (tus-js-client, tuspy) retry 5xx, 409
and 423 on their own and give up on other 4xx, so the status chosen below *is* the retry
policy: only pick a retryable status where trying again can succeed.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorKind(enum.Enum):
    """code -> (HTTP status, retryable by the client)."""

    # Retryable: the same request may succeed later.
    OFFSET_MISMATCH = ("offset-mismatch", 409, True)  # HEAD, then resume from the offset
    UPLOAD_LOCKED = ("upload-locked", 423, True)  # another request is still receiving bytes
    CHECKSUM_MISMATCH = ("checksum-mismatch", 460, True)  # bytes dropped; resend them
    CONNECTION_LOST = ("connection-lost", 499, True)  # event only: the body was cut
    SHUTTING_DOWN = ("shutting-down", 503, True)
    SERVER_BUSY = ("server-busy", 503, True)  # max_concurrent_uploads; with Retry-After
    HOOK_FAILED = ("hook-failed", 503, True)  # a pre-create hook failed or timed out
    INSUFFICIENT_STORAGE = ("insufficient-storage", 507, True)
    INTERNAL = ("internal-error", 500, True)
    # Final: the request itself is wrong or the upload is gone; retrying cannot help.
    BAD_REQUEST = ("bad-request", 400, False)
    UNAUTHORIZED = ("unauthorized", 401, False)
    REJECTED = ("rejected", 403, False)  # by a pre-create hook, which may choose the 4xx
    INVALID_METADATA = ("invalid-metadata", 400, False)
    CHECKSUM_UNSUPPORTED = ("checksum-unsupported", 400, False)
    FINAL_UPLOAD = ("final-upload", 403, False)  # tus: PATCH on a concatenated final upload
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, False)
    NOT_FOUND = ("not-found", 404, False)
    INCOMPLETE = ("upload-incomplete", 409, False)  # GET of an unfinished upload
    EXPIRED = ("expired", 410, False)
    TERMINATED = ("terminated", 410, False)
    UNSUPPORTED_VERSION = ("unsupported-version", 412, False)
    SIZE_EXCEEDED = ("size-exceeded", 413, False)
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, False)
    RANGE_NOT_SATISFIABLE = ("range-not-satisfiable", 416, False)
    PROCESSING_FAILED = ("processing-failed", 500, False)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def retryable(self) -> bool:
        return self.value[2]


class UploadError(Exception):
    """A failure with a kind from the table, a human message and optional details.

    `details` carries what a front may add to its answer (the current `offset` on a
    mismatch, for example), in snake_case; a `status` there overrides the kind's (a hook's
    rejection picks its own 4xx).
    """

    def __init__(self, kind: ErrorKind, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        status = self.details.get("status")
        return status if isinstance(status, int) else self.kind.status

    def __repr__(self) -> str:
        return f"UploadError({self.kind.code}, {self.message!r})"
