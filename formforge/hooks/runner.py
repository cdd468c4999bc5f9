"""Hooks: decide before an upload is created, process after it is finished, learn of a removal.

The runner calls each configured target in order through its transport (HTTP, command,
Python callable) with the JSON object of CONTRACT.md, and gives back what the target answered.
It knows nothing of uploads' storage or of HTTP fronts: the service calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.hooks import PRE_CREATE, HookFailed, HookProgress, ProgressOpener, RequestInfo
from formforge.core.metadata import binary_values, is_text
from formforge.core.model import UploadInfo
from formforge.hooks.command import call_command
from formforge.hooks.http import HttpCaller
from formforge.hooks.payloads import hook_new_upload, hook_upload
from formforge.hooks.python import PythonCaller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    transport: str  # "http" | "command" | "python"
    address: str

    def __str__(self) -> str:
        return f"{self.transport}:{self.address}"


# (address, the JSON object, time-out, the call's progress report) -> the target's answer.
Transport = Callable[[str, dict[str, Any], float, HookProgress | None], Awaitable[Any]]
# (point, transport, seconds, ok) -> None: what metrics hear of every call.
Observer = Callable[[str, str, float, bool], None]


class HookRunner:
    def __init__(
        self,
        targets: Mapping[str, Sequence[Target]],
        timeout_seconds: float,
        observe: Observer | None = None,
        progress_url: Callable[[], str] | None = None,
    ) -> None:
        """`progress_url()`: where HTTP targets POST progress (a token is appended per call);
        asked at each call, as the server's own address is known only once it listens."""
        self.targets = targets
        self.timeout = timeout_seconds
        self.observe = observe or (lambda *_: None)
        self.transports: dict[str, Transport] = {
            "http": HttpCaller(progress_url),
            "command": call_command,
            "python": PythonCaller(),
        }

    def has(self, point: str) -> bool:
        return bool(self.targets.get(point))

    async def pre_create(
        self, size: int | None, metadata: dict[str, str], request: RequestInfo | None
    ) -> dict[str, str]:
        """Each target may reject (its 4xx and message reach the client) or replace the
        metadata, which the next target then sees. A failing target rejects with 503."""
        metadata = dict(metadata)
        for target in self.targets.get(PRE_CREATE, ()):
            try:
                # Each target sees the metadata as the targets before it left it.
                upload = hook_new_upload(size, metadata)
                answer = await self._call(PRE_CREATE, target, upload, request)
            except HookFailed as error:
                raise UploadError(
                    ErrorKind.HOOK_FAILED, "the upload could not be checked; try again later"
                ) from error
            metadata = _apply_pre_create_answer(answer, metadata)
        return metadata

    async def run_all(
        self,
        point: str,
        info: UploadInfo,
        request: RequestInfo | None = None,
        progress: ProgressOpener | None = None,
    ) -> None:
        """post-finish and post-terminate: every target in order; the first failure raises.
        With `progress`, each call may report its own progress until it returns."""
        upload = hook_upload(info)
        for target in self.targets.get(point, ()):
            report = progress() if progress else None
            try:
                await self._call(point, target, upload, request, report)
            finally:
                if report is not None:
                    report.close()

    async def _call(
        self,
        point: str,
        target: Target,
        upload: dict[str, Any],
        request: RequestInfo | None,
        report: HookProgress | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"type": point, "upload": upload}
        if request is not None:
            payload["request"] = request.as_json()
        started = time.monotonic()
        ok = False
        try:
            call = self.transports[target.transport]
            answer = await call(target.address, payload, self.timeout, report)
            if not isinstance(answer, dict):
                raise HookFailed(f"{target} answered {type(answer).__name__}, not an object")
            ok = True
            return answer
        except HookFailed as error:
            log.warning("hook failed point=%s target=%s error=%s", point, target, error)
            raise
        finally:
            self.observe(point, target.transport, time.monotonic() - started, ok)


def _apply_pre_create_answer(answer: dict[str, Any], metadata: dict[str, str]) -> dict[str, str]:
    reject = answer.get("reject")
    if reject is not None:
        status = reject.get("status") if isinstance(reject, dict) else None
        message = reject.get("message") if isinstance(reject, dict) else None
        if not isinstance(status, int) or not 400 <= status <= 499:
            status = 403
        raise UploadError(
            ErrorKind.REJECTED, str(message or "the upload was rejected"), status=status
        )
    replaced = answer.get("metadata")
    if replaced is None:
        return metadata
    binary = answer.get("metadataBinary") or {}
    if not _is_text_map(replaced) or not _is_text_map(binary):
        raise UploadError(ErrorKind.HOOK_FAILED, "a pre-create hook answered bad metadata")
    try:
        # Text values as given; a value that is not text comes back as base64 of its bytes.
        return {**replaced, **binary_values(binary)}
    except UploadError:
        message = "a pre-create hook answered bad metadataBinary"
        raise UploadError(ErrorKind.HOOK_FAILED, message) from None


def _is_text_map(value: Any) -> bool:
    """A JSON object of strings that are Unicode text (a lone surrogate is not)."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and is_text(k) and is_text(v)
        for k, v in value.items()
    )
