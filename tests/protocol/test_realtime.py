"""Live upload events over Socket.IO, against a real `formforge serve` process.

CONTRACT.md, Socket.IO (same host and port, path /socket.io/):
- `joinUploadRoom` uploadId: join room `upload:{uploadId}`; "the server then sends this
  socket the upload's current `uploadProgress` at once"; the ack is
  `{"ok": true, "room": "upload:{uploadId}"}`, or `{"ok": false, "error": ...}` for an
  unknown or malformed id. `leaveUploadRoom` uploadId: leave it; ack `{"ok": true}`.
- `uploadProgress` {uploadId, offset, size, percent, bytesPerSecond}: "as bytes are
  persisted, during a long request too, at most every events.progress_interval_ms per
  upload, and always at the end of each chunk request".
- `uploadComplete` {uploadId, size, filename, metadata, sha256, url}: "once, after the
  upload is complete and processed"; `url` is the absolute download URL.
- `uploadError` {uploadId, code, message, offset, retryable}: checksum mismatch,
  connection lost mid-chunk (retryable), ...
- "`size` and `percent` are null while the length is deferred. Events for one upload reach
  only its room" -- "for uploads from either front".

So every scenario runs for an upload driven through tus (`POST /files/` + `PATCH`) and
through REST (`POST /api/files/upload` + `PUT` with `Content-Range`): the `uploader`
fixture. The Socket.IO side is python-socketio's AsyncClient on the websocket transport;
each test is one coroutine run by `asyncio.run`, HTTP goes through a worker thread so the
event loop keeps receiving while a request is in flight, and every wait is bounded by
`asyncio.wait_for`. Requests that must be slow or cut mid-body are written by hand on a
raw socket to 127.0.0.1. The last test does the same with the real Node socket.io-client
(tests/js/watch-upload.mjs).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests
import socketio

from formforge.core.errors import UploadError
from formforge.core.metadata import parse_metadata
from formforge.realtime.client_errors import raised_for_a_client
from tests.async_helpers import off_loop
from tests.async_helpers import run as run_bounded

pytestmark = pytest.mark.slow

KiB = 1024
INTERVAL_MS = 250  # events.progress_interval_ms for every server here
MIN_GAP = 0.2  # seconds between two throttled events, as the client sees them (jitter)
WAIT = 5.0  # seconds: any one wait for an event, an ack or an HTTP answer
AT_ONCE = 1.0  # seconds: "at once" (the join snapshot)
QUIET = 0.5  # seconds of silence that show an event is *not* coming
TEST_DEADLINE = 30.0  # seconds: a whole scenario
JS_DIR = Path(__file__).resolve().parents[1] / "js"
WATCH_JS = JS_DIR / "watch-upload.mjs"

HTTP = requests.Session()
HTTP.trust_env = False  # loopback only, whatever HTTP(S)_PROXY says

T = TypeVar("T")


# ============================================================ the two fronts


class Uploader:
    """One front's way to create an upload, send a chunk, and read the stored offset."""

    name = ""

    def __init__(self, server: Any) -> None:
        self.server = server

    def create(self, size: int | None, filename: str = "song.bin") -> str:
        raise NotImplementedError

    def chunk_head(
        self,
        upload_id: str,
        offset: int,
        length: int,
        total: int | None,
        declare_length: bool = False,
        extra: dict[str, str] | None = None,
    ) -> bytes:
        """The request line and headers of a chunk request of `length` bytes at `offset`.

        `total` is the size as the client knows it (None: still unknown); `declare_length`
        makes a tus PATCH carry Upload-Length (REST always says TOTAL in Content-Range).
        """
        raise NotImplementedError

    def offset(self, upload_id: str) -> int:
        raise NotImplementedError

    def send(
        self,
        upload_id: str,
        offset: int,
        data: bytes,
        total: int | None,
        declare_length: bool = False,
        extra: dict[str, str] | None = None,
    ) -> int:
        """Send one chunk whole; return the HTTP status."""
        with raw_connection(self.server) as sock:
            sock.sendall(
                self.chunk_head(upload_id, offset, len(data), total, declare_length, extra) + data
            )
            return read_status(sock)


class TusUploader(Uploader):
    name = "tus"

    def create(self, size: int | None, filename: str = "song.bin") -> str:
        headers = {"Tus-Resumable": "1.0.0", "Upload-Metadata": "filename " + b64(filename)}
        if size is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(size)
        response = HTTP.post(self.server.files_url, headers=headers, timeout=WAIT)
        assert response.status_code == 201, (response.status_code, response.text)
        return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]

    def chunk_head(
        self,
        upload_id: str,
        offset: int,
        length: int,
        total: int | None,
        declare_length: bool = False,
        extra: dict[str, str] | None = None,
    ) -> bytes:
        headers = {
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length),
            **(extra or {}),
        }
        if declare_length:
            assert total is not None
            headers["Upload-Length"] = str(total)
        return request_head(self.server, "PATCH", f"/files/{upload_id}", headers)

    def offset(self, upload_id: str) -> int:
        response = HTTP.head(
            f"{self.server.files_url}{upload_id}", headers={"Tus-Resumable": "1.0.0"}, timeout=WAIT
        )
        assert response.status_code == 200, response.status_code
        return int(response.headers["Upload-Offset"])


class RestUploader(Uploader):
    name = "rest"

    def create(self, size: int | None, filename: str = "song.bin") -> str:
        response = HTTP.post(
            f"{self.server.url}/api/files/upload",
            json={"filename": filename, "size": size},
            timeout=WAIT,
        )
        assert response.status_code == 201, (response.status_code, response.text)
        return str(response.json()["uploadId"])

    def chunk_head(
        self,
        upload_id: str,
        offset: int,
        length: int,
        total: int | None,
        declare_length: bool = False,
        extra: dict[str, str] | None = None,
    ) -> bytes:
        assert length > 0, "a Content-Range cannot say an empty range"
        span = f"bytes {offset}-{offset + length - 1}/{'*' if total is None else total}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": span,
            "Content-Length": str(length),
            **(extra or {}),
        }
        return request_head(self.server, "PUT", f"/api/files/upload/{upload_id}", headers)

    def offset(self, upload_id: str) -> int:
        response = HTTP.get(f"{self.server.url}/api/files/upload/{upload_id}", timeout=WAIT)
        assert response.status_code == 200, (response.status_code, response.text)
        return int(response.json()["offset"])

    def status(self, upload_id: str) -> dict[str, Any]:
        response = HTTP.get(f"{self.server.url}/api/files/upload/{upload_id}", timeout=WAIT)
        assert response.status_code == 200, (response.status_code, response.text)
        return dict(response.json())


OK_STATUS = {"tus": 204, "rest": 200}


@pytest.fixture
def server(start_server: Callable[..., Any], tmp_path: Path) -> Any:
    config = tmp_path / "realtime.yaml"
    config.write_text(f"events:\n  progress_interval_ms: {INTERVAL_MS}\n")
    return start_server(args=["--config", str(config)])


@pytest.fixture(params=[TusUploader, RestUploader], ids=["tus", "rest"])
def uploader(request: pytest.FixtureRequest, server: Any) -> Uploader:
    return request.param(server)  # type: ignore[no-any-return]


# ============================================================ 1. join: ack and snapshot


def test_join_acks_the_room_and_sends_the_current_offset_at_once(uploader: Uploader) -> None:
    async def scenario() -> None:
        source = os.urandom(96 * KiB)
        upload_id = await off_loop(uploader.create, len(source))
        first = 40 * KiB + 3
        assert (
            await off_loop(uploader.send, upload_id, 0, source[:first], len(source))
            == OK_STATUS[uploader.name]
        )
        stored = await off_loop(uploader.offset, upload_id)
        assert stored == first

        async with watching(uploader.server) as watcher:
            ack = await watcher.join(upload_id)
            assert ack == {"ok": True, "room": f"upload:{upload_id}"}
            snapshot = await watcher.wait_for("uploadProgress", upload_id, timeout=AT_ONCE)
            assert snapshot["uploadId"] == upload_id
            assert snapshot["offset"] == stored
            assert snapshot["size"] == len(source)
            assert snapshot["percent"] == pytest.approx(stored * 100 / len(source), abs=0.01)
            assert isinstance(snapshot["bytesPerSecond"], int | float)
            assert watcher.names() == ["uploadProgress"], "only the snapshot, nothing else"

    run(scenario())


# ============================================================ 2. progress, then one complete


def test_progress_is_monotonic_and_ends_at_100_then_one_complete(uploader: Uploader) -> None:
    async def scenario() -> None:
        source = os.urandom(1024 * KiB + 17)
        upload_id = await off_loop(uploader.create, len(source))
        async with watching(uploader.server) as watcher:
            await watcher.join(upload_id)
            for offset, piece in pieces(source, 256 * KiB):
                status = await off_loop(uploader.send, upload_id, offset, piece, len(source))
                assert status == OK_STATUS[uploader.name]
            complete = await watcher.wait_for("uploadComplete", upload_id)
            await asyncio.sleep(QUIET)  # a second uploadComplete would come now

            progress = watcher.payloads("uploadProgress")
            offsets = [event["offset"] for event in progress]
            assert offsets == sorted(offsets), f"progress went backwards: {offsets}"
            assert len(progress) >= 5, "the snapshot, then at least one per chunk request"
            for event in progress:
                assert event["uploadId"] == upload_id
                assert event["size"] == len(source)
                assert event["percent"] == pytest.approx(
                    event["offset"] * 100 / len(source), abs=0.01
                )
            assert (progress[-1]["offset"], progress[-1]["percent"]) == (len(source), 100)
            completes = watcher.names().count("uploadComplete")
            assert completes == 1, f"uploadComplete came {completes} times"
            assert watcher.names()[-1] == "uploadComplete", "complete comes after all progress"
            assert "uploadError" not in watcher.names()

            assert complete["uploadId"] == upload_id
            assert complete["size"] == len(source)
            assert complete["filename"] == "song.bin"
            assert complete["sha256"] == hashlib.sha256(source).hexdigest()
            assert complete["url"].startswith(uploader.server.url + "/"), complete["url"]
            assert await off_loop(download, complete["url"]) == source

    run(scenario())


# ============================================================ 3. progress during one slow request


def test_progress_arrives_during_a_slow_request_but_no_more_often_than_the_interval(
    uploader: Uploader,
) -> None:
    async def scenario() -> None:
        piece, count, pause = 24 * KiB, 30, 0.1  # ~3 s of sending, one piece every 100 ms
        source = os.urandom(piece * count)
        upload_id = await off_loop(uploader.create, len(source))
        async with watching(uploader.server) as watcher:
            await watcher.join(upload_id)
            await watcher.wait_for("uploadProgress", upload_id, timeout=AT_ONCE)  # snapshot
            joined = len(watcher.seen)
            head = uploader.chunk_head(upload_id, 0, len(source), len(source))
            status, answered = await off_loop(
                send_slowly,
                uploader.server,
                head,
                [source[i : i + piece] for i in range(0, len(source), piece)],
                pause,
            )
            assert status == OK_STATUS[uploader.name]
            await watcher.wait_for(
                "uploadProgress", upload_id, lambda event: event["offset"] == len(source)
            )

            # Upload progress only: processing's own events follow the end-of-request flush.
            events = [
                seen
                for seen in watcher.seen[joined:]
                if seen.name == "uploadProgress" and seen.data["stage"] == "uploading"
            ]
            during = [
                seen for seen in events if seen.data["offset"] < len(source) and seen.at < answered
            ]
            assert len(during) >= 5, (
                f"only {len(during)} progress events arrived during a ~3 s request "
                f"(interval {INTERVAL_MS} ms): {[seen.data['offset'] for seen in events]}"
            )
            gaps = [
                round(later.at - earlier.at, 3)
                for earlier, later in itertools.pairwise(events[:-1])
            ]
            assert all(gap >= MIN_GAP for gap in gaps), (
                f"progress came more often than every {INTERVAL_MS} ms: gaps {gaps}"
            )
            assert events[-1].data["offset"] == len(source), "the end-of-request flush"
            offsets = [seen.data["offset"] for seen in events]
            assert offsets == sorted(offsets)
            assert all(seen.data["bytesPerSecond"] > 0 for seen in events)

    run(scenario())


# ============================================================ 4. uploadError


def test_a_bad_checksum_gives_checksum_mismatch_and_keeps_the_offset(server: Any) -> None:
    """tus only: the REST front has no way to send a checksum (CONTRACT.md, REST)."""
    uploader = TusUploader(server)

    async def scenario() -> None:
        source = os.urandom(64 * KiB)
        first = 16 * KiB
        upload_id = await off_loop(uploader.create, len(source))
        assert await off_loop(uploader.send, upload_id, 0, source[:first], len(source)) == 204
        async with watching(server) as watcher:
            await watcher.join(upload_id)
            wrong = b64(hashlib.sha1(b"not these bytes").digest())
            status = await off_loop(
                uploader.send,
                upload_id,
                first,
                source[first:],
                len(source),
                False,
                {"Upload-Checksum": f"sha1 {wrong}"},
            )
            assert status == 460
            error = await watcher.wait_for("uploadError", upload_id)
            assert error["code"] == "checksum-mismatch"
            assert error["retryable"] is True
            assert isinstance(error["message"], str)
            assert error["message"]
            assert await off_loop(uploader.offset, upload_id) == first, "the bad bytes stay out"
            assert error["offset"] == first
            assert all(event["offset"] <= first for event in watcher.payloads("uploadProgress"))

            # Retryable indeed: the same bytes with the right digest finish the upload.
            right = b64(hashlib.sha1(source[first:]).digest())
            status = await off_loop(
                uploader.send,
                upload_id,
                first,
                source[first:],
                len(source),
                False,
                {"Upload-Checksum": f"sha1 {right}"},
            )
            assert status == 204
            complete = await watcher.wait_for("uploadComplete", upload_id)
            assert complete["sha256"] == hashlib.sha256(source).hexdigest()
            assert watcher.names().count("uploadError") == 1

    run(scenario())


def test_a_chunk_refused_before_its_body_for_its_length_gives_size_exceeded(
    uploader: Uploader,
) -> None:
    """CONTRACT.md: `size-exceeded` "whether the request's length shows it before the body is
    read or the body runs past it": a chunk whose Content-Length passes the upload's length
    gets its 413 before a byte is read, and the room hears it; nothing is stored."""

    async def scenario() -> None:
        upload_id = await off_loop(uploader.create, 10)
        async with watching(uploader.server) as watcher:
            await watcher.join(upload_id)
            status = await off_loop(uploader.send, upload_id, 0, b"x" * 20, None)
            assert status == 413
            error = await watcher.wait_for("uploadError", upload_id)
            assert (error["code"], error["retryable"], error["offset"]) == (
                "size-exceeded",
                False,
                0,
            )
            assert await off_loop(uploader.offset, upload_id) == 0
            await asyncio.sleep(QUIET)
            assert watcher.names().count("uploadError") == 1

    run(scenario())


def test_upload_complete_carries_binary_metadata_as_text_and_base64(server: Any) -> None:
    """A tus metadata value that is not UTF-8: `filename` and `metadata` show it as text
    (U+FFFD for the bytes that are not UTF-8), `metadataBinary` has its exact bytes."""
    raw = b"\xc0\xff video.mp4"

    async def scenario() -> None:
        headers = {
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "3",
            "Upload-Metadata": f"filename {b64(raw)},kind {b64(b'clip')}",
        }
        created = await off_loop(lambda: HTTP.post(server.files_url, headers=headers, timeout=WAIT))
        assert created.status_code == 201, created.text
        upload_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        async with watching(server) as watcher:
            await watcher.join(upload_id)
            assert await off_loop(TusUploader(server).send, upload_id, 0, b"abc", 3) == 204
            complete = await watcher.wait_for("uploadComplete", upload_id)
        text = raw.decode("utf-8", "replace")
        assert complete["filename"] == text
        assert complete["metadata"] == {"filename": text, "kind": "clip"}
        assert complete["metadataBinary"] == {"filename": base64.b64encode(raw).decode()}

    run(scenario())


def test_progress_never_reports_bytes_that_a_bad_checksum_drops(server: Any) -> None:
    """tus only. Progress is "as bytes are persisted": a chunk whose checksum fails is
    dropped whole, so no event may have claimed its bytes (nor may progress go backwards)."""
    uploader = TusUploader(server)

    async def scenario() -> None:
        piece, count, pause = 16 * KiB, 12, 0.1  # ~1.1 s: several throttle intervals
        source = os.urandom(piece * count)
        upload_id = await off_loop(uploader.create, len(source))
        async with watching(server) as watcher:
            await watcher.join(upload_id)
            wrong = b64(hashlib.sha1(b"not these bytes").digest())
            head = uploader.chunk_head(
                upload_id, 0, len(source), len(source), False, {"Upload-Checksum": f"sha1 {wrong}"}
            )
            status, _ = await off_loop(
                send_slowly,
                server,
                head,
                [source[i : i + piece] for i in range(0, len(source), piece)],
                pause,
            )
            assert status == 460
            await watcher.wait_for("uploadError", upload_id)
            assert await off_loop(uploader.offset, upload_id) == 0
            offsets = [event["offset"] for event in watcher.payloads("uploadProgress")]
            assert max(offsets) == 0, (
                f"uploadProgress claimed bytes the checksum mismatch then dropped: {offsets}"
            )

    run(scenario())


def test_a_chunk_cut_mid_body_gives_connection_lost_and_is_retryable(uploader: Uploader) -> None:
    async def scenario() -> None:
        source = os.urandom(256 * KiB)
        half = 100 * KiB + 5
        upload_id = await off_loop(uploader.create, len(source))
        async with watching(uploader.server) as watcher:
            await watcher.join(upload_id)
            head = uploader.chunk_head(upload_id, 0, len(source), len(source))
            await off_loop(send_then_close, uploader.server, head + source[:half])

            error = await watcher.wait_for("uploadError", upload_id)
            assert error["code"] == "connection-lost"
            assert error["retryable"] is True
            assert error["offset"] == half, "every byte that arrived is kept"
            assert await off_loop(uploader.offset, upload_id) == half
            assert watcher.payloads("uploadProgress")[-1]["offset"] == half

            status = await off_loop(uploader.send, upload_id, half, source[half:], len(source))
            assert status == OK_STATUS[uploader.name]
            complete = await watcher.wait_for("uploadComplete", upload_id)
            assert complete["sha256"] == hashlib.sha256(source).hexdigest()
            assert watcher.names().count("uploadError") == 1

    run(scenario())


# ============================================================ 5. rooms


def test_events_reach_only_their_room_and_stop_after_leave(uploader: Uploader) -> None:
    async def scenario() -> None:
        source_a, source_b = os.urandom(48 * KiB), os.urandom(80 * KiB)
        upload_a = await off_loop(uploader.create, len(source_a))
        upload_b = await off_loop(uploader.create, len(source_b))
        async with watching(uploader.server) as in_a, watching(uploader.server) as in_b:
            await in_a.join(upload_a)
            await in_b.join(upload_b)
            await in_a.wait_for("uploadProgress", upload_a, timeout=AT_ONCE)

            await upload_whole(uploader, upload_b, source_b)
            await in_b.wait_for("uploadComplete", upload_b)
            await asyncio.sleep(QUIET)
            assert in_a.upload_ids() == {upload_a}, "upload B's events reached room A"
            assert in_a.names() == ["uploadProgress"], "room A got only its snapshot"

            seen_before_leave = len(in_a.seen)
            assert await in_a.leave(upload_a) == {"ok": True}
            async with watching(uploader.server) as witness:
                await witness.join(upload_a)
                await upload_whole(uploader, upload_a, source_a)
                await witness.wait_for("uploadComplete", upload_a)
                await asyncio.sleep(QUIET)
            assert in_a.seen[seen_before_leave:] == [], (
                f"events after leaveUploadRoom: {in_a.names()[seen_before_leave:]}"
            )
            assert in_b.upload_ids() == {upload_b}, "upload A's events reached room B"

    run(scenario())


# ============================================================ 6. deferred length


def test_size_and_percent_are_null_until_the_length_is_declared(uploader: Uploader) -> None:
    async def scenario() -> None:
        source = os.urandom(64 * KiB + 9)
        half = 30 * KiB
        upload_id = await off_loop(uploader.create, None)
        async with watching(uploader.server) as watcher:
            await watcher.join(upload_id)
            snapshot = await watcher.wait_for("uploadProgress", upload_id, timeout=AT_ONCE)
            assert (snapshot["offset"], snapshot["size"], snapshot["percent"]) == (0, None, None)

            status = await off_loop(uploader.send, upload_id, 0, source[:half], None)
            assert status == OK_STATUS[uploader.name]
            await watcher.wait_for(
                "uploadProgress", upload_id, lambda event: event["offset"] == half
            )
            for event in watcher.payloads("uploadProgress"):
                assert (event["size"], event["percent"]) == (None, None), event
            if isinstance(uploader, RestUploader):
                status_now = await off_loop(uploader.status, upload_id)
                assert (status_now["size"], status_now["percent"]) == (None, None)
            declared_from = len(watcher.seen)

            status = await off_loop(
                uploader.send, upload_id, half, source[half:], len(source), True
            )
            assert status == OK_STATUS[uploader.name]
            complete = await watcher.wait_for("uploadComplete", upload_id)
            after = [
                seen.data for seen in watcher.seen[declared_from:] if seen.name == "uploadProgress"
            ]
            assert after, "no progress for the chunk that declared the length"
            assert all(event["size"] == len(source) for event in after), after
            assert (after[-1]["offset"], after[-1]["percent"]) == (len(source), 100)
            assert complete["size"] == len(source)
            assert complete["sha256"] == hashlib.sha256(source).hexdigest()

    run(scenario())


# ============================================================ 7. invalid joins


UNKNOWN_ID = "-AAAAAAAAAAAAAAAAAAAAA"  # like a real id; one in 64 starts with "-"

# (label, the positional arguments of the emit). python-socketio sends `None` as *no*
# argument at all, which is what a client's `emit("joinUploadRoom", ack)` sends too.
INVALID_JOINS: list[tuple[str, tuple[Any, ...]]] = [
    ("number", (12345,)),
    ("float", (1.5,)),
    ("object", ({"uploadId": UNKNOWN_ID},)),
    ("list", ([UNKNOWN_ID],)),
    ("null", (None,)),
    ("no argument (None)", ()),
    ("empty string", ("",)),
    ("100 000 characters", ("a" * 100_000,)),
    ("path", ("../../etc/passwd",)),
    ("unknown well-formed id", (UNKNOWN_ID,)),
    ("two arguments", (UNKNOWN_ID, UNKNOWN_ID)),
]


def test_invalid_joins_get_an_error_ack_and_nobody_is_disconnected(uploader: Uploader) -> None:
    async def scenario() -> None:
        source = os.urandom(32 * KiB)
        upload_id = await off_loop(uploader.create, len(source))
        async with watching(uploader.server) as bystander, watching(uploader.server) as watcher:
            await bystander.join(upload_id)
            misanswered: dict[str, Any] = {}
            for label, args in INVALID_JOINS:
                try:
                    ack = await watcher.sio.call("joinUploadRoom", args, timeout=2.0)
                except socketio.exceptions.TimeoutError:
                    ack = "no acknowledgement within 2 s"
                if not (isinstance(ack, dict) and ack.get("ok") is False and ack.get("error")):
                    misanswered[label] = ack
                assert watcher.sio.connected, f"disconnected after the {label} join"
            assert not watcher.disconnected
            assert not bystander.disconnected
            assert watcher.seen == [], f"events after invalid joins: {watcher.names()}"

            # The same socket still joins a real upload, and the bystander still listens.
            assert await watcher.join(upload_id) == {"ok": True, "room": f"upload:{upload_id}"}
            await watcher.wait_for("uploadProgress", upload_id, timeout=AT_ONCE)
            await upload_whole(uploader, upload_id, source)
            await watcher.wait_for("uploadComplete", upload_id)
            await bystander.wait_for("uploadComplete", upload_id)
            assert bystander.sio.connected
            assert not bystander.disconnected
            assert misanswered == {}, (
                "these joins did not get {'ok': false, 'error': ...}: "
                f"{ {label: short(ack) for label, ack in misanswered.items()} }\n"
                + uploader.server.log_tail(30)
            )

    run(scenario())


# ============================================================ the Node socket.io-client


def test_the_node_socket_io_client_watches_a_tus_upload(node: str, server: Any) -> None:
    uploader = TusUploader(server)
    source = os.urandom(512 * KiB + 1)
    upload_id = uploader.create(len(source))
    watcher = subprocess.Popen(
        [
            node,
            str(WATCH_JS),
            "--url",
            server.url,
            f"--upload-id={upload_id}",
            "--timeout-ms",
            "20000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=pump_lines, args=(watcher.stdout, lines), daemon=True).start()
    printed: list[dict[str, Any]] = []
    try:
        # Upload only once the watcher is in the room, so it sees every event.
        deadline = time.monotonic() + 15.0
        while not any(line["event"] == "joinUploadRoom" for line in printed):
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"watch-upload.mjs printed no join ack within 15 s: {printed}")
            if line is None:
                code = watcher.wait(timeout=5.0)
                stderr = watcher.stderr.read() if watcher.stderr else ""
                pytest.fail(f"watch-upload.mjs ended before its join ack (exit {code}): {stderr}")
            printed.append(json.loads(line))
        for offset, piece in pieces(source, 128 * KiB):
            assert uploader.send(upload_id, offset, piece, len(source)) == 204
        code = watcher.wait(timeout=20.0)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.stderr is not None
    stderr = watcher.stderr.read()
    while (line := lines.get(timeout=5.0)) is not None:
        printed.append(json.loads(line))
    assert code == 0, f"watch-upload.mjs exited {code}: {stderr}\n{printed}"

    names = [line["event"] for line in printed]
    assert names.count("joinUploadRoom") == 1
    ack = next(line["data"] for line in printed if line["event"] == "joinUploadRoom")
    assert ack == {"ok": True, "room": f"upload:{upload_id}"}
    progress = [line["data"] for line in printed if line["event"] == "uploadProgress"]
    offsets = [event["offset"] for event in progress]
    assert offsets[0] == 0, "the join snapshot"
    assert offsets == sorted(offsets), offsets
    assert offsets[-1] == len(source), offsets
    assert len(progress) >= 5, "the snapshot and one per PATCH"
    assert names.count("uploadComplete") == 1, names
    assert names[-1] == "uploadComplete", names
    complete = printed[-1]["data"]
    assert complete["uploadId"] == upload_id
    assert complete["sha256"] == hashlib.sha256(source).hexdigest()


def test_watch_upload_mjs_exits_1_when_it_cannot_connect(node: str) -> None:
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = subprocess.run(
        [
            node,
            str(WATCH_JS),
            "--url",
            f"http://127.0.0.1:{port}",
            f"--upload-id={UNKNOWN_ID}",
            "--timeout-ms",
            "5000",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.strip()


def test_watch_upload_mjs_exits_1_on_its_timeout(node: str, server: Any) -> None:
    upload_id = TusUploader(server).create(10)  # nothing is ever sent
    proc = subprocess.run(
        [
            node,
            str(WATCH_JS),
            "--url",
            server.url,
            f"--upload-id={upload_id}",
            "--timeout-ms",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(line["event"] for line in printed) == ["joinUploadRoom", "uploadProgress"]
    assert "1000 ms" in proc.stderr


# ============================================================ Socket.IO helpers


@dataclass
class Seen:
    name: str
    data: Any
    at: float  # time.monotonic() on arrival


@dataclass
class Watcher:
    """A python-socketio AsyncClient that records every event it receives."""

    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(reconnection=False)
    )
    seen: list[Seen] = field(default_factory=list)
    disconnected: bool = False

    def __post_init__(self) -> None:
        self.sio.on("*", self._record)  # every event, expected or not
        self.sio.on("disconnect", self._on_disconnect)

    def _record(self, name: str, data: Any = None, *more: Any) -> None:
        self.seen.append(Seen(name, data, time.monotonic()))

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnected = True

    async def join(self, upload_id: str) -> Any:
        return await self.sio.call("joinUploadRoom", upload_id, timeout=WAIT)

    async def leave(self, upload_id: str) -> Any:
        return await self.sio.call("leaveUploadRoom", upload_id, timeout=WAIT)

    def names(self) -> list[str]:
        return [seen.name for seen in self.seen]

    def payloads(self, name: str) -> list[dict[str, Any]]:
        return [seen.data for seen in self.seen if seen.name == name]

    def upload_ids(self) -> set[str]:
        return {seen.data.get("uploadId") for seen in self.seen}

    async def wait_for(
        self,
        name: str,
        upload_id: str,
        check: Callable[[dict[str, Any]], bool] = lambda event: True,
        timeout: float = WAIT,
    ) -> dict[str, Any]:
        """The first `name` event for `upload_id` that passes `check`, within `timeout`."""

        def found() -> dict[str, Any] | None:
            return next(
                (
                    seen.data
                    for seen in self.seen
                    if seen.name == name
                    and seen.data.get("uploadId") == upload_id
                    and check(seen.data)
                ),
                None,
            )

        async def poll() -> dict[str, Any]:
            while (event := found()) is None:
                await asyncio.sleep(0.01)
            return event

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            pytest.fail(
                f"no {name} for {upload_id} within {timeout} s; "
                f"got {[(seen.name, seen.data) for seen in self.seen]}"
            )


@asynccontextmanager
async def watching(server: Any) -> Any:
    watcher = Watcher()
    await asyncio.wait_for(
        watcher.sio.connect(server.url, transports=["websocket"], wait_timeout=WAIT), WAIT + 1
    )
    try:
        yield watcher
    finally:
        await asyncio.wait_for(watcher.sio.disconnect(), WAIT)


def run(scenario: Awaitable[None]) -> None:
    run_bounded(scenario, TEST_DEADLINE)


async def upload_whole(uploader: Uploader, upload_id: str, source: bytes) -> None:
    for offset, piece in pieces(source, 32 * KiB):
        status = await off_loop(uploader.send, upload_id, offset, piece, len(source))
        assert status == OK_STATUS[uploader.name]


# ============================================================ HTTP helpers


def request_head(server: Any, method: str, path: str, headers: dict[str, str]) -> bytes:
    host = urlsplit(server.url).netloc
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def raw_connection(server: Any) -> Iterator[socket.socket]:
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        yield sock


def read_status(sock: socket.socket) -> int:
    """Read the answer's status line (and whatever follows) until the server closes."""
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(64 * KiB)
        if not chunk:
            break
        received += chunk
    assert received.startswith(b"HTTP/1.1 "), f"no HTTP answer: {received[:200]!r}"
    return int(received.split(b" ", 2)[1])


def send_slowly(
    server: Any, head: bytes, body_pieces: list[bytes], pause: float
) -> tuple[int, float]:
    """Send the head, then one piece every `pause` s; return (status, when it was answered)."""
    with raw_connection(server) as sock:
        sock.sendall(head)
        for index, piece in enumerate(body_pieces):
            if index:
                time.sleep(pause)  # the pacing *is* the scenario: a slow client
            sock.sendall(piece)
        status = read_status(sock)
        return status, time.monotonic()


def send_then_close(server: Any, data: bytes) -> None:
    """Send a request cut short, then close (FIN): the rest of the body never comes."""
    with raw_connection(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def download(url: str) -> bytes:
    response = HTTP.get(url, timeout=WAIT)
    assert response.status_code == 200, (response.status_code, response.text[:200])
    return response.content


def pieces(source: bytes, size: int) -> Iterator[tuple[int, bytes]]:
    for offset in range(0, len(source), size):
        yield offset, source[offset : offset + size]


def pump_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        if line.strip():
            lines.put(line)
    lines.put(None)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def test_an_error_counts_as_a_clients_only_with_no_formforge_code_on_its_stack() -> None:
    with pytest.raises(json.JSONDecodeError) as from_the_library:
        json.loads('42["x"')  # what python-socketio meets in a broken frame
    assert raised_for_a_client(from_the_library.value)
    with pytest.raises(UploadError) as from_formforge:
        parse_metadata("filename " + "x" * 64, 16)  # a bug of ours has our frames like this
    assert not raised_for_a_client(from_formforge.value)
