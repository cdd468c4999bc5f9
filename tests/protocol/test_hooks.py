"""Hooks with real receivers, against a real `formforge serve` process.

CONTRACT.md, Hooks: a hook gets one JSON object `{"type", "upload": {"uploadId", "size",
"offset", "filename", "metadata", "sha256"?}, "request": {"headers", "remoteAddr"}}` as the
body of an HTTP POST, on a command's standard input, or as the argument of a Python callable
(plain or coroutine), and answers a JSON object:

- pre-create: `{}` accepts, `{"metadata": {...}}` replaces the metadata,
  `{"reject": {"status": 4xx, "message": "..."}}` refuses: "the client gets that status and
  message and nothing is stored". A failing or timed-out pre-create hook rejects with 503.
- post-finish: a failure or time-out marks the upload `error` and emits `uploadError` with
  code `processing-failed`; success emits `uploadComplete` (state `processing` meanwhile).
- A command's non-zero exit is a failure; an HTTP hook's non-2xx answer or time-out is a
  failure after 3 attempts in all. `upload.uploadId` is absent in pre-create; `request` is
  present only where a client request caused the hook.

Every transport is exercised through one `HookEnd`: the HTTP receiver is a
ThreadingHTTPServer on 127.0.0.1, the command a python3 script in tmp_path, the Python hook
a module in tmp_path/hookmods (plain and `async def`). Each end reads what to answer from a
per-hook-point "spec" the test sets at run time, and records every payload it gets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import socketio
import yaml

from tests.async_helpers import off_loop
from tests.async_helpers import run as run_bounded

pytestmark = pytest.mark.slow

HTTP = requests.Session()
HTTP.trust_env = False  # loopback only, whatever HTTP(S)_PROXY says
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}
WAIT = 10.0  # seconds: any one wait for an HTTP answer, an event or a state
TEST_DEADLINE = 40.0
PRE, POST, TERM = "pre-create", "post-finish", "post-terminate"
T = TypeVar("T")


# ============================================================ the receivers


@dataclass
class Call:
    payload: dict[str, Any]
    at: float  # time.monotonic() when the hook started (CLOCK_MONOTONIC: one clock per host)
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """A real HTTP hook receiver on 127.0.0.1: records each POST, answers per its spec."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.specs: dict[str, dict[str, Any]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = json.loads(body)
                receiver.calls.append(Call(payload, time.monotonic(), dict(self.headers)))
                spec = receiver.specs.get(payload.get("type"), {})
                time.sleep(spec.get("sleep", 0))
                status = 500 if spec.get("fail") else 200
                answer = json.dumps(spec.get("answer", {})).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the server gave up waiting (a time-out test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# The command hook and the Python module share this logic: read the spec of the hook point
# from SPEC_DIR/<type>.json, append {"payload", "at"} to LOG, sleep, fail or answer.
COMMON = """
import json, os, time

def _begin(payload):
    with open(LOG, "a") as log:
        log.write(json.dumps({"payload": payload, "at": time.monotonic()}) + "\\n")
    try:
        with open(os.path.join(SPEC_DIR, payload["type"] + ".json")) as spec:
            return json.load(spec)
    except FileNotFoundError:
        return {}
"""

COMMAND_SCRIPT = (
    """import sys
SPEC_DIR, LOG = sys.argv[1], sys.argv[2]
"""
    + COMMON
    + """
spec = _begin(json.load(sys.stdin))
parent = os.getppid()
deadline = time.monotonic() + spec.get("sleep", 0)
while time.monotonic() < deadline and os.getppid() == parent:  # ends if the server dies
    time.sleep(0.05)
if spec.get("fail"):
    print("hook failed on purpose", file=sys.stderr)
    sys.exit(3)
json.dump(spec.get("answer", {}), sys.stdout)
"""
)

PYTHON_MODULE = (
    """import asyncio
SPEC_DIR, LOG = @SPEC_DIR@, @LOG@
"""
    + COMMON
    + """
def _end(spec):
    if spec.get("fail"):
        raise RuntimeError("hook failed on purpose")
    return spec.get("answer", {})

def hook(payload):
    spec = _begin(payload)
    time.sleep(spec.get("sleep", 0))
    return _end(spec)

async def ahook(payload):
    spec = _begin(payload)
    await asyncio.sleep(spec.get("sleep", 0))
    return _end(spec)
"""
)


class HookEnd:
    """One transport's receiving end: its config target, its answers, what it received."""

    transport = ""
    env: dict[str, str] = {}  # noqa: RUF012 -- the server's extra environment

    def target(self) -> dict[str, str]:
        raise NotImplementedError

    def set(self, point: str, *, answer: Any = None, fail: bool = False, sleep: float = 0) -> None:
        raise NotImplementedError

    def all_calls(self) -> list[Call]:
        raise NotImplementedError

    def calls(self, point: str) -> list[Call]:
        return [call for call in self.all_calls() if call.payload.get("type") == point]

    def close(self) -> None:
        pass


class HttpEnd(HookEnd):
    transport = "http"

    def __init__(self, tmp_path: Path) -> None:
        self.receiver = Receiver()

    def target(self) -> dict[str, str]:
        return {"http": self.receiver.url}

    def set(self, point: str, *, answer: Any = None, fail: bool = False, sleep: float = 0) -> None:
        self.receiver.specs[point] = {"answer": answer or {}, "fail": fail, "sleep": sleep}

    def all_calls(self) -> list[Call]:
        return list(self.receiver.calls)

    def close(self) -> None:
        self.receiver.close()


class FileEnd(HookEnd):
    """Command and Python ends: the spec lives in files, the payloads in a JSON-lines log."""

    def __init__(self, tmp_path: Path) -> None:
        self.spec_dir = tmp_path / "hookspec"
        self.spec_dir.mkdir(exist_ok=True)
        self.log = tmp_path / "hookcalls.jsonl"
        self.log.touch()

    def set(self, point: str, *, answer: Any = None, fail: bool = False, sleep: float = 0) -> None:
        spec = {"answer": answer or {}, "fail": fail, "sleep": sleep}
        scratch = self.spec_dir / f"{point}.json.tmp"
        scratch.write_text(json.dumps(spec))
        scratch.replace(self.spec_dir / f"{point}.json")

    def all_calls(self) -> list[Call]:
        lines = self.log.read_text().splitlines()
        return [Call(entry["payload"], entry["at"]) for entry in map(json.loads, lines)]


class CommandEnd(FileEnd):
    transport = "command"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.script = tmp_path / "hookbin" / "hook.py"
        self.script.parent.mkdir(exist_ok=True)
        self.script.write_text(COMMAND_SCRIPT)

    def target(self) -> dict[str, str]:
        argv = [sys.executable, str(self.script), str(self.spec_dir), str(self.log)]
        return {"command": shlex.join(argv)}


class PythonEnd(FileEnd):
    transport = "python"
    function = "hook"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        module = tmp_path / "hookmods" / "myhooks.py"
        module.parent.mkdir(exist_ok=True)
        source = PYTHON_MODULE.replace("@SPEC_DIR@", repr(str(self.spec_dir)))
        module.write_text(source.replace("@LOG@", repr(str(self.log))))
        self.env = {"PYTHONPATH": str(module.parent)}

    def target(self) -> dict[str, str]:
        return {"python": f"myhooks:{self.function}"}


class AsyncPythonEnd(PythonEnd):
    function = "ahook"


ENDS: dict[str, Callable[[Path], HookEnd]] = {
    "http": HttpEnd,
    "command": CommandEnd,
    "python": PythonEnd,
    "python-async": AsyncPythonEnd,
}


@pytest.fixture(params=list(ENDS))
def end(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HookEnd]:
    hook_end = ENDS[request.param](tmp_path)
    yield hook_end
    hook_end.close()


@pytest.fixture
def http_end(tmp_path: Path) -> Iterator[HttpEnd]:
    hook_end = HttpEnd(tmp_path)
    yield hook_end
    hook_end.close()


def serve(
    start_server: Callable[..., Any],
    tmp_path: Path,
    hook_end: HookEnd,
    points: tuple[str, ...] = (PRE, POST, TERM),
    timeout: float = 5.0,
    name: str = "config.yaml",
) -> Any:
    """A server whose hook points each call `hook_end`."""
    config = write_config(tmp_path / name, hook_end, points, timeout)
    return start_server(args=["--config", str(config)], env=hook_end.env)


def write_config(path: Path, hook_end: HookEnd, points: tuple[str, ...], timeout: float) -> Path:
    hooks: dict[str, Any] = {"timeout_seconds": timeout}
    for point in points:
        hooks[point.replace("-", "_")] = [hook_end.target()]
    config = {"storage": {"fsync": False}, "events": {"progress_interval_ms": 50}, "hooks": hooks}
    path.write_text(yaml.safe_dump(config))
    return path


# ============================================================ HTTP helpers


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()
    )


def decode_metadata(header: str) -> dict[str, str]:
    pairs = (item.strip().split(" ", 1) for item in header.split(",") if item.strip())
    return {pair[0]: base64.b64decode(pair[1]).decode() if len(pair) > 1 else "" for pair in pairs}


def tus_create(
    server: Any,
    size: int,
    metadata: dict[str, str],
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> requests.Response:
    sent = {**TUS, "Upload-Length": str(size), "Upload-Metadata": encode_metadata(metadata)}
    if body is not None:
        sent.update(OFFSET_TYPE)
    sent.update(headers or {})
    return HTTP.post(server.files_url, headers=sent, data=body, timeout=WAIT)


def tus_id(response: requests.Response) -> str:
    assert response.status_code == 201, (response.status_code, response.text)
    return str(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])


def tus_patch(server: Any, upload_id: str, offset: int, data: bytes) -> requests.Response:
    headers = {**TUS, **OFFSET_TYPE, "Upload-Offset": str(offset)}
    return HTTP.patch(server.files_url + upload_id, headers=headers, data=data, timeout=WAIT)


def rest_status(server: Any, upload_id: str) -> dict[str, Any]:
    response = HTTP.get(f"{server.url}/api/files/upload/{upload_id}", timeout=WAIT)
    assert response.status_code == 200, (response.status_code, response.text)
    return dict(response.json())


def stored_files(server: Any) -> set[str]:
    root = Path(server.data_dir)
    if not root.exists():
        return set()
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def wait_until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while (value := check()) is None or value is False:
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout} s"
        time.sleep(0.05)
    return value


def metric(server: Any, line_start: str) -> float:
    text = HTTP.get(server.url + "/metrics", timeout=WAIT).text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


# ============================================================ Socket.IO helpers


@dataclass
class Seen:
    name: str
    data: Any
    at: float


class Watcher:
    """A python-socketio AsyncClient in the room of one upload, recording every event."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.seen: list[Seen] = []
        self.sio.on("*", self._record)

    def _record(self, name: str, data: Any = None, *more: Any) -> None:
        self.seen.append(Seen(name, data, time.monotonic()))

    def events(self, name: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.name == name]

    async def wait_for(self, name: str, upload_id: str, timeout: float = WAIT) -> Seen:
        async def poll() -> Seen:
            while True:
                for seen in self.events(name):
                    if seen.data.get("uploadId") == upload_id:
                        return seen
                await asyncio.sleep(0.01)

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            pytest.fail(f"no {name} for {upload_id} in {timeout} s; got {self.seen}")


@asynccontextmanager
async def watching(server: Any, upload_id: str) -> Any:
    watcher = Watcher()
    await asyncio.wait_for(
        watcher.sio.connect(server.url, transports=["websocket"], wait_timeout=WAIT), WAIT
    )
    try:
        ack = await watcher.sio.call("joinUploadRoom", upload_id, timeout=WAIT)
        assert ack == {"ok": True, "room": f"upload:{upload_id}"}
        yield watcher
    finally:
        await asyncio.wait_for(watcher.sio.disconnect(), WAIT)


def run(scenario: Awaitable[None]) -> None:
    run_bounded(scenario, TEST_DEADLINE)


# ============================================================ pre-create


def test_binary_metadata_reaches_hooks_as_text_and_base64_and_can_be_set_by_one(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    """A tus value that is not UTF-8 reaches a hook as text (U+FFFD for the bytes that are
    not UTF-8) in `metadata` and as base64 of its exact bytes in `metadataBinary`; a
    pre-create answer may give values the same way, and HEAD then returns those bytes."""
    server = serve(start_server, tmp_path, end, points=(PRE, POST))
    raw = b"na\xefve \xff.txt"  # Latin-1, not UTF-8
    set_by_hook = b"\x00\x80\xfe"
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    end.set(
        PRE,
        answer={
            "metadata": {"filename": "kept.txt"},
            "metadataBinary": {"filename": b64(raw), "sig": b64(set_by_hook)},
        },
    )
    end.set(POST, answer={})
    header = f"filename {b64(raw)},type {b64(b'text/plain')}"
    response = HTTP.post(
        server.files_url,
        headers={**TUS, "Upload-Length": "2", "Upload-Metadata": header},
        timeout=WAIT,
    )
    upload_id = tus_id(response)
    [pre] = end.calls(PRE)
    text = raw.decode("utf-8", "replace")
    assert pre.payload["upload"]["metadata"] == {"filename": text, "type": "text/plain"}
    assert pre.payload["upload"]["metadataBinary"] == {"filename": b64(raw)}
    assert pre.payload["upload"]["filename"] == text

    head = HTTP.head(server.files_url + upload_id, headers=TUS, timeout=WAIT)
    assert head.headers["Upload-Metadata"] == f"filename {b64(raw)},sig {b64(set_by_hook)}"
    assert tus_patch(server, upload_id, 0, b"ok").status_code == 204
    deadline = time.monotonic() + WAIT
    while not end.calls(POST) and time.monotonic() < deadline:
        time.sleep(0.02)
    [post] = end.calls(POST)
    assert post.payload["upload"]["metadataBinary"] == {
        "filename": b64(raw),
        "sig": b64(set_by_hook),
    }
    assert post.payload["upload"]["metadata"]["sig"] == set_by_hook.decode("utf-8", "replace")


def test_pre_create_gets_the_new_upload_and_the_client_request(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    server = serve(start_server, tmp_path, end, points=(PRE,))
    end.set(PRE, answer={})
    metadata = {"filename": "report.pdf", "filetype": "application/pdf"}
    response = tus_create(server, 11, metadata, headers={"X-Api-Key": "k-123"})
    tus_id(response)

    [call] = end.calls(PRE)
    payload = call.payload
    assert payload["type"] == "pre-create"
    upload = payload["upload"]
    assert "uploadId" not in upload  # the upload does not exist yet
    assert upload["size"] == 11
    assert upload["offset"] == 0
    assert upload["filename"] == "report.pdf"
    assert upload["metadata"] == metadata
    request = payload["request"]
    assert header(request["headers"], "X-Api-Key") == "k-123"
    assert header(request["headers"], "Tus-Resumable") == "1.0.0"
    assert request["remoteAddr"] == "127.0.0.1"
    if isinstance(end, HttpEnd):  # a JSON POST
        assert header(call.headers, "Content-Type") == "application/json"


def test_a_pre_create_rejection_reaches_the_client_and_nothing_is_stored(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    server = serve(start_server, tmp_path, end, points=(PRE,))
    # Two complete partial uploads, accepted, for the concatenation case below.
    end.set(PRE, answer={})
    parts = []
    for piece in (b"abc", b"def"):
        part = tus_id(tus_create(server, 3, {}, headers={"Upload-Concat": "partial"}))
        assert tus_patch(server, part, 0, piece).status_code == 204
        parts.append(part)
    before = stored_files(server)
    calls_before = len(end.calls(PRE))

    message = "only PDFs may be uploaded"
    end.set(PRE, answer={"reject": {"status": 422, "message": message}})
    attempts = {
        "tus": tus_create(server, 5, {"filename": "x.exe"}),
        "tus with a body": tus_create(server, 5, {"filename": "x.exe"}, body=b"hello"),
        "tus final": HTTP.post(  # concatenation: a final upload takes no Upload-Length
            server.files_url,
            headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)},
            timeout=WAIT,
        ),
    }
    for name, response in attempts.items():
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert message in response.text, (name, response.text)
        assert "Location" not in response.headers, name

    rest = HTTP.post(
        server.url + "/api/files/upload", json={"filename": "x.exe", "size": 5}, timeout=WAIT
    )
    assert rest.status_code == 422, rest.text
    assert message in rest.json()["error"]["message"]

    assert stored_files(server) == before  # nothing is stored
    assert len(end.calls(PRE)) == calls_before + 4  # each creation asked the hook
    final_call = end.calls(PRE)[calls_before + 2]
    assert final_call.payload["upload"]["size"] == 6  # the final upload: the parts' sum


def test_pre_create_can_replace_the_metadata_seen_in_head_rest_and_events(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    server = serve(start_server, tmp_path, end, points=(PRE, POST))
    replaced = {"filename": "renamed.pdf", "checkedBy": "hook", "note": "ünïcode ok"}
    end.set(PRE, answer={"metadata": replaced})
    end.set(POST, answer={})
    data = b"%PDF-1.7 hello"

    async def scenario() -> None:
        upload_id = tus_id(await off_loop(tus_create, server, len(data), {"filename": "a.pdf"}))
        head = await off_loop(
            lambda: HTTP.head(server.files_url + upload_id, headers=TUS, timeout=WAIT)
        )
        assert head.status_code == 200
        assert decode_metadata(head.headers["Upload-Metadata"]) == replaced
        async with watching(server, upload_id) as watcher:
            patched = await off_loop(tus_patch, server, upload_id, 0, data)
            assert patched.status_code == 204
            complete = await watcher.wait_for("uploadComplete", upload_id)
        assert complete.data["metadata"] == replaced
        assert complete.data["filename"] == "renamed.pdf"
        [post] = end.calls(POST)
        assert post.payload["upload"]["metadata"] == replaced
        assert post.payload["upload"]["uploadId"] == upload_id

    run(scenario())

    # The REST front runs pre-create too.
    rest = HTTP.post(
        server.url + "/api/files/upload", json={"filename": "b.pdf", "size": 3}, timeout=WAIT
    )
    assert rest.status_code == 201, rest.text
    assert rest_status(server, rest.json()["uploadId"])["metadata"] == replaced
    assert end.calls(PRE)[-1].payload["upload"]["filename"] == "b.pdf"


def test_failing_or_timed_out_hooks(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    """pre-create: 503 and nothing stored; post-finish: `error` and processing-failed."""
    server = serve(start_server, tmp_path, end, points=(PRE, POST), timeout=0.5)
    attempts = 3 if end.transport == "http" else 1
    before = stored_files(server)

    end.set(PRE, fail=True)
    response = tus_create(server, 4, {"filename": "a.bin"})
    assert response.status_code == 503, response.text
    assert len(end.calls(PRE)) == attempts
    rest = HTTP.post(
        server.url + "/api/files/upload", json={"filename": "a.bin", "size": 4}, timeout=WAIT
    )
    assert rest.status_code == 503, rest.text
    assert rest.json()["error"]["code"]
    assert len(end.calls(PRE)) == 2 * attempts
    end.set(PRE, sleep=3)
    started = time.monotonic()
    response = tus_create(server, 4, {"filename": "a.bin"})
    assert response.status_code == 503, response.text
    assert len(end.calls(PRE)) == 3 * attempts
    assert time.monotonic() - started < 2.9, "the time-out did not cut the slow hook"
    assert stored_files(server) == before

    end.set(PRE, answer={})
    for how in ({"fail": True}, {"sleep": 3}):
        end.set(POST, **how)
        calls_before = len(end.calls(POST))

        async def scenario() -> None:
            upload_id = tus_id(await off_loop(tus_create, server, 4, {"filename": "a.bin"}))
            async with watching(server, upload_id) as watcher:
                assert (await off_loop(tus_patch, server, upload_id, 0, b"data")).status_code
                error = await watcher.wait_for("uploadError", upload_id)
                await asyncio.sleep(0.3)
            assert error.data["code"] == "processing-failed", error.data
            assert not watcher.events("uploadComplete")
            assert rest_status(server, upload_id)["state"] == "error"

        run(scenario())
        assert len(end.calls(POST)) == calls_before + attempts, how


# ============================================================ post-finish


def test_a_slow_post_finish_hook_is_the_processing_state(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    server = serve(start_server, tmp_path, end, points=(POST,), timeout=5.0)
    slow = 1.0
    end.set(POST, sleep=slow)
    data = b"x" * 5000

    async def scenario() -> None:
        upload_id = tus_id(await off_loop(tus_create, server, len(data), {"filename": "s.txt"}))
        async with watching(server, upload_id) as watcher:
            assert (await off_loop(tus_patch, server, upload_id, 0, data)).status_code == 204
            status = await off_loop(rest_status, server, upload_id)
            assert status["state"] == "processing", status
            seen_processing = time.monotonic()
            assert not watcher.events("uploadComplete")
            complete = await watcher.wait_for("uploadComplete", upload_id)
        [call] = end.calls(POST)
        assert complete.at >= call.at + slow  # only once the hook has answered
        assert complete.at > seen_processing
        assert rest_status(server, upload_id)["state"] == "complete"
        upload = call.payload["upload"]
        assert call.payload["type"] == "post-finish"
        assert upload["uploadId"] == upload_id
        assert upload["size"] == upload["offset"] == len(data)
        assert upload["filename"] == "s.txt"
        assert upload["sha256"] == complete.data["sha256"]
        assert "request" not in call.payload  # no client request caused it

    run(scenario())


# ============================================================ post-terminate


def test_post_terminate_gets_the_deleted_upload(
    start_server: Callable[..., Any], tmp_path: Path, end: HookEnd
) -> None:
    server = serve(start_server, tmp_path, end, points=(TERM,))
    end.set(TERM, answer={})
    upload_id = tus_id(tus_create(server, 10, {"filename": "gone.txt"}))
    assert tus_patch(server, upload_id, 0, b"12345").status_code == 204
    deleted = HTTP.delete(
        server.files_url + upload_id, headers={**TUS, "X-Api-Key": "k-9"}, timeout=WAIT
    )
    assert deleted.status_code == 204
    [call] = wait_until(lambda: end.calls(TERM) or None, "post-terminate call")
    assert call.payload["type"] == "post-terminate"
    upload = call.payload["upload"]
    assert upload["uploadId"] == upload_id
    assert (upload["size"], upload["offset"], upload["filename"]) == (10, 5, "gone.txt")
    assert upload["metadata"] == {"filename": "gone.txt"}
    assert header(call.payload["request"]["headers"], "X-Api-Key") == "k-9"
    assert call.payload["request"]["remoteAddr"] == "127.0.0.1"

    # A failing post-terminate hook is only logged: the upload is gone all the same.
    end.set(TERM, fail=True)
    rest = HTTP.post(
        server.url + "/api/files/upload", json={"filename": "r.txt", "size": 4}, timeout=WAIT
    )
    other = rest.json()["uploadId"]
    deleted = HTTP.delete(f"{server.url}/api/files/upload/{other}", timeout=WAIT)
    assert deleted.status_code == 204
    wait_until(
        lambda: any(c.payload["upload"]["uploadId"] == other for c in end.calls(TERM)),
        "post-terminate call for the REST delete",
    )
    head = HTTP.head(server.files_url + other, headers=TUS, timeout=WAIT)
    assert head.status_code in (404, 410)
    assert not any(
        name.startswith(other) and not name.endswith(".info") for name in stored_files(server)
    )


# ============================================================ restarts and metrics


def test_processing_cut_by_a_crash_is_resumed_at_start_up(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    end = CommandEnd(tmp_path)
    end.set(POST, sleep=30)
    server = serve(start_server, tmp_path, end, points=(POST,), timeout=60.0)
    data = b"crash me" * 100
    upload_id = tus_id(tus_create(server, len(data), {"filename": "c.bin"}))
    assert tus_patch(server, upload_id, 0, data).status_code == 204
    wait_until(lambda: end.calls(POST) or None, "the post-finish hook started")
    assert rest_status(server, upload_id)["state"] == "processing"

    server.kill()  # SIGKILL mid-processing (the hook script notices and exits)
    end.set(POST, answer={})
    fast = write_config(tmp_path / "fast.yaml", end, (POST,), timeout=5.0)
    server.args = ["--config", str(fast)]
    server.restart()  # same port, same data dir

    final = wait_until(
        lambda: (s := rest_status(server, upload_id))["state"] != "processing" and s,
        "processing after the restart",
    )
    assert final["state"] == "complete", final
    calls = end.calls(POST)
    assert len(calls) == 2, calls  # the cut one, and the one after the restart
    assert all(call.payload["upload"]["uploadId"] == upload_id for call in calls)
    assert calls[1].payload["upload"]["offset"] == len(data)
    download = HTTP.get(server.files_url + upload_id, timeout=WAIT)
    assert download.content == data


def test_metrics_count_hook_calls_and_failures(
    start_server: Callable[..., Any], tmp_path: Path, http_end: HttpEnd
) -> None:
    server = serve(start_server, tmp_path, http_end, points=(PRE, POST), timeout=2.0)
    labels = '{point="pre-create",transport="http"}'
    http_end.set(PRE, answer={})
    http_end.set(POST, answer={})
    upload_id = tus_id(tus_create(server, 2, {}))
    assert tus_patch(server, upload_id, 0, b"ok").status_code == 204
    tus_id(tus_create(server, 2, {}))
    http_end.set(PRE, fail=True)
    assert tus_create(server, 2, {}).status_code == 503

    assert metric(server, "formforge_hook_calls_total" + labels) == 3
    assert metric(server, "formforge_hook_failures_total" + labels) == 1
    assert metric(server, "formforge_hook_seconds_count" + labels) == 3
    post = '{point="post-finish",transport="http"}'
    wait_until(
        lambda: metric(server, "formforge_hook_calls_total" + post) == 1, "post-finish counted"
    )
    assert metric(server, "formforge_hook_failures_total" + post) == 0


# ============================================================ hooks and the rest of the server


def test_a_delete_during_processing_stays_deleted_when_the_hook_then_fails(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """CONTRACT.md: DELETE removes the upload (then 404/410); a post-finish failure must not
    bring a terminated upload back as `error`."""
    end = CommandEnd(tmp_path)
    end.set(POST, sleep=1.0, fail=True)
    server = serve(start_server, tmp_path, end, points=(POST,), timeout=5.0)
    upload_id = tus_id(tus_create(server, 4, {"filename": "d.bin"}))
    assert tus_patch(server, upload_id, 0, b"data").status_code == 204
    [call] = wait_until(lambda: end.calls(POST) or None, "the post-finish hook started")
    assert HTTP.delete(server.files_url + upload_id, headers=TUS, timeout=WAIT).status_code == 204
    time.sleep(max(0.0, call.at + 1.0 - time.monotonic()) + 0.5)  # the hook has failed by now
    head = HTTP.head(server.files_url + upload_id, headers=TUS, timeout=WAIT)
    assert head.status_code in (404, 410), (head.status_code, dict(head.headers))
    rest = HTTP.get(f"{server.url}/api/files/upload/{upload_id}", timeout=WAIT)
    assert rest.status_code in (404, 410), (rest.status_code, rest.text)


def test_timed_out_plain_python_hooks_do_not_stall_other_requests(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A plain function that hangs is cut off at the time-out (503); what it still occupies
    must not stall the rest of the server (other uploads' HEAD, new creations)."""
    end = PythonEnd(tmp_path)
    end.set(PRE, answer={})
    server = serve(start_server, tmp_path, end, points=(PRE,), timeout=0.5)
    existing = tus_id(tus_create(server, 4, {}))
    end.set(PRE, sleep=8)
    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda _: tus_create(server, 4, {}).status_code, range(40)))
    assert statuses == [503] * 40
    end.set(PRE, answer={})
    started = time.monotonic()
    head = HTTP.head(server.files_url + existing, headers=TUS, timeout=WAIT)
    assert head.status_code == 200
    created = tus_create(server, 4, {})
    elapsed = time.monotonic() - started
    assert created.status_code == 201, created.text
    assert elapsed < 2.0, f"HEAD + POST took {elapsed:.1f} s behind the hung hooks"
