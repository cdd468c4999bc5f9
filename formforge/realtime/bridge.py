"""The bus subscriber that turns upload events into `uploadProgress`, `uploadComplete` and
`uploadError` for the room `upload:<id>`, and only there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import socketio

from formforge.core.events import (
    Event,
    ProcessingProgress,
    UploadFailed,
    UploadFinished,
    UploadProgress,
)
from formforge.core.processing_progress import ProcessingStatus
from formforge.realtime.namespace import room_of
from formforge.wire import complete_payload, error_payload, progress_payload


class RealtimeBridge:
    """A bus subscriber: each upload event goes to its room, and only there."""

    def __init__(self, sio: socketio.AsyncServer, download_url: Callable[[str], str]) -> None:
        self.sio = sio
        self.download_url = download_url
        self._pending: set[asyncio.Task[None]] = set()

    def on_event(self, event: Event) -> None:
        # Payloads are built only for a room someone may be in (most progress has no one).
        match event:
            case UploadProgress(upload_id, offset, size, speed):
                self._emit(
                    "uploadProgress",
                    upload_id,
                    lambda: progress_payload(upload_id, offset, size, speed),
                )
            case ProcessingProgress(upload_id, size, done, message):
                status = ProcessingStatus(done, message)
                self._emit(
                    "uploadProgress",
                    upload_id,
                    lambda: progress_payload(upload_id, size, size, 0.0, status),
                )
            case UploadFinished(info):
                self._emit(
                    "uploadComplete",
                    info.id,
                    lambda: complete_payload(info, self.download_url(info.id)),
                )
            case UploadFailed(upload_id, kind, message, offset):
                self._emit(
                    "uploadError",
                    upload_id,
                    lambda: error_payload(upload_id, kind, message, offset),
                )

    def _emit(self, name: str, upload_id: str, payload: Callable[[], dict[str, Any]]) -> None:
        room = room_of(upload_id)
        if not self._may_be_watched(room):
            return
        # Emits run as tasks in publish order, so a room sees events in the order they happened.
        task = asyncio.create_task(self.sio.emit(name, payload(), room=room))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _may_be_watched(self, room: str) -> bool:
        """False only when nobody can be in the room: a task per event for an empty room
        was ~9 % of the server's samples with 5,000 slow uploads (py-spy). Only the
        in-process manager knows every member; a fan-out manager's rooms span processes."""
        manager = self.sio.manager
        if type(manager) is not socketio.AsyncManager:
            return True
        return next(iter(manager.get_participants("/", room)), None) is not None
