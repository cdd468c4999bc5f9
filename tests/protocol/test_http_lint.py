"""Every kind of answer the server gives, through httplint (REDbot's message checks).

Caching is said on purpose: an answer without `Cache-Control` lets a proxy cache give it a
freshness of its own (a deleted upload served from a cache, a stale health check). The linter
runs over each kind of answer and a WARN note fails the test (those that only restate a 4xx
status aside).

The decisions, checked here beside the linter: upload state (tus, REST, errors), health and
metrics are `no-store`; a download is `private, no-cache` with an ETag, so any cache asks the
server before each use and a deleted upload is never served from one; the page and its files
are `no-cache` (their URLs carry no version). One real server, with a bearer token, so the
401 is linted too; raw http.client exchanges, so the linter sees the headers as sent.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from httplint import HttpRequestLinter, HttpResponseLinter
from httplint.note import levels

pytestmark = pytest.mark.slow

TOKEN = "lint-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TUS = {"Tus-Resumable": "1.0.0", **AUTH}
JSON = {"Content-Type": "application/json", **AUTH}
WAIT = 10.0
# Notes that may stand: they restate a 4xx status, or a status the protocol prescribes.
ALLOWED_NOTES = {
    "STATUS_BAD_REQUEST": "restates 400",
    "STATUS_412_WITHOUT_PRECONDITION": "tus 1.0.0: an unsupported Tus-Resumable is 412",
}
FAILING_LEVELS = (levels.WARN, levels.BAD)


@dataclass
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def exchange(server: Any, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        answer = connection.getresponse()
        return Answer(answer.status, answer.reason, answer.getheaders(), answer.read())
    finally:
        connection.close()


def lint(url: str, method: str, headers: dict[str, str], answer: Answer) -> list[str]:
    """The WARN and BAD notes httplint has on this answer to this request, but the allowed."""
    request = HttpRequestLinter()
    request.process_request_topline(method.encode(), url.encode(), b"HTTP/1.1")
    request.process_headers([(k.encode(), v.encode()) for k, v in headers.items()])
    request.finish_content(True)
    response = HttpResponseLinter(_related=request)
    response.is_head_response = method == "HEAD"
    response.process_response_topline(b"HTTP/1.1", str(answer.status).encode(), b"X")
    response.process_headers([(k.encode(), v.encode()) for k, v in answer.headers])
    response.feed_content(answer.body)
    response.finish_content(True)
    return [
        f"{type(note).__name__}: {note.summary}"
        for note in response.notes
        if note.level in FAILING_LEVELS and type(note).__name__ not in ALLOWED_NOTES
    ]


class Linted:
    """Sends requests to a server, lints each answer, and keeps the notes by name."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.notes: dict[str, list[str]] = {}
        self.caching: dict[str, str | None] = {}  # name -> its Cache-Control

    def __call__(
        self,
        name: str,
        status: int,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        sent = {**(headers or {})}
        answer = exchange(self.server, method, path, sent, body)
        assert answer.status == status, (name, answer.status, answer.body[:200])
        self.notes[name] = lint(self.server.url + path, method, sent, answer)
        self.caching[name] = answer.header("Cache-Control")
        return answer


def serve(start_server: Callable[..., Any], tmp_path: Path) -> Any:
    config = tmp_path / "lint.yaml"
    config.write_text(yaml.safe_dump({"auth": {"bearer_tokens": [TOKEN]}}))
    return start_server(args=["--config", str(config)])


def upload_path(answer: Answer) -> str:
    location = answer.header("Location")
    assert location is not None
    return "/files/" + location.rstrip("/").rsplit("/", 1)[-1]


def tus_answers(check: Linted) -> str:
    """OPTIONS, creation, offset, append, downloads (200, 206, 304) and tus errors."""
    metadata = "filename " + base64.b64encode(b"notes.txt").decode()
    check("tus OPTIONS", 204, "OPTIONS", "/files/", TUS)
    creation = {**TUS, "Upload-Length": "10", "Upload-Metadata": metadata}
    created = check("tus POST", 201, "POST", "/files/", creation)
    path = upload_path(created)
    check("tus GET unfinished", 409, "GET", path, AUTH)
    append = {**TUS, "Content-Type": "application/offset+octet-stream"}
    check("tus PATCH", 204, "PATCH", path, {**append, "Upload-Offset": "0"}, b"01234")
    check("tus PATCH wrong offset", 409, "PATCH", path, {**append, "Upload-Offset": "1"}, b"x")
    check("tus HEAD", 200, "HEAD", path, TUS)
    check("tus PATCH last", 204, "PATCH", path, {**append, "Upload-Offset": "5"}, b"56789")
    check("tus version 412", 412, "POST", "/files/", {**TUS, "Tus-Resumable": "0.2.2"})
    check("tus unknown id", 404, "HEAD", "/files/AAAAAAAAAAAAAAAAAAAAAA", TUS)
    return path


def download_answers(check: Linted, path: str) -> None:
    whole = check("download", 200, "GET", path, AUTH)
    assert whole.body == b"0123456789"
    etag = whole.header("ETag") or "(none)"
    part = check("download range", 206, "GET", path, {**AUTH, "Range": "bytes=2-5"})
    assert (part.body, part.header("ETag")) == (b"2345", etag)
    again = check("download 304", 304, "GET", path, {**AUTH, "If-None-Match": etag})
    assert again.body == b""
    assert again.header("ETag") == etag
    check("download range 416", 416, "GET", path, {**AUTH, "Range": "bytes=50-60"})
    check("tus DELETE", 204, "DELETE", path, TUS)
    # Deleted: a cache revalidating its copy (no-cache makes it) hears so, never a 304.
    check("download deleted", 410, "GET", path, {**AUTH, "If-None-Match": etag})


def rest_answers(check: Linted) -> None:
    api = "/api/files/upload"
    created = check("REST POST", 201, "POST", api, JSON, b'{"filename": "a.txt", "size": 4}')
    upload = f"{api}/{json.loads(created.body)['uploadId']}"
    ranged = {**AUTH, "Content-Range": "bytes 0-1/4", "Content-Type": "application/octet-stream"}
    check("REST PUT", 200, "PUT", upload, ranged, b"ab")
    mismatch = {**ranged, "Content-Range": "bytes 3-3/4"}
    check("REST PUT 409", 409, "PUT", upload, mismatch, b"d")
    check("REST GET", 200, "GET", upload, AUTH)
    check("REST POST 400", 400, "POST", api, JSON, b"{not json")
    check("REST DELETE", 204, "DELETE", upload, AUTH)
    check("REST GET 404", 404, "GET", f"{api}/{'A' * 22}", AUTH)


def site_answers(check: Linted) -> None:
    check("healthz", 200, "GET", "/healthz")
    check("metrics", 200, "GET", "/metrics", AUTH)
    check("metrics 401", 401, "GET", "/metrics")
    check("page", 200, "GET", "/")
    for name in ("app.js", "style.css", "favicon.svg"):
        assert check(f"static {name}", 200, "GET", f"/static/{name}").header("ETag"), name
    check("unknown path", 404, "GET", "/nowhere", AUTH)


def test_every_kind_of_answer_passes_httplint(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    check = Linted(serve(start_server, tmp_path))
    path = tus_answers(check)
    download_answers(check, path)
    rest_answers(check)
    site_answers(check)
    assert len(check.notes) >= 30
    assert {name: notes for name, notes in check.notes.items() if notes} == {}
    # What httplint cannot know: which caching each kind of answer should have.
    assert {name: expected_caching(name) for name in check.caching} == check.caching


def expected_caching(name: str) -> str | None:
    if name == "unknown path":
        return None  # Tornado's own 404: a path no route has stays so; a cache may keep that
    if name in ("download", "download range", "download 304"):
        return "private, no-cache"
    if name == "page" or name.startswith("static "):
        return "no-cache"
    return "no-store"  # upload state, errors, health, metrics
