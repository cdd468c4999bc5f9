"""Socket.IO on the app's port: rooms per upload, fed by the event bus.

The namespace answers `joinUploadRoom` / `leaveUploadRoom`; the bridge turns bus events into
`uploadProgress`, `uploadComplete` and `uploadError` for the room `upload:<id>`. The client
manager is python-socketio's own seam: the in-process one now, Redis when clustered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import socketio

from formforge.auth import TokenCheck
from formforge.errors import UploadError
from formforge.events import Event, UploadFailed, UploadFinished, UploadProgress
from formforge.ids import is_valid_upload_id
from formforge.service import UploadService
from formforge.wire import complete_payload, error_payload, progress_payload

log = logging.getLogger(__name__)

OWN_CODE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def room_of(upload_id: str) -> str:
    return f"upload:{upload_id}"


def raised_for_a_client(error: BaseException) -> bool:
    """No FormForge code on the stack: python-socketio or python-engineio raised it while
    parsing what a client sent (broken JSON, an event name that is not a string, a packet
    type that does not exist). That client's error, not the server's."""
    frames = traceback.extract_tb(error.__traceback__)
    return not any(frame.filename.startswith(OWN_CODE) for frame in frames)


class MalformedFrames(logging.Filter):
    """engine.io logs every error from handling a message with its traceback; one raised for
    a client becomes one line. An error in FormForge's own handlers keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and raised_for_a_client(error):
            kind = type(error).__name__
            record.msg = f"{record.getMessage()}: a malformed message from a client: {kind}"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: python-engineio runs each websocket in a task of its
    own, and a packet it cannot parse ends that task with an error nobody awaits. That is
    one line too; everything else goes to asyncio's default handler."""
    error = context.get("exception")
    task = context.get("task") or context.get("future")
    coroutine = getattr(task, "get_coro", lambda: None)()
    library = getattr(coroutine, "__qualname__", "").startswith("AsyncServer.")
    if isinstance(error, Exception) and library and raised_for_a_client(error):
        log.warning("a malformed Socket.IO connection from a client: %s", type(error).__name__)
        return
    loop.default_exception_handler(context)


def _engineio_logger() -> logging.Logger:
    # Warnings and errors only: at INFO engine.io logs every packet.
    logger = logging.getLogger(f"{__name__}.engineio")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(known, MalformedFrames) for known in logger.filters):
        logger.addFilter(MalformedFrames())
    return logger


def create_socketio(
    cors_origins: tuple[str, ...], client_manager: socketio.AsyncManager | None = None
) -> socketio.AsyncServer:
    origins: str | list[str] = "*" if "*" in cors_origins else list(cors_origins)
    return socketio.AsyncServer(
        async_mode="tornado",
        client_manager=client_manager,
        cors_allowed_origins=origins,
        engineio_logger=_engineio_logger(),
        # Events run inside engine.io's message task, so an error a malformed event raises
        # reaches the logger above instead of an unobserved task of python-socketio's.
        async_handlers=False,
    )


class UploadNamespace(socketio.AsyncNamespace):
    """Client events. Any payload that is not a known upload id gets an error ack."""

    def __init__(self, service: UploadService, tokens: TokenCheck) -> None:
        super().__init__("/")
        self.service = service
        self.tokens = tokens

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """With `auth.bearer_tokens` set: the token in the `auth` payload, or the header."""
        token = auth.get("token") if isinstance(auth, dict) else None
        if not (
            self.tokens.allows_token(token)
            or self.tokens.allows_header(environ.get("HTTP_AUTHORIZATION"))
        ):
            raise socketio.exceptions.ConnectionRefusedError("unauthorized")

    async def on_joinUploadRoom(self, sid: str, upload_id: Any = None, *_: Any) -> dict[str, Any]:
        if not is_valid_upload_id(upload_id):
            return {"ok": False, "error": "not a valid upload id"}
        try:
            info = await self.service.status(upload_id)
        except UploadError as error:
            return {"ok": False, "error": error.message}
        room = room_of(upload_id)
        await self.enter_room(sid, room)
        # The snapshot: a client that (re)joins learns at once where the upload stands.
        await self.emit(
            "uploadProgress", progress_payload(info.id, info.offset, info.size, 0.0), to=sid
        )
        return {"ok": True, "room": room}

    async def on_leaveUploadRoom(self, sid: str, upload_id: Any = None, *_: Any) -> dict[str, Any]:
        if not is_valid_upload_id(upload_id):
            return {"ok": False, "error": "not a valid upload id"}
        await self.leave_room(sid, room_of(upload_id))
        return {"ok": True}


class RealtimeBridge:
    """A bus subscriber: each upload event goes to its room, and only there."""

    def __init__(self, sio: socketio.AsyncServer, download_url: Callable[[str], str]) -> None:
        self.sio = sio
        self.download_url = download_url
        self._pending: set[asyncio.Task[None]] = set()

    def on_event(self, event: Event) -> None:
        match event:
            case UploadProgress(upload_id, offset, size, speed):
                self._emit(
                    "uploadProgress", upload_id, progress_payload(upload_id, offset, size, speed)
                )
            case UploadFinished(info):
                self._emit(
                    "uploadComplete", info.id, complete_payload(info, self.download_url(info.id))
                )
            case UploadFailed(upload_id, kind, message, offset):
                self._emit(
                    "uploadError", upload_id, error_payload(upload_id, kind, message, offset)
                )

    def _emit(self, name: str, upload_id: str, payload: dict[str, Any]) -> None:
        # Emits run as tasks in publish order, so a room sees events in the order they happened.
        task = asyncio.create_task(self.sio.emit(name, payload, room=room_of(upload_id)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
