"""The upload model: what an upload is, as every part of FormForge sees it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from formforge.core.metadata import filename_of


class UploadState(enum.StrEnum):
    UPLOADING = "uploading"
    PROCESSING = "processing"
    COMPLETE = "complete"
    ERROR = "error"
    EXPIRED = "expired"
    TERMINATED = "terminated"


GONE_STATES = frozenset({UploadState.EXPIRED, UploadState.TERMINATED})


class ConcatRole(enum.StrEnum):
    PARTIAL = "partial"
    FINAL = "final"


@dataclass(frozen=True)
class NewUpload:
    """What the service asks a store to create; validated before it gets here."""

    id: str
    size: int | None  # None: the length is deferred
    metadata: Mapping[str, str] = field(default_factory=dict)
    concat: ConcatRole | None = None
    parts: tuple[str, ...] = ()  # the partial uploads of a final one, in order
    intended_length: int | None = None  # see `UploadInfo`


@dataclass(frozen=True)
class UploadInfo:
    """A snapshot of one upload. `offset` is read from the stored bytes, never kept twice."""

    id: str
    size: int | None
    offset: int
    metadata: Mapping[str, str]
    created_at: datetime
    updated_at: datetime  # last time bytes or info changed: what expiry counts from
    state: UploadState = UploadState.UPLOADING
    concat: ConcatRole | None = None
    parts: tuple[str, ...] = ()
    sha256: str | None = None
    error: str | None = None
    # The length the client said it will send without completing the upload there (the IETF
    # draft's Upload-Length): the offset may not pass it, but reaching it completes nothing.
    # `size` is the length at which an upload is complete.
    intended_length: int | None = None

    @property
    def is_complete(self) -> bool:
        return self.size is not None and self.offset == self.size

    @property
    def is_gone(self) -> bool:
        return self.state in GONE_STATES

    @property
    def filename(self) -> str | None:
        """What clients named the file, as text (see `metadata.filename_of`)."""
        return filename_of(self.metadata)
