"""Progress through processing, against real `formforge serve` processes.

CONTRACT.md, Socket.IO, "During processing": `uploadProgress` goes on to the room with
`"stage": "processing"` (and `"stage": "uploading"` before), `offset` = `size`, and
`processing: {"percent", "message"}` -- the whole-file hash's progress, then whatever a
post-finish hook reports about its own work (each hook transport has a way to report
progress), at most every `events.progress_interval_ms`, and always one as processing
starts, so every upload's room hears `stage: processing` before its `uploadComplete`.
REST `GET` shows state `processing` with the same `processing` object; so does the
`joinUploadRoom` snapshot.

The hooks are real (tests/hook_reporters.py: an HTTP receiver, a command, a plain and an
async Python callable); every payload is validated against docs/asyncapi.yaml and
docs/openapi.yaml.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.async_helpers import off_loop
from tests.hook_reporters import BURST, ENDS, HttpEnd, PythonEnd, ReporterEnd
from tests.protocol.test_realtime import (
    HTTP,
    RestUploader,
    TusUploader,
    Watcher,
    pieces,
    run,
    watching,
)
from tests.schemas import validate_event, validate_rest

pytestmark = pytest.mark.slow

KiB, MiB = 1024, 1024 * 1024
INTERVAL_MS = 300
WAIT = 10.0


def serve(
    start_server: Callable[..., Any],
    tmp_path: Path,
    interval_ms: int,
    end: ReporterEnd | None = None,
    **more: Any,
) -> Any:
    config: dict[str, Any] = {
        "events": {"progress_interval_ms": interval_ms},
        "storage": {"fsync": False},
        **more,
    }
    if end is not None:
        config["hooks"] = {"timeout_seconds": 60, "post_finish": [end.target()]}
    path = tmp_path / "processing.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_server(args=["--config", str(path)], env=end.env if end else {})


@pytest.fixture(params=list(ENDS))
def end(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReporterEnd]:
    hook_end = ENDS[request.param](tmp_path)
    yield hook_end
    hook_end.close()


def stage(watcher: Watcher, name: str) -> list[dict[str, Any]]:
    return [event for event in watcher.payloads("uploadProgress") if event["stage"] == name]


def said(message: str) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        return bool(event["processing"]) and event["processing"]["message"] == message

    return check


def check_the_room(watcher: Watcher, size: int) -> None:
    """Every event as documented; uploading, then processing, then one uploadComplete."""
    for event in watcher.payloads("uploadProgress"):
        validate_event("uploadProgress", event)
    stages = [
        seen.data["stage"] if seen.name == "uploadProgress" else seen.name for seen in watcher.seen
    ]
    assert "processing" in stages, stages
    first = stages.index("processing")
    assert "uploading" not in stages[first:], f"uploading after processing: {stages}"
    assert stages[-1] == "uploadComplete", stages
    assert stages.count("uploadComplete") == 1, stages
    for event in stage(watcher, "processing"):
        assert (event["offset"], event["size"], event["percent"]) == (size, size, 100), event
        assert event["processing"] is not None


# ============================================================ the hash


def test_a_room_hears_uploading_then_the_hashs_progress_then_complete(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A progress interval of 0 sends every report: the disk store's hash reports once per
    MiB, so an upload of 8.5 MiB gives 8 reports short of 100 %."""
    server = serve(start_server, tmp_path, interval_ms=0)
    uploader = TusUploader(server)
    source = os.urandom(8 * MiB + 512 * KiB)

    async def scenario() -> None:
        upload_id = await off_loop(uploader.create, len(source))
        async with watching(server) as watcher:
            await watcher.join(upload_id)
            for offset, piece in pieces(source, 2 * MiB):
                assert await off_loop(uploader.send, upload_id, offset, piece, len(source)) == 204
            complete = await watcher.wait_for("uploadComplete", upload_id)
        check_the_room(watcher, len(source))
        uploading = stage(watcher, "uploading")
        assert uploading[-1]["offset"] == len(source)
        assert all(event["processing"] is None for event in uploading)
        processing = [event["processing"] for event in stage(watcher, "processing")]
        assert processing[0] == {"percent": 0, "message": "hashing"}, "the start, at once"
        assert {step["message"] for step in processing} == {"hashing"}
        percents = [step["percent"] for step in processing]
        assert percents == sorted(percents), percents
        assert percents[-1] == 100, percents
        assert len([p for p in percents if 0 < p < 100]) >= 8, percents
        assert complete["sha256"] == hashlib.sha256(source).hexdigest()

    run(scenario())


def test_a_tiny_rest_upload_hears_processing_before_complete(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, interval_ms=60_000)  # only the start gets out
    uploader = RestUploader(server)

    async def scenario() -> None:
        upload_id = await off_loop(uploader.create, 3)
        async with watching(server) as watcher:
            await watcher.join(upload_id)
            assert await off_loop(uploader.send, upload_id, 0, b"abc", 3) == 200
            await watcher.wait_for("uploadComplete", upload_id)
        check_the_room(watcher, 3)
        assert [event["processing"] for event in stage(watcher, "processing")] == [
            {"percent": 0, "message": "hashing"}
        ]

    run(scenario())


# ============================================================ what hooks report


async def upload_watched(server: Any, watcher: Watcher) -> str:
    """A small upload whose room `watcher` joined before its one PATCH."""
    upload_id = await off_loop(TusUploader(server).create, 5000)
    await watcher.join(upload_id)
    assert await off_loop(TusUploader(server).send, upload_id, 0, b"p" * 5000, 5000) == 204
    return upload_id


def upload_small(server: Any) -> str:
    uploader = TusUploader(server)
    upload_id = uploader.create(5000)
    assert uploader.send(upload_id, 0, b"p" * 5000, 5000) == 204
    return upload_id


def test_each_transports_reports_reach_the_room_throttled(
    start_server: Callable[..., Any], tmp_path: Path, end: ReporterEnd
) -> None:
    server = serve(start_server, tmp_path, INTERVAL_MS, end)

    async def scenario() -> None:
        async with watching(server) as watcher:
            upload_id = await upload_watched(server, watcher)
            indexing = await watcher.wait_for("uploadProgress", upload_id, said("indexing"))
            assert indexing["processing"]["percent"] == 25
            end.release(1)
            finishing = await watcher.wait_for("uploadProgress", upload_id, said("finishing"))
            assert finishing["processing"]["percent"] == 90, "a burst's last word gets out"
            began, ended = end.burst_span()
            end.release(2)
            await watcher.wait_for("uploadComplete", upload_id)
        check_the_room(watcher, 5000)
        # Throttled: one event when the interval is up, one per interval the burst lasted,
        # and the one holding its last word (one more for the command's pipe).
        bursts = [event for event in stage(watcher, "processing") if said("burst")(event)]
        allowed = 3 + int((ended - began) * 1000 / INTERVAL_MS)
        assert len(bursts) <= allowed, (len(bursts), allowed, BURST)
        if isinstance(end, HttpEnd):
            [url] = end.progress_urls
            assert url.startswith(server.url + "/hooks/progress/"), url
            assert set(end.report_statuses) == {204}

    run(scenario())


def test_hook_garbage_is_clamped_or_dropped_with_one_log_line(
    start_server: Callable[..., Any], tmp_path: Path, end: ReporterEnd
) -> None:
    (end.control / "garbage").touch()
    server = serve(start_server, tmp_path, 0, end)  # no throttle: every report goes out

    async def scenario() -> None:
        async with watching(server) as watcher:
            upload_id = await upload_watched(server, watcher)
            await watcher.wait_for("uploadProgress", upload_id, said("indexing"))
            if isinstance(end, HttpEnd):
                await off_loop(post_nonsense, end.progress_urls[0])
            end.release(1)
            end.release(2)
            complete = await watcher.wait_for("uploadComplete", upload_id)
        check_the_room(watcher, 5000)  # every event still valid: clamped and cut
        steps = [event["processing"] for event in stage(watcher, "processing")]
        assert {"percent": 100, "message": "x" * 200} in steps, "1e9 clamped, 5000 x cut"
        assert {"percent": None, "message": "two lines"} in steps, "one printable line"
        assert all(step["percent"] is None or 0 <= step["percent"] <= 100 for step in steps)
        assert complete["sha256"] == hashlib.sha256(b"p" * 5000).hexdigest()
        lines = [
            line for line in server.output if f"hook progress ignored upload_id={upload_id}" in line
        ]
        assert len(lines) == 1, lines
        if isinstance(end, HttpEnd):
            late = HTTP.post(end.progress_urls[0], json={"percent": 50}, timeout=WAIT)
            assert late.status_code == 404, "the token died with the hook call"
            assert set(end.report_statuses) == {204}

    run(scenario())


def post_nonsense(url: str) -> None:
    """What a broken HTTP hook might send to its progress URL while it runs."""
    for body, status in (
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b"{" * 50_000, 413),
        (b'{"percent": 1e999}', 204),
    ):
        answer = HTTP.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=WAIT
        )
        assert answer.status_code == status, (body[:20], answer.status_code, answer.text)
    assert HTTP.post(url[:-4] + "AAAA", json={}, timeout=WAIT).status_code == 404


def test_with_auth_on_a_progress_url_is_its_own_authorization(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    end = HttpEnd(tmp_path)
    server = serve(start_server, tmp_path, 0, end, auth={"bearer_tokens": ["sekrit"]})
    bearer = {"Authorization": "Bearer sekrit", "Tus-Resumable": "1.0.0"}
    try:
        created = HTTP.post(
            server.files_url, headers={**bearer, "Upload-Length": "3"}, timeout=WAIT
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[-1]
        assert (
            HTTP.patch(
                created.headers["Location"],
                data=b"abc",
                timeout=WAIT,
                headers={
                    **bearer,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
            ).status_code
            == 204
        )
        status = wait_for_state(
            server,
            upload_id,
            "processing",
            bearer,
            lambda status: status["processing"]["message"] == "indexing",
        )
        assert status["processing"] == {"percent": 25, "message": "indexing"}
        assert end.report_statuses == [204], "the hook sent no bearer token, only its URL"
        assert (
            HTTP.post(end.progress_urls[0][:-4] + "AAAA", json={}, timeout=WAIT).status_code == 404
        ), "a token of its own, not none"
    finally:
        end.close()
    wait_for_state(server, upload_id, "complete", bearer)


# ============================================================ REST, the join snapshot, restarts


@contextmanager
def hooked_upload(start_server: Callable[..., Any], tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A server whose post-finish Python hook said "indexing" and waits until the block
    ends; the upload is in processing, and a room joined now hears that."""
    end = PythonEnd(tmp_path)
    server = serve(start_server, tmp_path, INTERVAL_MS, end)
    try:
        upload_id = upload_small(server)
        asyncio_run_until_indexing(server, upload_id)
        yield server, upload_id
    finally:
        end.close()


def test_rest_and_a_late_join_show_the_processing_step(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    with hooked_upload(start_server, tmp_path) as (server, upload_id):
        status = HTTP.get(f"{server.url}/api/files/upload/{upload_id}", timeout=WAIT).json()
        validate_rest("UploadStatus", status)
        assert status["state"] == "processing"
        assert status["processing"] == {"percent": 25, "message": "indexing"}
    done = wait_for_state(server, upload_id, "complete")
    validate_rest("UploadStatus", done)
    assert done["processing"] is None


def test_processing_resumed_after_a_restart_is_heard_as_processing(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    with hooked_upload(start_server, tmp_path) as (server, upload_id):
        server.restart()  # SIGKILL mid-hook; processing starts over at start-up
        asyncio_run_until_indexing(server, upload_id)
    assert wait_for_state(server, upload_id, "complete")["sha256"]


def test_a_concatenation_final_is_heard_processing(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    end = PythonEnd(tmp_path)
    server = serve(start_server, tmp_path, INTERVAL_MS, end)
    tus = {"Tus-Resumable": "1.0.0"}
    try:
        parts = []
        for data in (b"first part ", b"second part"):
            created = HTTP.post(
                server.files_url,
                timeout=WAIT,
                headers={**tus, "Upload-Concat": "partial", "Upload-Length": str(len(data))},
            )
            parts.append(created.headers["Location"])
            patched = HTTP.patch(
                parts[-1],
                data=data,
                timeout=WAIT,
                headers={
                    **tus,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            assert patched.status_code == 204
        final = HTTP.post(
            server.files_url,
            timeout=WAIT,
            headers={**tus, "Upload-Concat": "final;" + " ".join(parts)},
        )
        assert final.status_code == 201, final.text
        asyncio_run_until_indexing(server, final.headers["Location"].rsplit("/", 1)[-1])
    finally:
        end.close()


def asyncio_run_until_indexing(server: Any, upload_id: str) -> None:
    """Join the room (its snapshot says `processing`), then hear the hook say "indexing"."""

    async def scenario() -> None:
        async with watching(server) as watcher:
            assert (await watcher.join(upload_id))["ok"]
            snapshot = await watcher.wait_for("uploadProgress", upload_id)
            validate_event("uploadProgress", snapshot)
            assert snapshot["stage"] == "processing", snapshot
            await watcher.wait_for("uploadProgress", upload_id, said("indexing"))

    run(scenario())


def wait_for_state(
    server: Any,
    upload_id: str,
    state: str,
    headers: dict[str, str] | None = None,
    check: Callable[[dict[str, Any]], bool] = lambda status: True,
) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            status = HTTP.get(
                f"{server.url}/api/files/upload/{upload_id}", timeout=WAIT, headers=headers
            ).json()
            if status["state"] == state and check(status):
                return dict(status)
            await asyncio.sleep(0.05)

    return asyncio.run(asyncio.wait_for(poll(), 30.0))
