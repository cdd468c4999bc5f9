"""The hook points the core calls: before an upload is created, after it is finished,
after it is removed. The runner that calls HTTP, command and Python targets lives in
`formforge.hooks`; the core only knows this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from formforge.core.model import UploadInfo

PRE_CREATE, POST_FINISH, POST_TERMINATE = "pre-create", "post-finish", "post-terminate"


class HookFailed(Exception):
    """A hook target failed or timed out; what it means depends on the point."""


@dataclass(frozen=True)
class RequestInfo:
    """The client request that caused a hook, as hooks see it."""

    headers: Mapping[str, str]
    remote_addr: str | None
    request_id: str | None = None  # the X-Request-ID the request came with, or was given

    def as_json(self) -> dict[str, Any]:
        return {
            "headers": dict(self.headers),
            "remoteAddr": self.remote_addr,
            "requestId": self.request_id,
        }


class HookProgress(Protocol):
    """What one hook call may report about its own work while it runs (post-finish)."""

    def report(self, percent: object, message: object = None) -> None:
        """Percent done (0-100, or None) and a short message; checked, clamped, never
        raises. Call it on the event loop."""

    def token(self) -> str:
        """An unguessable token that stands for this call until it ends (progress URLs)."""

    def close(self) -> None:
        """The call ended: later reports are dropped."""


# Opens the report of the next hook call of one processing run.
ProgressOpener = Callable[[], HookProgress]


class Hooks(Protocol):
    def has(self, point: str) -> bool:
        """Whether any target is configured for `point`."""

    async def pre_create(
        self, size: int | None, metadata: dict[str, str], request: RequestInfo | None
    ) -> dict[str, str]:
        """The metadata to store, after every target accepted (or replaced) it.

        Raises `UploadError` when a target rejects (its status) or fails (503)."""

    async def run_all(
        self,
        point: str,
        info: UploadInfo,
        request: RequestInfo | None = None,
        progress: ProgressOpener | None = None,
    ) -> None:
        """post-finish and post-terminate: every target in order; the first failure raises
        `HookFailed`. With `progress`, each call gets a report of its own, closed when the
        call ends."""


class NoHooks:
    """No targets anywhere: what a service without configured hooks calls."""

    def has(self, point: str) -> bool:
        return False

    async def pre_create(
        self, size: int | None, metadata: dict[str, str], request: RequestInfo | None
    ) -> dict[str, str]:
        return metadata

    async def run_all(
        self,
        point: str,
        info: UploadInfo,
        request: RequestInfo | None = None,
        progress: ProgressOpener | None = None,
    ) -> None:
        return None
