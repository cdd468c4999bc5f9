"""What processing reports while it runs: the whole-file hash's progress, then each
post-finish hook's own, as `ProcessingProgress` events on the bus.

Per upload, one event as processing starts, then at most one per progress interval; a
report that comes sooner is not lost but sent when the interval is up (the newest value
then), so a room always hears a step's last word. Hooks are untrusted: what one reports is
checked here (a percent clamped to 0-100, a message cut to a line of `MAX_MESSAGE_CHARS`),
garbage is dropped, and each hook call logs at most one warning line about it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field

from formforge.core.events import EventBus, ProcessingProgress, ProgressThrottle

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 200
HASHING = "hashing"  # the message while the whole-file sha256 is computed


class _Keep:
    """A reported field that was garbage: the previous value stays."""


_KEEP = _Keep()


@dataclass(frozen=True)
class ProcessingStatus:
    """Where processing stands: the current step's percent (None: unknown) and message."""

    percent: float | None
    message: str | None


@dataclass
class _Watched:
    size: int
    status: ProcessingStatus
    throttle: ProgressThrottle
    timer: asyncio.TimerHandle | None = field(default=None)


class ProcessingBoard:
    """The processing status of every upload this process is processing now."""

    def __init__(self, bus: EventBus, interval_seconds: float) -> None:
        self.bus = bus
        self.interval = interval_seconds
        self._watched: dict[str, _Watched] = {}
        self._tokens: dict[str, HookReport] = {}

    def start(self, upload_id: str, size: int) -> None:
        """Processing begins: published at once, whatever the throttle."""
        status = ProcessingStatus(0.0, HASHING)
        throttle = ProgressThrottle(self.interval, time.monotonic())
        self.end(upload_id)  # a resumed upload starts over
        self._watched[upload_id] = _Watched(size, status, throttle)
        self._publish(upload_id)

    def set(self, upload_id: str, percent: float | None, message: str | None) -> None:
        """The current step's progress (values already checked); throttled."""
        watched = self._watched.get(upload_id)
        if watched is None:
            return  # processing ended: late news of it goes nowhere
        watched.status = ProcessingStatus(percent, message)
        self._offer(upload_id, watched)

    def end(self, upload_id: str) -> None:
        watched = self._watched.pop(upload_id, None)
        if watched is not None and watched.timer is not None:
            watched.timer.cancel()

    def status(self, upload_id: str) -> ProcessingStatus | None:
        """The latest status, or None when this process is not processing the upload."""
        watched = self._watched.get(upload_id)
        return watched.status if watched else None

    def hook_report(self, upload_id: str) -> HookReport:
        """A report for one hook call; it starts the step with nothing known yet."""
        self.set(upload_id, None, None)
        return HookReport(self, upload_id)

    def by_token(self, token: str) -> HookReport | None:
        """The open hook report a progress token stands for."""
        return self._tokens.get(token)

    def _offer(self, upload_id: str, watched: _Watched) -> None:
        now = time.monotonic()
        if watched.throttle.due(now):
            if watched.timer is not None:
                watched.timer.cancel()
                watched.timer = None
            self._publish(upload_id)
        elif watched.timer is None:
            # Too soon: send the newest value once the interval is up.
            delay = watched.throttle.remaining(now)
            watched.timer = asyncio.get_running_loop().call_later(delay, self._flush, upload_id)

    def _flush(self, upload_id: str) -> None:
        watched = self._watched.get(upload_id)
        if watched is not None:
            watched.timer = None
            self._offer(upload_id, watched)

    def _publish(self, upload_id: str) -> None:
        watched = self._watched[upload_id]
        status = watched.status
        self.bus.publish(
            ProcessingProgress(upload_id, watched.size, status.percent, status.message)
        )

    def _register(self, report: HookReport) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = report
        return token

    def _unregister(self, token: str) -> None:
        self._tokens.pop(token, None)


class HookReport:
    """What one post-finish hook call reports (`formforge.core.hooks.HookProgress`).

    Call it on the event loop; it checks what the hook sent and never raises.
    """

    def __init__(self, board: ProcessingBoard, upload_id: str) -> None:
        self.board = board
        self.upload_id = upload_id
        self._token: str | None = None
        self._closed = False
        self._warned = False
        self._status = ProcessingStatus(None, None)

    def report(self, percent: object, message: object = None) -> None:
        if self._closed:
            self._warn("reported after the hook call ended")
            return
        new_percent, percent_ok = clean_percent(percent)
        new_message, message_ok = clean_message(message)
        if not (percent_ok and message_ok):
            shown = repr(percent) if isinstance(percent, int | float) else type(percent).__name__
            self._warn(f"percent={shown[:40]} message_ok={message_ok}")
        self._status = ProcessingStatus(
            self._status.percent if isinstance(new_percent, _Keep) else new_percent,
            self._status.message if isinstance(new_message, _Keep) else new_message,
        )
        self.board.set(self.upload_id, self._status.percent, self._status.message)

    def token(self) -> str:
        """An unguessable token for this call's progress URL, valid until `close`."""
        if self._token is None:
            self._token = self.board._register(self)
        return self._token

    def close(self) -> None:
        """The hook call ended: its token is void, later reports are dropped."""
        self._closed = True
        if self._token is not None:
            self.board._unregister(self._token)

    def _warn(self, reason: str) -> None:
        if not self._warned:  # one line per hook call, however much garbage it sends
            self._warned = True
            log.warning("hook progress ignored upload_id=%s reason=%s", self.upload_id, reason)


def clean_percent(value: object) -> tuple[float | _Keep | None, bool]:
    """A percent in [0, 100] (clamped), None for unknown; `_KEEP` for garbage.
    The flag says whether the value was fine as sent."""
    if value is None:
        return None, True
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _KEEP, False
    clamped = min(100.0, max(0.0, float(value)))
    return round(clamped, 2), clamped == value


def clean_message(value: object) -> tuple[str | _Keep | None, bool]:
    """One line of at most `MAX_MESSAGE_CHARS` printable characters, None for none;
    `_KEEP` for what is not a string. The flag says whether it was fine as sent."""
    if value is None:
        return None, True
    if not isinstance(value, str):
        return _KEEP, False
    head = value[: MAX_MESSAGE_CHARS + 1]  # a megabyte of message costs no more than a line
    line = " ".join("".join(c if c.isprintable() else " " for c in head).split())
    return line[:MAX_MESSAGE_CHARS] or None, len(value) <= MAX_MESSAGE_CHARS
