"""The store interfaces the core calls: a small core every store has, and optional
capabilities, each detected once (`isinstance` on the runtime-checkable protocols).

A store keeps the bytes and the descriptive info of uploads. It knows nothing of HTTP,
locks or events: the upload service calls it with the lock held, so a store may assume
one writer per upload. What a store guarantees is written on each method. Stores live in
`formforge.stores` and implement these; the core never imports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Protocol, runtime_checkable

from formforge.core.model import NewUpload, UploadInfo, UploadState


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

    async def sha256(
        self, upload_id: str, size: int, progress: Callable[[int], None] | None = None
    ) -> str:
        """The hex sha256 of the upload's first `size` bytes. `progress`, if given, is
        called on the event loop with how many bytes are hashed so far, as hashing goes."""
