"""Errors a Socket.IO client caused, told apart from FormForge's own: one warning line each,
never a traceback (a malformed frame is the client's problem, not the server's)."""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from typing import Any

log = logging.getLogger(__name__)

# The whole package: a frame of any FormForge module on the stack makes an error ours.
OWN_CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


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
