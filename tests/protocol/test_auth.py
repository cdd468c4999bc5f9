"""Bearer tokens (`auth.bearer_tokens`) on HTTP and Socket.IO, against a real server process.

CONTRACT.md, Authentication: "With `auth.bearer_tokens` set, every HTTP request but
`GET /healthz` and CORS preflight `OPTIONS` needs `Authorization: Bearer <token>` (else
`401`), and a Socket.IO connection needs the token in its `auth` payload (`{"token": ...}`)
or the same header (else the connection is refused)." config.yaml: the setting is a list,
or the path of a file with one token a line, lines starting with # skipped; null: open.
REST errors are `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import socketio
import yaml

from tests.conftest import clean_environ

pytestmark = pytest.mark.slow

HTTP = requests.Session()
HTTP.trust_env = False  # loopback only, whatever HTTP(S)_PROXY says
TUS = {"Tus-Resumable": "1.0.0"}
WAIT = 10.0
TOKENS = ["tok1", "tok2"]

BAD_CREDENTIALS = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer tok3"},
    "a prefix of a token": {"Authorization": "Bearer tok"},
    "empty token": {"Authorization": "Bearer "},
    "wrong scheme": {"Authorization": "Basic tok1"},
    "token without scheme": {"Authorization": "tok1"},
}


def config(tmp_path: Path, tokens: list[str] | str | None, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        yaml.safe_dump({"storage": {"fsync": False}, "auth": {"bearer_tokens": tokens}})
    )
    return path


def serve(start_server: Callable[..., Any], tmp_path: Path, tokens: Any) -> Any:
    return start_server(args=["--config", str(config(tmp_path, tokens))])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(server: Any, auth: dict[str, str]) -> requests.Response:
    headers = {**TUS, "Upload-Length": "4", **auth}
    return HTTP.post(server.files_url, headers=headers, timeout=WAIT)


def upload_id_of(response: requests.Response) -> str:
    assert response.status_code == 201, (response.status_code, response.text)
    return str(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])


def requests_for(server: Any, upload_id: str) -> dict[str, Callable[[dict[str, str]], Any]]:
    """Every kind of HTTP request a client makes, each with the given extra headers."""
    tus_url = server.files_url + upload_id
    rest = server.url + "/api/files/upload"
    patch = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    return {
        "tus POST": lambda auth: create(server, auth),
        "tus HEAD": lambda auth: HTTP.head(tus_url, headers={**TUS, **auth}, timeout=WAIT),
        "tus PATCH": lambda auth: HTTP.patch(
            tus_url, headers={**patch, **auth}, data=b"data", timeout=WAIT
        ),
        "tus OPTIONS (no preflight)": lambda auth: HTTP.options(
            server.files_url, headers={**TUS, **auth}, timeout=WAIT
        ),
        "tus GET": lambda auth: HTTP.get(tus_url, headers=auth, timeout=WAIT),
        "REST POST": lambda auth: HTTP.post(
            rest, json={"filename": "a.txt", "size": 4}, headers=auth, timeout=WAIT
        ),
        "REST GET": lambda auth: HTTP.get(f"{rest}/{upload_id}", headers=auth, timeout=WAIT),
        "GET /metrics": lambda auth: HTTP.get(server.url + "/metrics", headers=auth, timeout=WAIT),
    }


def assert_unauthorized(name: str, response: requests.Response) -> None:
    assert response.status_code == 401, (name, response.status_code, response.text)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), name
    if response.request.method != "HEAD":
        error = response.json()["error"]
        assert error["code"] == "unauthorized", (name, error)
        assert error["message"], name


# ============================================================ HTTP


def test_requests_without_a_valid_bearer_token_get_401(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, TOKENS)
    upload_id = upload_id_of(create(server, bearer("tok1")))
    for credentials, auth in BAD_CREDENTIALS.items():
        for name, send in requests_for(server, upload_id).items():
            assert_unauthorized(f"{name} with {credentials}", send(auth))
    # Nothing the refused requests sent was stored.
    head = HTTP.head(server.files_url + upload_id, headers={**TUS, **bearer("tok2")}, timeout=WAIT)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    listing = [p for p in Path(server.data_dir).rglob("*") if p.is_file()]
    assert all(upload_id in path.name for path in listing), listing


def test_a_valid_bearer_token_lets_every_request_through(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, TOKENS)
    for token, scheme in (("tok1", "Bearer"), ("tok2", "Bearer"), ("tok1", "bearer")):
        auth = {"Authorization": f"{scheme} {token}"}
        upload_id = upload_id_of(create(server, auth))
        sent = requests_for(server, upload_id)
        expected = {
            "tus HEAD": 200,
            "tus PATCH": 204,
            "tus OPTIONS (no preflight)": 204,
            "tus GET": 200,  # complete after the PATCH
            "REST POST": 201,
            "REST GET": 200,
            "GET /metrics": 200,
        }
        for name, status in expected.items():
            response = sent[name](auth)
            assert response.status_code == status, (name, scheme, response.text)
        assert HTTP.get(server.files_url + upload_id, headers=auth, timeout=WAIT).content == (
            b"data"
        )
        metrics = HTTP.get(server.url + "/metrics", headers=auth, timeout=WAIT)
        assert "formforge_uploads_created" in metrics.text
        assert "<html" in HTTP.get(server.url + "/", headers=auth, timeout=WAIT).text.lower()


def test_health_probes_and_cors_preflights_need_no_token(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, TOKENS)
    health = HTTP.get(server.url + "/healthz", timeout=WAIT)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    preflight = {
        "Origin": "http://example.test",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, tus-resumable, upload-length",
    }
    upload_id = upload_id_of(create(server, bearer("tok1")))
    for url in (
        server.files_url,
        server.files_url + upload_id,
        server.url + "/api/files/upload",
        f"{server.url}/api/files/upload/{upload_id}",
    ):
        response = HTTP.options(url, headers=preflight, timeout=WAIT)
        assert response.status_code in (200, 204), (url, response.status_code, response.text)
        assert response.headers.get("Access-Control-Allow-Origin") in ("*", preflight["Origin"])
        allowed = response.headers.get("Access-Control-Allow-Headers", "").lower()
        assert "authorization" in allowed, (url, allowed)
    # A preflight opens nothing else: the same OPTIONS without the CORS headers needs a token.
    assert_unauthorized("plain OPTIONS", HTTP.options(server.files_url, headers=TUS))
    assert_unauthorized("POST /healthz", HTTP.post(server.url + "/healthz", timeout=WAIT))


def test_the_page_and_its_files_need_no_token(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """CONTRACT.md: "The uploader page itself (`GET /`, `/static/`, the favicon) is public"."""
    server = serve(start_server, tmp_path, TOKENS)
    page = HTTP.get(server.url + "/", timeout=WAIT)
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    assert HTTP.head(server.url + "/", timeout=WAIT).status_code == 200
    assets = ("app.js", "access.js", "style.css", "favicon.svg", "vendor/tus-js-client/tus.min.js")
    for asset in assets:
        assert HTTP.get(f"{server.url}/static/{asset}", timeout=WAIT).status_code == 200, asset
    assert HTTP.get(server.url + "/favicon.ico", timeout=WAIT).status_code == 404  # no such file
    # Only the page's files: the prefix leads to the static handler, whatever follows it.
    upload_id = upload_id_of(create(server, bearer("tok1")))
    for path in (f"/static/../files/{upload_id}", f"/static/..%2Ffiles%2F{upload_id}"):
        status, _ = raw_get(server, path)
        assert status in (403, 404), (path, status)
    assert_unauthorized("POST /", HTTP.post(server.url + "/", timeout=WAIT))
    assert_unauthorized("GET /metrics", HTTP.get(server.url + "/metrics", timeout=WAIT))


def raw_get(server: Any, path: str) -> tuple[int, bytes]:
    """A GET of the path exactly as written (requests would resolve its dot segments)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_tokens_can_come_from_a_file(start_server: Callable[..., Any], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# the uploader page\nfile-tok-A\n\n  file-tok-B  \n# file-tok-C\n")
    server = serve(start_server, tmp_path, str(tokens))
    for token in ("file-tok-A", "file-tok-B"):
        upload_id_of(create(server, bearer(token)))
    for token in ("file-tok-C", "# file-tok-C", "#", "tok1"):
        assert_unauthorized(f"token {token!r}", create(server, bearer(token)))
    assert_unauthorized("no token", create(server, {}))


def test_with_auth_unset_everything_is_open(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, None)
    for auth in ({}, bearer("anything")):
        upload_id = upload_id_of(create(server, auth))
        sent = requests_for(server, upload_id)
        for name in ("tus HEAD", "tus PATCH", "REST POST", "REST GET", "GET /metrics"):
            response = sent[name](auth)
            assert response.status_code in (200, 201, 204), (name, response.text)
    assert asyncio.run(asyncio.wait_for(connects(server), WAIT * 2))


# ============================================================ Socket.IO


async def connects(server: Any, transport: str = "websocket", **how: Any) -> bool:
    """Whether a Socket.IO client gets connected; if so, it can also join a room."""
    client = socketio.AsyncClient(reconnection=False)
    try:
        await asyncio.wait_for(
            client.connect(server.url, transports=[transport], wait_timeout=WAIT, **how), WAIT
        )
    except socketio.exceptions.ConnectionError:
        return False
    try:
        ack = await client.call("joinUploadRoom", "no-such-upload-id", timeout=WAIT)
        assert ack["ok"] is False  # connected for real: the namespace answers
        return True
    finally:
        await asyncio.wait_for(client.disconnect(), WAIT)


def test_socket_io_needs_a_token_in_auth_or_the_header(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, TOKENS)

    async def scenario() -> None:
        # Websocket only: python-socketio's AsyncClient on long-polling can hang in its own
        # disconnect (a pending poll), against any python-socketio server.
        for transport in ("websocket",):
            assert not await connects(server, transport), transport
            assert not await connects(server, transport, auth={"token": "tok3"}), transport
            assert not await connects(server, transport, auth={"token": ""}), transport
            assert not await connects(server, transport, auth="tok1"), transport
            assert not await connects(server, transport, headers={"Authorization": "Basic tok1"}), (
                transport
            )
            assert await connects(server, transport, auth={"token": "tok1"}), transport
            assert await connects(server, transport, auth={"token": "tok2"}), transport
            assert await connects(server, transport, headers=bearer("tok1")), transport

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_an_authorized_socket_gets_the_events_of_an_authorized_upload(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, TOKENS)
    upload_id = upload_id_of(create(server, bearer("tok1")))

    async def scenario() -> None:
        client = socketio.AsyncClient(reconnection=False)
        complete: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_complete(data: Any) -> None:
            if not complete.done():
                complete.set_result(data)

        client.on("uploadComplete", on_complete)
        await asyncio.wait_for(
            client.connect(server.url, transports=["websocket"], auth={"token": "tok2"}), WAIT
        )
        try:
            ack = await client.call("joinUploadRoom", upload_id, timeout=WAIT)
            assert ack == {"ok": True, "room": f"upload:{upload_id}"}
            headers = {
                **TUS,
                **bearer("tok1"),
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
            }
            patched = await asyncio.to_thread(
                HTTP.patch,
                server.files_url + upload_id,
                headers=headers,
                data=b"data",
                timeout=WAIT,
            )
            assert patched.status_code == 204
            event = await asyncio.wait_for(complete, WAIT)
            assert event["uploadId"] == upload_id
            assert event["size"] == 4
        finally:
            await asyncio.wait_for(client.disconnect(), WAIT)

    asyncio.run(asyncio.wait_for(scenario(), 30))


# ============================================================ mounted under a prefix

HOST_APP = """import asyncio, sys
import tornado.web
from tornado.netutil import bind_sockets
from tornado.httpserver import HTTPServer
from formforge import FormForge, Settings

async def main() -> None:
    settings = Settings(storage={"path": sys.argv[1]}, auth={"bearer_tokens": ["tok1"]})
    uploads = FormForge(settings, prefix="/uploads")
    app = tornado.web.Application([uploads.rule()])
    sockets = bind_sockets(0, "127.0.0.1")
    HTTPServer(app, **uploads.http_options).add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    await uploads.start(url)
    print(url, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_under_a_prefix_the_same_paths_are_open(tmp_path: Path) -> None:
    """FormForge mounted at /uploads in a host app: its page, files, health and Socket.IO
    are open or guarded exactly as at the root."""
    script = tmp_path / "host_app.py"
    script.write_text(HOST_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_environ(),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        host = proc.stdout.readline().strip()  # the app prints its URL once it listens
        assert host.startswith("http://"), host
        base = host + "/uploads"
        for path in ("/", "/static/access.js", "/static/app.js", "/healthz"):
            assert HTTP.get(base + path, timeout=WAIT).status_code == 200, path
        for path in ("/metrics", "/files/", "/api/files/upload/" + "A" * 22):
            assert HTTP.get(base + path, timeout=WAIT).status_code == 401, path
        # A tus client is told it speaks to a tus server even when refused.
        refused = HTTP.post(base + "/files/", headers=TUS, timeout=WAIT)
        assert refused.headers["Tus-Resumable"] == "1.0.0"
        server = SimpleNamespace(url=host)
        path = "/uploads/socket.io/"
        assert not asyncio.run(connects(server, socketio_path=path))
        assert asyncio.run(connects(server, socketio_path=path, auth={"token": "tok1"}))
    finally:
        proc.kill()
        proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()
