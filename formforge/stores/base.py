"""The store interfaces: a small core every store has, and optional capabilities.

A store keeps the bytes and the descriptive info of uploads. It knows nothing of HTTP,
locks or events: the upload service calls it with the lock held, so a store may assume
one writer per upload. What a store guarantees is written on each method.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


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


class Store(ABC):
    """The core every store implements."""

    async def close(self) -> None:  # noqa: B027 - a store on local disk has nothing to close
        """Let go of connections; called once, after every request has finished."""

    @abstractmethod
    async def recover(self) -> None:
        """Bring the store to a consistent state after a crash; called once at start-up."""

    @abstractmethod
    async def create(self, new: NewUpload) -> UploadInfo:
        """Create an empty upload. After return it exists durably with offset 0."""

    @abstractmethod
    async def get_info(self, upload_id: str) -> UploadInfo:
        """The upload's info; raises `UploadError(NOT_FOUND)` if there is none.

        Never waits for a writer: it reports what is stored now.
        """

    @abstractmethod
    async def write(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        keep: Callable[[], bool] | None = None,
    ) -> int:
        """Append the chunks at `offset` (which must be the stored offset); return the new offset.

        The store pulls `chunks` until it ends or raises. Whatever way it stops, every byte
        pulled is written and, with fsync on, durable before this returns or re-raises.
        With `keep`, the bytes are provisional: at the end `keep()` decides whether they
        stay; if not (or after a crash before that decision) the offset goes back to
        `offset`.
        """

    @abstractmethod
    async def update(self, upload_id: str, **changes: object) -> UploadInfo:
        """Durably change info fields (size, state, sha256, error, metadata,
        intended_length).

        Raises `UploadError(TERMINATED)` for a deleted or expired upload: gone is final.
        """

    @abstractmethod
    def list_ids(self) -> AsyncIterator[str]:
        """Every upload id in the store, gone ones included (for the sweeper)."""


@runtime_checkable
class Terminator(Protocol):
    """Capability `termination` (and what expiry needs)."""

    async def terminate(self, upload_id: str, state: UploadState) -> None:
        """Remove the bytes; keep a small tombstone in `state` so clients learn it is gone."""

    async def forget(self, upload_id: str) -> None:
        """Remove every trace of the upload, tombstone included."""


@runtime_checkable
class Concatenator(Protocol):
    """Capability `concatenation`: a final upload made of complete partial uploads."""

    async def concatenate(self, new: NewUpload, parts: Sequence[UploadInfo]) -> UploadInfo:
        """Create `new` holding the parts' bytes in order; complete on return."""


@runtime_checkable
class Reader(Protocol):
    """Capability download: stream stored bytes."""

    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) in chunks of bounded size."""


@runtime_checkable
class Digester(Protocol):
    """Optional: a store that can hash an upload where its bytes are, without streaming them
    through the event loop (processing falls back to `Reader` otherwise)."""

    async def sha256(self, upload_id: str, size: int) -> str:
        """The hex sha256 of the upload's first `size` bytes."""
