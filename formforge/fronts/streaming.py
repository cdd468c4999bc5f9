"""A handler whose request body streams into the upload service (tus PATCH/POST, REST PUT)."""

from __future__ import annotations

import asyncio
from typing import Any

from formforge.core.body import BodyEnd, BodyStream
from formforge.core.model import UploadInfo
from formforge.core.write_request import WriteRequest
from formforge.fronts.base import FrontHandler
from formforge.fronts.connection import BodyConnection, connection_of
from formforge.fronts.lowwater import LowWaterMark


class StreamingWriteHandler(FrontHandler):
    """Subclasses are decorated with `@stream_request_body` and call `start_body_write` in
    `prepare`, once the headers are checked; `finish_body_write` in the method handler."""

    body: BodyStream | None = None
    low_water: LowWaterMark | None = None
    write_task: asyncio.Task[UploadInfo] | None = None
    prepared = False
    _connection: BodyConnection | None = None

    async def prepare(self) -> None:
        # Until a write starts, Tornado's default would call a big refused body malformed.
        self.connection().set_max_body_size(self.service.limits.max_size)
        await self.prepare_body()
        self.prepared = True

    async def prepare_body(self) -> None:
        """Check the headers; a request with a body to store calls `start_body_write`."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self.prepared:
            # Tornado drops a connection whose body it did not read; saying so keeps a
            # client from sending its next request into a closing socket.
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    async def start_body_write(self, request: WriteRequest, max_body: int) -> None:
        body = self.body = BodyStream(self.settings["idle_timeout_seconds"], self._drop_connection)
        self.write_task = await self.service.start_write(request, body)
        # Every streamed write ends here, complete or cut; this callback runs before the
        # method handler resumes from `finish_body_write`, so its answer sees the sample.
        self.write_task.add_done_callback(lambda _: self._record_throughput(body))
        connection = self.connection()
        connection.set_max_body_size(max_body)
        connection.read_body_in(connection.chunk_size)
        body.receiver = self.low_water = self._low_water_mark(connection, request.content_length)

    def _low_water_mark(
        self, connection: BodyConnection, length: int | None
    ) -> LowWaterMark | None:
        """Only for a body of known length (the front parsed it; a chunked one's end cannot
        be foreseen), and only with `server.receive_low_water` on."""
        if length is None or not self.application.settings.get("receive_low_water"):
            return None
        return LowWaterMark(connection, length, connection.chunk_size)

    async def finish_body_write(self) -> UploadInfo | None:
        """The body is complete: wait until it is stored (and durable). None if none was sent."""
        if self.body is None or self.write_task is None:
            return None
        self.body.finish()
        return await self.write_task

    def _record_throughput(self, body: BodyStream) -> None:
        if body.first_byte_at is not None:
            seconds = body.last_byte_at - body.first_byte_at
            self.throughput.record(self.client_address(), body.received, seconds)

    def data_received(self, chunk: bytes) -> Any:
        if self.body is None:
            return None
        waiter = self.body.feed(chunk)
        if self.low_water is not None:
            if self.body.end is None:
                self.low_water.after_chunk(len(chunk))
            else:  # the write is over: read the rest of the body quickly, as before
                self.low_water.release()
        return waiter

    def on_finish(self) -> None:
        # Before the next request's headers are read.
        if self.low_water is not None:
            self.low_water.release()
        if self.body is not None:
            self.connection().between_bodies()
        super().on_finish()

    def on_connection_close(self) -> None:
        if self.body is not None:
            self.body.cut()
        super().on_connection_close()

    def _drop_connection(self, reason: BodyEnd) -> None:
        """A stalled body, or a newer request took over: nothing more to read here."""
        self.connection().close()

    def connection(self) -> BodyConnection:
        if self._connection is None:
            self._connection = connection_of(self.request)
        return self._connection
