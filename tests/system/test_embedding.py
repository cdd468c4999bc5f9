"""FormForge inside another Tornado application: the README's example, run for real.

The example (examples/embedded_app.py, shown whole in the README) mounts FormForge under
`/uploads/` beside a route of its own. Real clients go through it: tus-js-client and
tuspy upload, tuspy resumes after the app's process is killed, and a Socket.IO client in
the upload's room sees progress and completion with URLs under the prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import socketio
from tusclient import client as tus_client
from tusclient.uploader.uploader import Uploader

from tests.conftest import JS_DIR, clean_environ

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "embedded_app.py"
START_SECONDS = 30


class ExampleApp:
    """The example as a child process, on a fixed port once it has one (clients keep URLs)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> ExampleApp:
        command = [
            sys.executable,
            str(EXAMPLE),
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_environ(),
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and (line := self.proc.stdout.readline()):
            self.output.append(line)
            if line.startswith("http://"):
                self.url = line.strip().rstrip("/")  # http://127.0.0.1:PORT/uploads
                self.port = int(re.findall(r":(\d+)/", line)[0])
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.kill()
        raise RuntimeError("the example did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExampleApp]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    app = ExampleApp(tmp_path / "data").start()
    yield app
    app.kill()


def random_file(path: Path, size: int) -> str:
    path.write_bytes(os.urandom(size))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def downloaded_sha256(url: str) -> str:
    answer = requests.get(url, timeout=30)
    assert answer.status_code == 200
    return hashlib.sha256(answer.content).hexdigest()


def test_the_readme_shows_the_example_whole() -> None:
    readme = (ROOT / "README.md").read_text()
    assert EXAMPLE.read_text().strip() in readme


def test_the_host_route_and_formforge_routes_share_one_port(example: ExampleApp) -> None:
    assert requests.get(example.host_url + "/", timeout=10).json() == {"hello": "from the host app"}
    options = requests.options(example.url + "/files/", timeout=10)
    assert options.status_code == 204
    assert options.headers["Tus-Version"] == "1.0.0"
    assert requests.get(example.url + "/healthz", timeout=10).json() == {"status": "ok"}
    page = requests.get(example.url, timeout=10)  # /uploads -> /uploads/: the page
    assert page.status_code == 200
    assert "FormForge" in page.text
    assert requests.get(example.url + "/static/app.js", timeout=10).status_code == 200
    # Outside the prefix, FormForge answers nothing: the host app's 404.
    assert requests.post(example.host_url + "/files/", timeout=10).status_code == 404


def test_tus_js_client_uploads_through_the_host_app(
    example: ExampleApp, node: str, tmp_path: Path
) -> None:
    source = tmp_path / "photo.jpg"
    digest = random_file(source, 3 * 1024 * 1024 + 17)
    done = subprocess.run(
        [
            node,
            str(JS_DIR / "tus-upload.mjs"),
            "--endpoint",
            example.url + "/files/",
            "--file",
            str(source),
            "--chunk-size",
            str(1024 * 1024),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    url = json.loads(done.stdout)["url"]
    assert url.startswith(example.url + "/files/")
    assert downloaded_sha256(url) == digest


def test_tuspy_resumes_after_the_app_process_is_killed(example: ExampleApp, tmp_path: Path) -> None:
    source = tmp_path / "video.mp4"
    digest = random_file(source, 4 * 1024 * 1024)
    first = tus_client.TusClient(example.url + "/files/").uploader(
        str(source), chunk_size=1024 * 1024
    )
    first.upload_chunk()
    first.upload_chunk()
    url = first.url
    assert url is not None
    assert url.startswith(example.url + "/files/")

    example.kill()  # kill -9: nothing gets to clean up
    example.start()
    head = requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert head.headers["Upload-Offset"] == str(2 * 1024 * 1024)

    again = tus_client.TusClient(example.url + "/files/").uploader(
        str(source), chunk_size=1024 * 1024, url=url
    )
    again.upload()
    assert downloaded_sha256(url) == digest


def test_a_socketio_client_in_the_room_sees_progress_and_completion(
    example: ExampleApp, tmp_path: Path
) -> None:
    source = tmp_path / "scan.pdf"
    digest = random_file(source, 2 * 1024 * 1024)
    uploader = tus_client.TusClient(example.url + "/files/").uploader(
        str(source), chunk_size=512 * 1024, metadata={"filename": "scan.pdf"}
    )
    uploader.set_url(uploader.create_url())  # created, no byte sent yet
    upload_id = str(uploader.url).rsplit("/", 1)[1]
    events = asyncio.run(watch_while_uploading(example, upload_id, uploader))

    progress = [payload for name, payload in events if name == "uploadProgress"]
    complete = [payload for name, payload in events if name == "uploadComplete"]
    assert progress[-1]["offset"] == source.stat().st_size
    assert len(complete) == 1
    assert complete[0]["sha256"] == digest
    assert complete[0]["url"] == f"{example.url}/files/{upload_id}"


async def watch_while_uploading(
    example: ExampleApp, upload_id: str, uploader: Uploader
) -> list[tuple[str, dict[str, object]]]:
    seen: list[tuple[str, dict[str, object]]] = []
    finished = asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)
    for name in ("uploadProgress", "uploadComplete", "uploadError"):
        client.on(name, lambda payload, name=name: record(name, payload))

    def record(name: str, payload: dict[str, object]) -> None:
        seen.append((name, payload))
        if name != "uploadProgress":
            finished.set()

    await client.connect(
        example.host_url, socketio_path="/uploads/socket.io", transports=["websocket"]
    )
    try:
        ack = await client.call("joinUploadRoom", upload_id, timeout=10)
        assert ack == {"ok": True, "room": f"upload:{upload_id}"}
        await asyncio.to_thread(uploader.upload)
        await asyncio.wait_for(finished.wait(), 30)
    finally:
        await client.disconnect()
    return seen


# --- in process: the URLs a mounted FormForge gives out -----------------------------------

PUBLIC = "https://uploads.example.com/base"


@pytest.fixture
def mounted(tmp_path: Path, io_loop: object) -> Iterator[object]:
    from formforge import FormForge, Settings

    settings = Settings.from_mapping(
        {
            "storage": {"path": str(tmp_path / "data"), "fsync": False},
            "server": {"public_url": PUBLIC},
        }
    )
    uploads = FormForge(settings, prefix="/uploads/", socketio=False)
    yield uploads
    io_loop.run_sync(uploads.service.processor.stop)  # type: ignore[attr-defined]


@pytest.fixture
def app(mounted: object) -> object:
    import tornado.web

    class Own(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("own")

    return tornado.web.Application([(r"/own", Own), mounted.rule()])  # type: ignore[attr-defined]


@pytest.mark.gen_test
async def test_urls_carry_the_public_url_and_the_prefix(http_client: object, base_url: str) -> None:
    fetch = http_client.fetch  # type: ignore[attr-defined]
    created = await fetch(
        f"{base_url}/uploads/files/",
        method="POST",
        body=b"",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"},
    )
    assert created.code == 201
    location = created.headers["Location"]
    assert re.fullmatch(rf"{re.escape(PUBLIC)}/uploads/files/[\w-]+", location)
    rest = await fetch(
        f"{base_url}/uploads/api/files/upload",
        method="POST",
        body=json.dumps({"filename": "a.txt", "size": 3}),
        headers={"Content-Type": "application/json"},
    )
    answer = json.loads(rest.body)
    upload_id = answer["uploadId"]
    assert answer["tusUrl"] == f"{PUBLIC}/uploads/files/{upload_id}"
    assert answer["uploadUrl"] == f"{PUBLIC}/uploads/api/files/upload/{upload_id}"
    assert (await fetch(f"{base_url}/own")).body == b"own"
    # Without Socket.IO, its path is not FormForge's.
    missing = await fetch(f"{base_url}/uploads/socket.io/", raise_error=False)
    assert missing.code == 404


def test_a_prefix_that_is_not_a_path_is_refused(tmp_path: Path) -> None:
    from formforge import FormForge, Settings

    settings = Settings.from_mapping({"storage": {"path": str(tmp_path)}})
    with pytest.raises(ValueError, match="prefix"):
        FormForge(settings, prefix="/up loads?x=1")


def test_the_page_under_the_prefix_uploads_in_a_browser(
    example: ExampleApp, tmp_path: Path
) -> None:
    """Its links, the Socket.IO path and the REST status URL are all relative to the page."""
    from tests.system.test_page import CHROMIUM, CHROMIUM_ARGS, PageUnderTest

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    source = tmp_path / "notes.txt"
    digest = random_file(source, 1024 * 1024 + 5)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ui = PageUnderTest(browser, f"{example.url}/?chunkSize={256 * 1024}")
            ui.page.set_input_files("#file-input", [str(source)])
            rows = ui.sample_until(
                lambda rows: bool(rows) and rows[0]["state"] == "complete",
                60.0,
                lambda: "".join(example.output[-40:]),
            )[-1]
            assert ui.problems == []
        finally:
            browser.close()
    assert rows[0]["sha256"] == digest
    assert rows[0]["url"].startswith(f"{example.url}/files/")
