"""The IETF draft "Resumable Uploads for HTTP" at /files/, against real server processes.

- Raw-socket exchanges for every interop version we speak (3 to 10): no Python HTTP client
  exposes 1xx responses, so requests are written and every response, interim `104` and
  final, is parsed by hand. Interrupted bodies are real sockets closed mid-body.
- The real tus-js-client 4.3.1 (tests/js/ietf-upload.mjs) with `protocol: 'ietf-draft-03'`
  (interop 5) and `'ietf-draft-05'` (interop 6), resuming after the server was killed.

Each finished upload is checked by downloading it (GET) and comparing the bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ServerProcess, running_server

KiB = 1024
MiB = 1024 * KiB
VERSIONS = [3, 4, 5, 6, 7, 8, 9, 10]
PROGRESS_VERSIONS = [5, 6, 7, 8, 9, 10]  # 104 progress responses came with draft -03 (interop 5)
STRICT_VERSIONS = [3, 4, 5, 6, 7]  # HEAD/DELETE carrying upload state fields get 400
PROBLEM = "https://iana.org/assignments/http-problem-types#"
JS_DIR = Path(__file__).resolve().parents[1] / "js"
IETF_UPLOAD_JS = JS_DIR / "ietf-upload.mjs"
NODE_TIMEOUT = 180.0
RETRY_DELAYS = "0,250,500,1000,1000,2000,2000,3000,3000,5000"
HTTP = requests.Session()
HTTP.trust_env = False  # loopback only, whatever the proxy settings say


# --------------------------------------------------------------------------- the wire


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    def get(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def problem(self) -> dict[str, Any]:
        assert self.get("Content-Type") == "application/problem+json", self
        return dict(json.loads(self.body))


class Wire:
    """One HTTP/1.1 connection, written and read by hand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.method = ""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def start(
        self, method: str, path: str, headers: dict[str, str], http: str = "HTTP/1.1"
    ) -> None:
        self.method = method
        lines = [
            f"{method} {path} {http}",
            f"Host: 127.0.0.1:{self.port}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, timeout: float = 10.0) -> Response:
        """The next response on the connection, interim or final."""
        head = self._read_until(b"\r\n\r\n", timeout)
        status_line, *field_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in field_lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"repeated field {name} in {head!r}"
            headers[name.lower()] = value.strip()
        code = int(status)
        if 100 <= code < 200 or code in (204, 304) or self.method == "HEAD":
            return Response(code, headers)
        assert "transfer-encoding" not in headers, headers
        return Response(code, headers, self._read_exactly(int(headers["content-length"]), timeout))

    def exchange(self, timeout: float = 10.0) -> tuple[list[Response], Response]:
        """Interim responses, then the final one."""
        interim = []
        while (response := self.response(timeout)).status < 200:
            interim.append(response)
        return interim, response

    def interim_so_far(self, wait: float) -> list[Response]:
        """Interim responses that arrived within `wait` seconds (the request still runs)."""
        deadline = time.monotonic() + wait
        found = []
        while time.monotonic() < deadline:
            try:
                found.append(self.response(timeout=deadline - time.monotonic()))
            except TimeoutError:
                break
            assert found[-1].status == 104, f"a final response mid-body: {found[-1]}"
        return found

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        while marker not in self.buffer:
            self._receive(timeout)
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_exactly(self, count: int, timeout: float) -> bytes:
        while len(self.buffer) < count:
            self._receive(timeout)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as error:
            raise ConnectionError(f"connection failed: {error}") from None
        if not data:
            raise ConnectionError(f"the server closed the connection; unread: {self.buffer!r}")
        self.buffer += data


# --------------------------------------------------------------------------- the draft, per version


def completion(version: int, complete: bool) -> dict[str, str]:
    """Interop 3 says Upload-Incomplete; every later version says Upload-Complete."""
    if version == 3:
        return {"Upload-Incomplete": "?0" if complete else "?1"}
    return {"Upload-Complete": "?1" if complete else "?0"}


def says_complete(version: int, response: Response) -> bool:
    if version == 3:
        value = response.get("Upload-Incomplete")
        assert value in ("?0", "?1"), response
        return value == "?0"
    value = response.get("Upload-Complete")
    assert value in ("?0", "?1"), response
    return value == "?1"


def append_fields(version: int, offset: int, complete: bool) -> dict[str, str]:
    fields = {"Upload-Offset": str(offset), **completion(version, complete)}
    if version >= 6:  # draft -04 on: appends are application/partial-upload
        fields["Content-Type"] = "application/partial-upload"
    return fields


def append_status(version: int) -> int:
    return 201 if version <= 6 else 204


def problem_type(version: int, name: str) -> str:
    """The draft's problem types came with -04 (interop 6), inconsistent length with -06."""
    offsets = {"mismatching-upload-offset", "completed-upload"}
    defined = {6: offsets, 7: offsets | {"inconsistent-upload-length"}}
    defined[8] = defined[9] = defined[10] = defined[7]
    return PROBLEM + name if name in defined.get(version, set()) else "about:blank"


def lifetime_key(version: int) -> str | None:
    return {6: "expires", 7: "max-age", 8: "max-age", 9: "max-age", 10: "max-age"}.get(version)


def says_incomplete_on_refusal(version: int) -> bool:
    """From interop 7 (draft -08's general rule) an answer to a request that did not complete
    the upload carries "Upload-Complete: ?0"; -12 names the 409 for a wrong offset."""
    return version >= 7


class Draft:
    """Requests of one interop version against one server."""

    def __init__(self, server: ServerProcess, version: int) -> None:
        self.server = server
        self.version = version

    def wire(self) -> Wire:
        return Wire(self.server.port)

    def fields(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Upload-Draft-Interop-Version": str(self.version), **(extra or {})}

    def call(
        self, method: str, path: str, extra: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[list[Response], Response]:
        with self.wire() as wire:
            wire.start(
                method, path, self.fields({"Content-Length": str(len(body)), **(extra or {})})
            )
            wire.send(body)
            return wire.exchange()

    def create(
        self, body: bytes = b"", complete: bool = False, extra: dict[str, str] | None = None
    ) -> tuple[str, Response]:
        interim, final = self.call(
            "POST", "/files/", {**completion(self.version, complete), **(extra or {})}, body
        )
        assert final.status == 201, final
        assert interim, (interim, final)
        assert interim[0].get("Location") == final.get("Location"), (interim, final)
        return path_of(final), final

    def append(
        self,
        path: str,
        offset: int,
        body: bytes,
        complete: bool,
        extra: dict[str, str] | None = None,
    ) -> Response:
        fields = {**append_fields(self.version, offset, complete), **(extra or {})}
        return self.call("PATCH", path, fields, body)[1]

    def head(self, path: str) -> Response:
        return self.call("HEAD", path)[1]


def path_of(response: Response) -> str:
    location = response.get("Location")
    assert location, response
    return urlsplit(location).path


def download(server: ServerProcess, path: str) -> requests.Response:
    return HTTP.get(server.url + path, timeout=30)


def stored_offset(server: ServerProcess, path: str) -> int:
    """The offset, read through tus. A draft HEAD stops a request still writing to the upload
    (the draft's concurrency rule); a tus HEAD only reads, so a test can watch an append."""
    response = HTTP.head(server.url + path, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert response.status_code == 200, response
    return int(response.headers["Upload-Offset"])


def wait_for_offset(draft: Draft, path: str, at_least: int, timeout: float = 30.0) -> int:
    """The stored offset once it is `at_least`, read while an append is still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        offset = stored_offset(draft.server, path)
        if offset >= at_least:
            return offset
        time.sleep(0.05)
    pytest.fail(f"the upload never reached {at_least} bytes\n{draft.server.log_tail()}")


def start_slow_append(draft: Draft, path: str, body: bytes, sent: int) -> Wire:
    """An append of `body` whose first `sent` bytes are stored; the request stays open."""
    wire = draft.wire()
    fields = {**append_fields(draft.version, 0, True), "Content-Length": str(len(body))}
    wire.start("PATCH", path, draft.fields(fields))
    wire.send(body[:sent])
    assert wait_for_offset(draft, path, sent) == sent
    return wire


def eventually_offset(draft: Draft, path: str, offset: int, timeout: float = 10.0) -> Response:
    """HEAD until the server has seen the cut and stored `offset` bytes."""
    deadline = time.monotonic() + timeout
    while True:
        head = draft.head(path)
        if head.status == 204 and head.get("Upload-Offset") == str(offset):
            return head
        assert time.monotonic() < deadline, f"offset never reached {offset}: {head}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the exchanges (each makes its own uploads); tests that kill or
    configure a server use `start_server`."""
    with running_server(tmp_path_factory.mktemp("ietf"), "storage:\n  fsync: false\n") as server:
        yield server


@pytest.fixture(params=VERSIONS, ids=lambda v: f"interop{v}")
def draft(request: pytest.FixtureRequest, shared_server: ServerProcess) -> Draft:
    return Draft(shared_server, request.param)


# --------------------------------------------------------------------------- creation


def test_creation_announces_the_upload_with_104_before_the_body_is_read(draft: Draft) -> None:
    """104 with Location (and Upload-Limit from interop 6), sent after the headers alone;
    the final 201 repeats the Location and reports the completed upload."""
    body = os.urandom(100 * KiB)
    with draft.wire() as wire:
        wire.start(
            "POST",
            "/files/",
            draft.fields(
                {
                    "Content-Length": str(len(body)),
                    "Content-Type": "image/png",
                    **completion(draft.version, True),
                }
            ),
        )
        first = wire.response()  # nothing of the body is sent yet
        assert first.status == 104, first
        assert first.get("Upload-Draft-Interop-Version") == str(draft.version)
        assert (first.get("Location") or "").startswith(draft.server.files_url), first
        assert first.get("Upload-Offset") is None
        limit = first.get("Upload-Limit")
        if lifetime_key(draft.version) is None:
            assert limit is None, first
        else:
            assert limit is not None, first
            assert "max-size=" in limit, first
        wire.send(body)
        interim, final = wire.exchange()
    assert all(r.get("Location") is None for r in interim), interim
    assert final.status == 201, final
    assert final.get("Location") == first.get("Location")
    assert final.get("Upload-Offset") == final.get("Upload-Length") == str(len(body))
    assert says_complete(draft.version, final)
    got = download(draft.server, path_of(final))
    assert got.status_code == 200
    assert got.content == body
    assert got.headers["Content-Type"] == "image/png"


def test_offset_retrieval(draft: Draft) -> None:
    """HEAD: 204, Upload-Offset, the completeness field, Cache-Control: no-store; no length
    while the client has not completed the upload."""
    path, created = draft.create(b"0123456789", complete=False)
    assert created.get("Upload-Offset") == "10"
    assert not says_complete(draft.version, created)
    head = draft.head(path)
    assert head.status == 204, head
    assert head.get("Upload-Offset") == "10"
    assert not says_complete(draft.version, head)
    assert head.get("Cache-Control") == "no-store"
    assert head.get("Upload-Length") is None
    key = lifetime_key(draft.version)
    limit = head.get("Upload-Limit")
    if key is None:
        assert limit is None
    else:
        assert limit, head
        assert re.search(rf"\b{key}=\d+", limit), head
        assert "max-size=" in limit, head


def test_appends_then_completion(draft: Draft) -> None:
    first, second = os.urandom(64 * KiB), os.urandom(10 * KiB)
    path, created = draft.create()  # careful creation: no body
    assert created.get("Upload-Offset") == "0"
    assert not says_complete(draft.version, created)

    response = draft.append(path, 0, first, complete=False)
    assert response.status == append_status(draft.version), response
    assert response.get("Upload-Offset") == str(len(first))
    assert not says_complete(draft.version, response)
    assert download(draft.server, path).status_code == 409  # not complete: no download

    response = draft.append(path, len(first), second, complete=True)
    total = str(len(first) + len(second))
    assert response.status == append_status(draft.version), response
    assert response.get("Upload-Offset") == response.get("Upload-Length") == total
    assert says_complete(draft.version, response)

    head = draft.head(path)
    assert says_complete(draft.version, head)
    assert head.get("Upload-Length") == total
    assert download(draft.server, path).content == first + second


def test_empty_complete_append_completes_an_upload_with_all_its_bytes(draft: Draft) -> None:
    path, _ = draft.create(b"abc", complete=False)
    response = draft.append(path, 3, b"", complete=True)
    assert response.status == append_status(draft.version), response
    assert says_complete(draft.version, response)
    assert download(draft.server, path).content == b"abc"


def test_put_creates_too(draft: Draft) -> None:
    """The draft lets any method with content create an upload; /files/ takes POST and PUT."""
    _, final = draft.call("PUT", "/files/", completion(draft.version, True), b"put body")
    assert final.status == 201, final
    assert says_complete(draft.version, final), final
    assert download(draft.server, path_of(final)).content == b"put body"


# --------------------------------------------------------------------------- errors


def test_offset_mismatch_is_409_with_problem_details(draft: Draft) -> None:
    path, _ = draft.create(b"12345", complete=False)
    response = draft.append(path, 3, b"xyz", complete=False)
    assert response.status == 409, response
    assert response.get("Upload-Offset") == "5"
    if says_incomplete_on_refusal(draft.version):
        assert response.get("Upload-Complete") == "?0", response
    problem = response.problem()
    assert problem["type"] == problem_type(draft.version, "mismatching-upload-offset")
    assert problem["expected-offset"] == 5
    assert problem["provided-offset"] == 3
    assert problem["status"] == 409
    assert draft.head(path).get("Upload-Offset") == "5"  # nothing was written


def test_a_complete_upload_takes_no_more_appends(draft: Draft) -> None:
    path, _ = draft.create(b"done", complete=True)
    empty = draft.append(path, 4, b"", complete=True)
    assert empty.status == 400, empty
    assert empty.problem()["type"] == problem_type(draft.version, "completed-upload")
    more = draft.append(path, 4, b"more", complete=True)
    assert more.status == 400, more
    assert more.problem()["type"] == problem_type(draft.version, "inconsistent-upload-length")
    assert download(draft.server, path).content == b"done"


def test_inconsistent_lengths_are_refused(draft: Draft) -> None:
    """Upload-Length and Content-Length of a completing request must agree."""
    _, final = draft.call(
        "POST", "/files/", {**completion(draft.version, True), "Upload-Length": "10"}, b"12345"
    )
    assert final.status == 400, final
    assert final.problem()["type"] == problem_type(draft.version, "inconsistent-upload-length")


def test_append_media_type(draft: Draft) -> None:
    """From interop 6 (draft -04) an append is application/partial-upload."""
    path, _ = draft.create(b"ab", complete=False)
    fields = {
        "Upload-Offset": "2",
        **completion(draft.version, False),
        "Content-Type": "application/offset+octet-stream",
    }
    _, response = draft.call("PATCH", path, fields, b"cd")
    if draft.version >= 6:
        assert response.status == 415, response
        assert draft.head(path).get("Upload-Offset") == "2"
    else:
        assert response.status == append_status(draft.version), response


def test_head_and_delete_with_state_fields(draft: Draft) -> None:
    """Up to interop 7 the server MUST refuse HEAD/DELETE carrying Upload-Offset or the
    completeness field with 400; later revisions dropped that rule."""
    path, _ = draft.create(b"ab", complete=False)
    _, head = draft.call("HEAD", path, {"Upload-Offset": "2"})
    _, delete = draft.call("DELETE", path, completion(draft.version, False))
    if draft.version in STRICT_VERSIONS:
        assert (head.status, delete.status) == (400, 400), (head, delete)
    else:
        assert (head.status, delete.status) == (204, 204), (head, delete)


def test_delete_cancels_the_upload(draft: Draft) -> None:
    path, _ = draft.create(b"abc", complete=False)
    _, response = draft.call("DELETE", path)
    assert response.status == 204, response
    if says_incomplete_on_refusal(draft.version):
        assert response.get("Upload-Complete") == "?0", response
    assert draft.head(path).status == 404
    assert draft.append(path, 3, b"d", complete=True).status == 404


def test_options_announces_limits(draft: Draft) -> None:
    _, response = draft.call("OPTIONS", "/files/")
    assert response.status == 204, response
    key = lifetime_key(draft.version)
    if key is None:
        assert response.get("Upload-Limit") is None
        assert response.get("Accept-Patch") is None
    else:
        assert response.get("Accept-Patch") == "application/partial-upload"
        limit = response.get("Upload-Limit") or ""
        assert re.fullmatch(rf"max-size=\d+, {key}=\d+", limit), response


def test_refusals_say_the_request_did_not_complete_the_upload(draft: Draft) -> None:
    """From interop 7 every answer to a creation or append that did not complete the upload
    carries the completeness field set to incomplete: refusals before the body (400, 404,
    413, 415) and after it; the 413 for a length over max-size carries Upload-Limit."""
    path, _ = draft.create(b"abc", complete=False)
    too_big = {**completion(draft.version, False), "Upload-Length": str(10**14)}
    refused = {
        "inconsistent": draft.call(
            "POST", "/files/", {**completion(draft.version, True), "Upload-Length": "9"}, b"ab"
        )[1],
        "unknown upload": draft.append(path[:-3] + "zzz", 0, b"x", complete=True),
        "over max-size": draft.call("POST", "/files/", too_big)[1],
        "past the length": draft.append(path, 3, b"x", True, {"Upload-Length": "3"}),
    }
    if draft.version >= 6:
        wrong_type = {**append_fields(draft.version, 3, True), "Content-Type": "text/plain"}
        refused["media type"] = draft.call("PATCH", path, wrong_type, b"x")[1]
    assert refused["over max-size"].status == 413, refused
    if lifetime_key(draft.version) is not None:
        assert "max-size=" in (refused["over max-size"].get("Upload-Limit") or ""), refused
    for case, response in refused.items():
        assert 400 <= response.status < 500, (case, response)
        if says_incomplete_on_refusal(draft.version):
            assert response.get("Upload-Complete") == "?0", (case, response)
        else:
            assert response.get("Upload-Complete") is None, (case, response)
    assert draft.head(path).get("Upload-Offset") == "3"  # nothing was written


def test_get_retrieves_the_offset_from_interop_9(draft: Draft) -> None:
    """Draft -12 (interop 9) on: offset retrieval by HEAD or GET, answered alike. Before, a
    GET of the upload URL is the download (409 while incomplete)."""
    path, _ = draft.create(b"0123456789", complete=False)
    _, got = draft.call("GET", path)
    if draft.version < 9:
        assert got.status == 409, got  # the tus download of an unfinished upload
        return
    assert got.status == 204, got
    assert got.body == b"", got
    assert got.get("Upload-Offset") == "10", got
    assert got.get("Upload-Complete") == "?0", got
    assert got.get("Cache-Control") == "no-store"
    assert re.search(r"max-size=\d+, max-age=\d+", got.get("Upload-Limit") or ""), got
    draft.append(path, 10, b"", complete=True)
    _, done = draft.call("GET", path)
    assert (done.status, done.get("Upload-Complete")) == (204, "?1"), done
    assert done.get("Upload-Length") == "10"
    assert download(draft.server, path).content == b"0123456789"  # without the version


def test_an_append_without_the_completeness_field(draft: Draft) -> None:
    """Interop 10 (draft -13 on) refuses an append without Upload-Complete (400, nothing
    stored); 4 to 9 take it as not completing the upload, 3 (a missing Upload-Incomplete)
    as completing it."""
    path, _ = draft.create(b"ab", complete=False)
    fields = append_fields(draft.version, 2, complete=False)
    fields.pop("Upload-Complete", None)
    fields.pop("Upload-Incomplete", None)
    _, response = draft.call("PATCH", path, fields, b"cd")
    if draft.version >= 10:
        assert response.status == 400, response
        assert "Upload-Complete" in response.problem()["detail"]
        assert draft.head(path).get("Upload-Offset") == "2"
    else:
        assert response.status == append_status(draft.version), response
        assert response.get("Upload-Offset") == "4"
        assert says_complete(draft.version, response) == (draft.version == 3), response


# --------------------------------------------------------------------------- the length


def test_a_length_indicated_by_an_incomplete_request_is_remembered(draft: Draft) -> None:
    """The draft: "The server MUST record the length ... if the Upload-Length or
    Upload-Complete: ?1 header fields are included in the request"; HEAD "MUST include the
    length in the Upload-Length header field"; "The offset could match the length, but the
    upload can still be incomplete"."""
    path, created = draft.create(b"0123456789", extra={"Upload-Length": "30"})
    assert created.get("Upload-Length") == "30"
    assert not says_complete(draft.version, created)
    head = draft.head(path)
    assert (head.get("Upload-Offset"), head.get("Upload-Length")) == ("10", "30"), head

    response = draft.append(path, 10, b"x" * 20, complete=False)  # reaches the length
    assert response.status == append_status(draft.version), response
    head = draft.head(path)
    assert (head.get("Upload-Offset"), head.get("Upload-Length")) == ("30", "30"), head
    assert not says_complete(draft.version, head)  # only the client completes an upload
    assert download(draft.server, path).status_code == 409

    response = draft.append(path, 30, b"", complete=True)
    assert says_complete(draft.version, response), response
    assert download(draft.server, path).content == b"0123456789" + b"x" * 20


def test_later_requests_must_agree_with_the_remembered_length(draft: Draft) -> None:
    """The draft: "If multiple requests include indicators, their indicated values MUST
    match", and "If the length is known, the server MUST prevent the offset from exceeding
    the upload length"."""
    path, _ = draft.create(extra={"Upload-Length": "8"})  # careful creation: no content
    assert draft.head(path).get("Upload-Length") == "8"
    refused = {
        "another length": draft.append(path, 0, b"abc", False, {"Upload-Length": "9"}),
        "past the length": draft.append(path, 0, b"x" * 9, complete=False),
        "ends before it": draft.append(path, 0, b"abc", complete=True),
    }
    inconsistent = problem_type(draft.version, "inconsistent-upload-length")
    for case, response in refused.items():
        assert response.status == 400, (case, response)
        assert response.problem()["type"] == inconsistent, (case, response)
    assert draft.head(path).get("Upload-Offset") == "0"  # nothing was written

    response = draft.append(path, 0, b"abcdefgh", complete=True, extra={"Upload-Length": "8"})
    assert says_complete(draft.version, response)
    assert response.get("Upload-Length") == "8"
    assert download(draft.server, path).content == b"abcdefgh"


# --------------------------------------------------------------------------- concurrency
# "If a server receives a new request to retrieve the offset ..., append representation data
# ..., or cancel the upload ... while a previous request for creating the upload ... or
# appending representation data ... to the same upload resource is still ongoing, the server
# SHOULD prevent race conditions, data loss, and corruption by terminating the previous
# request before processing the new request." A draft client only asks again once it gave up
# on the earlier request, so the earlier one is stopped even while bytes still arrive (tus
# stops only a silent one, and answers 423 otherwise: URLSession does not retry a 423).


def assert_stopped(wire: Wire) -> None:
    """The server ended the request by closing its connection (after any 104s)."""
    with wire, pytest.raises(ConnectionError):
        wire.exchange()


def test_an_offset_retrieval_stops_a_request_still_sending(draft: Draft) -> None:
    """The offset HEAD reports "MUST be accepted in a subsequent request to append": no byte
    of the earlier request may land after it."""
    path, _ = draft.create()
    body = os.urandom(256 * KiB)
    earlier = start_slow_append(draft, path, body, 64 * KiB)
    head = draft.head(path)
    assert head.status == 204, head
    assert head.get("Upload-Offset") == str(64 * KiB), head
    with contextlib.suppress(OSError):
        earlier.send(body[64 * KiB : 128 * KiB])  # too late: that request is over
    assert_stopped(earlier)
    assert stored_offset(draft.server, path) == 64 * KiB

    response = draft.append(path, 64 * KiB, body[64 * KiB :], complete=True)
    assert says_complete(draft.version, response), response
    assert download(draft.server, path).content == body


def test_a_new_append_takes_over_from_a_request_still_sending(draft: Draft) -> None:
    """The earlier append's bytes stay; the new one continues from them and completes."""
    path, _ = draft.create()
    body = os.urandom(256 * KiB)
    earlier = start_slow_append(draft, path, body, 64 * KiB)
    response = draft.append(path, 64 * KiB, body[64 * KiB :], complete=True)
    assert response.status == append_status(draft.version), response
    assert says_complete(draft.version, response), response
    assert_stopped(earlier)
    assert download(draft.server, path).content == body


# --------------------------------------------------------------------------- limits


def test_a_completing_request_without_content_needs_no_upload_slot(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """`limits.max_concurrent_uploads` caps requests that store bytes. A request with no
    content that completes the upload ("the request has no content. Once the request is
    processed by the server, the upload is complete") stores nothing: it is not refused
    while every slot is taken."""
    config = tmp_path / "one.yaml"
    config.write_text("storage:\n  fsync: false\nlimits:\n  max_concurrent_uploads: 1\n")
    draft = Draft(start_server(args=["--config", str(config)]), 8)
    path, _ = draft.create(b"abc")
    busy, _ = draft.create()
    with start_slow_append(draft, busy, b"x" * 100, 10):  # holds the only slot
        assert draft.append(path, 3, b"d", complete=False).status == 503  # bytes need one
        response = draft.append(path, 3, b"", complete=True)
        assert response.status == 204, response
        assert says_complete(8, response), response
        _, empty_file = draft.call("POST", "/files/", completion(8, True))
        assert empty_file.status == 201, empty_file
        assert says_complete(8, empty_file), empty_file
        assert stored_offset(draft.server, busy) == 10  # the holder was not disturbed
    assert download(draft.server, path).content == b"abc"
    assert download(draft.server, path_of(empty_file)).content == b""


# --------------------------------------------------------------------------- interruptions


def test_a_cut_creation_keeps_its_bytes_but_is_not_complete(draft: Draft) -> None:
    body = os.urandom(200 * KiB)
    with draft.wire() as wire:
        wire.start(
            "POST",
            "/files/",
            draft.fields({"Content-Length": str(len(body)), **completion(draft.version, True)}),
        )
        path = path_of(wire.response())  # the 104: the client now knows where to resume
        wire.send(body[: 120 * KiB])
        time.sleep(0.2)
    head = eventually_offset(draft, path, 120 * KiB)
    assert not says_complete(draft.version, head)
    # "The server MUST record the length ... if the Upload-Length or Upload-Complete: ?1
    # header fields are included in the request": Upload-Complete: ?1 and Content-Length.
    assert head.get("Upload-Length") == str(len(body))
    assert download(draft.server, path).status_code == 409

    response = draft.append(path, 120 * KiB, body[120 * KiB :], complete=True)
    assert says_complete(draft.version, response), response
    assert download(draft.server, path).content == body


def test_a_chunked_append_cut_after_its_last_byte_is_not_complete(draft: Draft) -> None:
    """Every byte arrived, but the body never ended (no last chunk): not complete."""
    path, _ = draft.create()
    body = os.urandom(50 * KiB)
    with draft.wire() as wire:
        fields = {**append_fields(draft.version, 0, True), "Transfer-Encoding": "chunked"}
        wire.start("PATCH", path, draft.fields(fields))
        for start in range(0, len(body), 10 * KiB):
            piece = body[start : start + 10 * KiB]
            wire.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.3)
    head = eventually_offset(draft, path, len(body))
    assert not says_complete(draft.version, head)
    assert head.get("Upload-Length") is None
    assert download(draft.server, path).status_code == 409

    response = draft.append(path, len(body), b"", complete=True)
    assert says_complete(draft.version, response), response
    assert response.get("Upload-Length") == str(len(body))
    assert download(draft.server, path).content == body


# --------------------------------------------------------------------------- 104 progress


def slow_append(
    draft: Draft, body: bytes, pieces: int, pause: float
) -> tuple[str, list[Response], list[Response], Response]:
    """Append `body` in `pieces`, pausing between them; returns the interim responses seen
    before the last piece was sent, those after, and the final response."""
    path, _ = draft.create()
    size = len(body) // pieces
    with draft.wire() as wire:
        wire.start(
            "PATCH",
            path,
            draft.fields(
                {**append_fields(draft.version, 0, True), "Content-Length": str(len(body))}
            ),
        )
        during: list[Response] = []
        for start in range(0, len(body) - size, size):
            wire.send(body[start : start + size])
            during += wire.interim_so_far(pause)
        wire.send(body[len(body) - size :])
        after, final = wire.exchange()
        # Nothing may follow the final response: on the same connection, after a progress
        # tick, the next request's answer comes first and alone.
        time.sleep(0.4)
        wire.start("HEAD", path, draft.fields())
        assert wire.exchange()[0] == [], "an interim response came after the final one"
    return path, during, after, final


@pytest.mark.parametrize("version", PROGRESS_VERSIONS, ids=lambda v: f"interop{v}")
def test_a_slow_append_reports_stored_progress_with_104s(
    shared_server: ServerProcess, version: int
) -> None:
    """104s with Upload-Offset arrive while the body is still being sent, never carry a
    Location, only grow, and all come before the final response."""
    draft = Draft(shared_server, version)
    body = os.urandom(16 * 32 * KiB)
    path, during, after, final = slow_append(draft, body, pieces=16, pause=0.15)
    assert during, "no 104 arrived while the body was being sent"
    interim = during + after
    offsets = [int(r.get("Upload-Offset") or -1) for r in interim]
    assert all(r.status == 104 for r in interim)
    assert all(r.get("Location") is None for r in interim), interim
    assert all(r.get("Upload-Draft-Interop-Version") == str(version) for r in interim)
    assert offsets == sorted(set(offsets)), offsets
    assert offsets[0] > 0, offsets
    assert offsets[-1] <= len(body)
    assert final.status == append_status(version), final
    assert says_complete(version, final), final
    assert final.get("Upload-Offset") == str(len(body))
    assert download(shared_server, path).content == body


@pytest.mark.parametrize("version", [3, 4], ids=lambda v: f"interop{v}")
def test_versions_before_5_get_no_progress_104s(shared_server: ServerProcess, version: int) -> None:
    draft = Draft(shared_server, version)
    body = os.urandom(8 * 32 * KiB)
    _, during, after, final = slow_append(draft, body, pieces=8, pause=0.15)
    assert (during, after) == ([], []), during + after
    assert final.get("Upload-Offset") == str(len(body))


def test_a_slow_creation_announces_then_reports_progress(shared_server: ServerProcess) -> None:
    draft = Draft(shared_server, 8)
    body = os.urandom(8 * 32 * KiB)
    with draft.wire() as wire:
        wire.start(
            "POST",
            "/files/",
            draft.fields({**completion(8, True), "Content-Length": str(len(body))}),
        )
        for start in range(0, len(body), 32 * KiB):
            wire.send(body[start : start + 32 * KiB])
            time.sleep(0.1)
        interim, final = wire.exchange()
    assert interim[0].get("Location") == final.get("Location"), (interim, final)
    progress = [int(r.get("Upload-Offset") or -1) for r in interim[1:]]
    assert progress
    assert progress == sorted(set(progress))
    assert progress[-1] <= len(body)
    assert all(r.get("Location") is None for r in interim[1:])
    assert download(shared_server, path_of(final)).content == body


# --------------------------------------------------------------------------- HTTP edges


@pytest.mark.parametrize("version", [6, 9, 10], ids=lambda v: f"interop{v}")
def test_expect_100_continue_gets_both_interim_responses(
    shared_server: ServerProcess, version: int
) -> None:
    """The draft (-10 on): "the server MUST NOT omit the `100 (Continue)` response because it
    has sent an interim response with the `104 (Upload Resumption Supported)` status code"."""
    draft = Draft(shared_server, version)
    with draft.wire() as wire:
        fields = {**completion(version, True), "Content-Length": "5", "Expect": "100-continue"}
        wire.start("POST", "/files/", draft.fields(fields))
        statuses = [wire.response().status, wire.response().status]
        wire.send(b"hello")
        _, final = wire.exchange()
    assert sorted(statuses) == [100, 104], statuses
    assert final.status == 201, final
    assert final.get("Upload-Offset") == "5", final


def test_http_1_0_gets_no_interim_responses(shared_server: ServerProcess) -> None:
    draft = Draft(shared_server, 6)
    with draft.wire() as wire:
        wire.start(
            "POST",
            "/files/",
            draft.fields({**completion(6, True), "Content-Length": "5"}),
            http="HTTP/1.0",
        )
        wire.send(b"hello")
        interim, final = wire.exchange()
    assert interim == [], (interim, final)
    assert final.status == 201, (interim, final)


def test_an_unknown_interop_version_is_a_plain_upload(shared_server: ServerProcess) -> None:
    """No 104 for a version we do not speak; the body is taken as the whole file."""
    draft = Draft(shared_server, 99)
    interim, final = draft.call("POST", "/files/", {"Upload-Complete": "?1"}, b"plain")
    assert interim == [], (interim, final)
    assert final.status == 201, (interim, final)
    assert download(shared_server, path_of(final)).content == b"plain"
    assert draft.head(path_of(final)).status == 400
    refused = draft.append(path_of(final), 5, b"more", complete=True)
    assert refused.status == 400, refused
    assert "3, 4, 5, 6, 7, 8, 9, 10" in refused.problem()["detail"]


def test_filename_and_type_come_from_the_representation(shared_server: ServerProcess) -> None:
    draft = Draft(shared_server, 6)
    _, final = draft.call(
        "POST",
        "/files/",
        {
            **completion(6, True),
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Disposition": "inline; filename=\"x.txt\"; filename*=UTF-8''na%C3%AFve.txt",
        },
        b"text",
    )
    got = download(shared_server, path_of(final))
    assert got.headers["Content-Type"] == "text/plain"
    assert "filename*=UTF-8''na%C3%AFve.txt" in got.headers["Content-Disposition"]


def test_tus_shares_the_endpoint_and_the_uploads(shared_server: ServerProcess) -> None:
    """A tus client at /files/ is untouched (no 104, Tus-Resumable); it sees draft uploads
    as ones with a deferred length, served by the same service."""
    tus = {"Tus-Resumable": "1.0.0"}
    with Wire(shared_server.port) as wire:
        wire.start(
            "POST",
            "/files/",
            {
                **tus,
                "Upload-Length": "3",
                "Content-Length": "3",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        wire.send(b"tus")
        interim, final = wire.exchange()
    assert interim == []
    assert final.status == 201
    assert final.get("Tus-Resumable") == "1.0.0"
    assert download(shared_server, path_of(final)).content == b"tus"

    path, _ = Draft(shared_server, 6).create(b"draft", complete=False)
    with Wire(shared_server.port) as wire:
        wire.start("HEAD", path, tus)
        head = wire.response()
    assert head.get("Upload-Offset") == "5", head
    assert head.get("Upload-Defer-Length") == "1", head


# --------------------------------------------------------------------------- tus-js-client


@dataclass
class NodeUpload:
    """tus-js-client running tests/js/ietf-upload.mjs; its output goes to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def log(self) -> str:
        return self.err.read_text()

    def upload_path(self, timeout: float = 30.0) -> str:
        """The upload's path, once the client has logged its URL."""
        deadline = time.monotonic() + timeout
        while not (found := re.findall(r"^upload-url (\S+)$", self.log(), re.M)):
            assert self.proc.poll() is None, f"the client exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"no upload URL:\n{self.log()}"
            time.sleep(0.02)
        return urlsplit(str(found[0])).path

    def result(self, server: Any) -> dict[str, Any]:
        try:
            self.proc.wait(NODE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tus-js-client did not finish:\n{self.log()[-3000:]}\n{server.log_tail()}")
        assert self.proc.returncode == 0, (
            f"exit {self.proc.returncode}:\n{self.log()[-3000:]}\n{server.log_tail()}"
        )
        return dict(json.loads(self.out.read_text().strip().splitlines()[-1]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_ietf_js(node: str, server: Any, src: Path, protocol: str, *args: str) -> NodeUpload:
    cmd = [
        node,
        str(IETF_UPLOAD_JS),
        "--endpoint",
        server.files_url,
        "--file",
        str(src),
        "--protocol",
        protocol,
        "--verbose",
        *args,
    ]
    out, err = src.with_suffix(".stdout"), src.with_suffix(".stderr")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return NodeUpload(subprocess.Popen(cmd, stdout=stdout, stderr=stderr), out, err)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)])
def test_tus_js_client_uploads_in_appends(
    node: str, start_server: Callable[..., Any], tmp_path: Path, protocol: str, version: int
) -> None:
    server = start_server()
    data = os.urandom(5 * MiB + 123)
    src = tmp_path / "source.bin"
    src.write_bytes(data)
    client = run_ietf_js(node, server, src, protocol, "--chunk-size", str(MiB))
    try:
        result = client.result(server)
    finally:
        client.stop()
    assert len(re.findall(r"^chunk-complete ", client.log(), re.M)) == 6, client.log()
    assert result["bytes"] == len(data)
    got = download(server, urlsplit(result["url"]).path)
    assert got.status_code == 200
    assert sha256(got.content) == sha256(data)
    head = Draft(server, version).head(urlsplit(result["url"]).path)
    assert head.get("Upload-Complete") == "?1"
    assert head.get("Upload-Length") == str(len(data))


@pytest.mark.slow
@pytest.mark.parametrize(("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)])
def test_tus_js_client_resumes_after_the_server_was_killed(
    node: str, start_server: Callable[..., Any], tmp_path: Path, protocol: str, version: int
) -> None:
    """One append of the whole file, slowed by a bandwidth cap; SIGKILL the server mid-body
    and start it again (same port and data): the client's retry asks for the offset, appends
    the rest with Upload-Complete: ?1, and the download equals the source."""
    config = tmp_path / "slow.yaml"
    config.write_text("storage:\n  fsync: false\nlimits:\n  bandwidth_per_upload: 2097152\n")
    server = start_server(args=["--config", str(config)])
    data = os.urandom(8 * MiB)
    src = tmp_path / "source.bin"
    src.write_bytes(data)
    client = run_ietf_js(node, server, src, protocol, "--retry-delays", RETRY_DELAYS)
    try:
        draft = Draft(server, version)
        path = client.upload_path()
        before = wait_for_offset(draft, path, MiB)
        server.kill()
        time.sleep(0.5)  # let the client see the dead connection
        server.restart()
        head = draft.head(path)
        after = int(head.get("Upload-Offset") or -1)
        assert before <= after < len(data), (before, after)
        assert head.get("Upload-Complete") == "?0", head
        result = client.result(server)
    finally:
        client.stop()
    assert urlsplit(result["url"]).path == path
    got = download(server, path)
    assert got.status_code == 200
    assert sha256(got.content) == sha256(data)
