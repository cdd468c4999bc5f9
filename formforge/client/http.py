"""The client's HTTP: requests with time-outs, one-line descriptions of what went wrong,
the tus server check, and retries with capped exponential backoff for what can succeed
later (no connection, a time-out, 5xx, 409, 423)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import requests

T = TypeVar("T")

TUS_VERSION = "1.0.0"
# (connect, read) seconds; a read waits for the server's answer after a whole chunk
# (it makes the bytes durable first), so it is generous.
HTTP_TIMEOUT = (10.0, 60.0)
RETRYABLE_STATUSES = frozenset({409, 423})  # and every 5xx; see formforge/errors.py
GONE_STATUSES = frozenset({404, 410})  # the upload does not exist (any more)


class UsageError(Exception):
    """The command line asks for something impossible: a missing file, a malformed URL."""


class UploadFailed(Exception):
    """Why a file (or the whole run) could not finish, as one line."""


class Retryable(UploadFailed):
    """A failure that may not happen again: no connection, a time-out, 5xx, 409, 423."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GaveUp(UploadFailed):
    """A request still failed after every try: the server is down, out of reach or failing."""


class UploadGone(UploadFailed):
    """The upload's URL answers 404/410 (expired, removed), or belongs to another file."""


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more tries after a failure, waiting first_delay, doubling, up to max_delay."""

    retries: int
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        backoff = min(self.first_delay * 2.0**retry, self.max_delay)
        return max(backoff, min(retry_after or 0.0, self.max_delay))


# --- HTTP ------------------------------------------------------------------------------

_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\"()\]]+)|\w+Error\(\d+, '([^']+)'\)")


def describe_request_error(error: requests.RequestException) -> str:
    """A short reason ("connection refused") from requests' long, nested message."""
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    text = str(error)
    match = _ERRNO_TEXT.search(text)
    if match:
        return (match.group(1) or match.group(2)).strip().lower()
    if "RemoteDisconnected" in text or "closed connection" in text:
        return "the server closed the connection"
    return f"request failed ({type(error).__name__})"


class Http:
    """One `requests` session with time-outs; failures become `UploadFailed` subclasses."""

    def __init__(self, token: str | None = None) -> None:
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._session.close()

    def send(
        self, method: str, url: str, headers: Mapping[str, str], data: Iterable[bytes] | None = None
    ) -> requests.Response:
        try:
            return self._session.request(
                method, url, headers=headers, data=data, timeout=HTTP_TIMEOUT
            )
        except requests.exceptions.SSLError as error:  # a ConnectionError, but lasting
            raise UploadFailed(f"TLS failed: {_tls_reason(error)}") from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise Retryable(describe_request_error(error)) from error
        except requests.exceptions.ChunkedEncodingError as error:
            raise Retryable("the answer was cut off") from error
        except requests.RequestException as error:
            raise UploadFailed(describe_request_error(error)) from error

    @staticmethod
    def expect(response: requests.Response, what: str, statuses: tuple[int, ...]) -> None:
        """Raises the failure `response` means unless its status is one of `statuses`."""
        status = response.status_code
        if status in statuses:
            return
        detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        message = f"{what} answered {status}" + (f": {detail}" if detail else "")
        if status >= 500 or status in RETRYABLE_STATUSES:
            raise Retryable(message, _retry_after(response))
        if status in GONE_STATUSES:
            raise UploadGone(message)
        raise UploadFailed(message)


def _tls_reason(error: requests.exceptions.SSLError) -> str:
    match = re.search(r"\[SSL: \w+\] ([^'\"()]+)", str(error))
    return match.group(1).strip() if match else "the handshake failed"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _header_list(response: requests.Response, name: str) -> list[str]:
    return [item.strip() for item in response.headers.get(name, "").split(",") if item.strip()]


def check_server(http: Http, endpoint: str, checksum: str | None) -> None:
    """OPTIONS `endpoint` once: it must speak tus 1.0.0 with creation (and `checksum`).

    One try only: a mistyped URL is reported at once, not after the retries' backoff.
    """
    try:
        response = http.send("OPTIONS", endpoint, headers={"Tus-Resumable": TUS_VERSION})
    except UploadFailed as error:
        raise UploadFailed(f"cannot reach {endpoint}: {error}") from error
    if response.status_code in (401, 403):
        raise UploadFailed(
            f"{endpoint} answered {response.status_code}: it needs a valid token (FORMFORGE_TOKEN)"
        )
    if not response.ok or TUS_VERSION not in _header_list(response, "Tus-Version"):
        raise UploadFailed(
            f"{endpoint} is not a tus server "
            f"(OPTIONS answered {response.status_code} without Tus-Version {TUS_VERSION})"
        )
    extensions = _header_list(response, "Tus-Extension")
    if "creation" not in extensions:
        raise UploadFailed(f"{endpoint} does not let clients create uploads (tus creation)")
    offered = _header_list(response, "Tus-Checksum-Algorithm")
    if checksum and ("checksum" not in extensions or checksum not in offered):
        raise UploadFailed(
            f"{endpoint} does not accept {checksum} checksums "
            f"(it offers: {', '.join(offered) or 'none'})"
        )


# --- retries ---------------------------------------------------------------------------

RetryNote = Callable[[Retryable, float, int], None]


def call_with_retries(
    action: Callable[[], T],
    policy: RetryPolicy,
    note: RetryNote,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`action()`, tried again after each `Retryable` up to `policy.retries` times.

    `note(error, delay, try_number)` is told before each wait. Raises `GaveUp` when the
    last try fails too; any other failure passes through at once.
    """
    retry = 0
    while True:
        try:
            return action()
        except Retryable as error:
            if retry >= policy.retries:
                raise GaveUp(f"{error} (gave up after {retry + 1} tries)") from error
            delay = policy.delay(retry, error.retry_after)
            retry += 1
            note(error, delay, retry)
            sleep(delay)
