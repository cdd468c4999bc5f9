"""`104 (Upload Resumption Supported)` interim responses, written raw on the connection.

Tornado has no API for 1xx responses, so `InterimResponses` writes them as bytes on the
connection, outside the answer's framing (`BodyConnection.write_raw`):

- only to HTTP/1.1 requests of a known interop version (1xx must not go to HTTP/1.0, and the
  draft forbids 104 for a missing or other version); each carries the client's version;
- never interleaved with the final response. Writes go out in the order they are
  queued and each 104 is one synchronous `write`, so the one rule is that no 104 may be
  queued after the final response's status line: the handler closes the gate (`close`)
  before any final response is written.

Progress 104s (`Upload-Offset`) follow the event bus: the service publishes `UploadProgress`
as the store takes the body's chunks (throttled to `events.progress_interval_ms`, the same
events Socket.IO rooms get), and `ProgressRelay` hands each to the requests listening for
that upload. No task polls the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from formforge.core.events import Event, UploadProgress
from formforge.fronts.connection import BodyConnection

VERSION_FIELD = "Upload-Draft-Interop-Version"
INTERIM_STATUS_LINE = "HTTP/1.1 104 Upload Resumption Supported"

ProgressListener = Callable[[UploadProgress], None]


class InterimResponses:
    """The 104s of one HTTP/1.1 request, until its final response starts (`close`)."""

    def __init__(self, connection: BodyConnection, version: int) -> None:
        self._connection = connection
        self._version = version
        self._open = True
        self._on_close: list[Callable[[], None]] = []
        self.sent = 0

    @property
    def open(self) -> bool:
        return self._open and not self._connection.closed()

    def send(self, fields: Mapping[str, str]) -> bool:
        """Queue one interim response; False once closed (nothing is sent then)."""
        if not self.open:
            return False
        if any("\r" in value or "\n" in value for value in fields.values()):
            raise ValueError("a field value of an interim response spans lines")
        lines = [INTERIM_STATUS_LINE, f"{VERSION_FIELD}: {self._version}"]
        lines += [f"{name}: {value}" for name, value in fields.items()]
        if not self._connection.write_raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")):
            self._open = False
            return False
        self.sent += 1
        return True

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        """The final response owns the connection from now on."""
        self._open = False
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()


class ProgressRelay:
    """One bus subscriber for the whole front: `UploadProgress` events to the requests that
    listen for their upload (a dict lookup per event, nothing when no one listens)."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[ProgressListener]] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, UploadProgress):
            for listener in list(self._listeners.get(event.upload_id, ())):
                listener(event)

    def listen(self, upload_id: str, listener: ProgressListener) -> Callable[[], None]:
        """Call `listener` with the upload's progress until the returned function is called."""
        self._listeners.setdefault(upload_id, set()).add(listener)

        def stop() -> None:
            listeners = self._listeners.get(upload_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[upload_id]

        return stop


def relay_progress(
    relay: ProgressRelay, interim: InterimResponses, upload_id: str, offset: int
) -> None:
    """Progress 104s for one streaming request: each offset past the last one sent, until the
    final response starts."""
    last = offset

    def send(event: UploadProgress) -> None:
        nonlocal last
        if event.offset > last and interim.send({"Upload-Offset": str(event.offset)}):
            last = event.offset

    interim.on_close(relay.listen(upload_id, send))
