"""Socket.IO on the app's port: the server, and the namespace that answers `joinUploadRoom` /
`leaveUploadRoom`. The client manager is python-socketio's own seam: the in-process one
now, Redis or the local fan-out when there are several processes.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from formforge.auth import TokenCheck
from formforge.core.errors import UploadError
from formforge.core.ids import is_valid_upload_id
from formforge.core.service import UploadService
from formforge.realtime.client_errors import MalformedFrames
from formforge.wire import snapshot_payload


def room_of(upload_id: str) -> str:
    return f"upload:{upload_id}"


def _engineio_logger() -> logging.Logger:
    # Warnings and errors only: at INFO engine.io logs every packet.
    logger = logging.getLogger("formforge.realtime.engineio")
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
        processing = self.service.processor.progress.status(info.id)
        await self.emit("uploadProgress", snapshot_payload(info, processing), to=sid)
        return {"ok": True, "room": room}

    async def on_leaveUploadRoom(self, sid: str, upload_id: Any = None, *_: Any) -> dict[str, Any]:
        if not is_valid_upload_id(upload_id):
            return {"ok": False, "error": "not a valid upload id"}
        await self.leave_room(sid, room_of(upload_id))
        return {"ok": True}
