"""The REST front (`/api/files/upload`) against a real `formforge serve`, one test per line
of CONTRACT.md's "REST" section. Every JSON answer is also validated against
`docs/openapi.yaml` (`tests/schemas.py`), so the published document cannot drift from the
server.

One server runs for the module. After every test an autouse check asserts the server is
alive and healthy, logged no traceback, and wrote nothing outside its data dir (a decoy
upload in `sentinel/`, next to the data dir, is what path-traversal ids aim at).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import string
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess, running_server
from tests.schemas import validate_rest

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
TIMEOUT = 10.0
CREATE_KEYS = {"uploadId", "uploadUrl", "tusUrl", "offset", "size", "chunkSize", "expiresAt"}
CHUNK_KEYS = {"uploadId", "offset", "size", "complete", "chunkSize"}
STATUS_KEYS = {
    "uploadId",
    "filename",
    "size",
    "offset",
    "state",
    "percent",
    "metadata",
    "createdAt",
    "expiresAt",
}
STATES = {"uploading", "processing", "complete", "error", "expired"}
UNKNOWN_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # well-formed, never issued
DECOY_INFO = json.dumps(
    {
        "size": 4,
        "metadata": {"filename": "victim"},
        "created_at": "2024-01-01T00:00:00+00:00",
        "state": "complete",
        "concat": None,
        "parts": [],
        "sha256": None,
        "error": None,
    }
).encode()
DECOY_BIN = b"SAFE"


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("rest")
    sentinel = base / "sentinel"
    sentinel.mkdir()
    (sentinel / "victim.info").write_bytes(DECOY_INFO)
    (sentinel / "victim.bin").write_bytes(DECOY_BIN)
    with running_server(base, "storage:\n  fsync: false\n") as process:
        yield process


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy
    # A fresh connection per request: an error answered before the body is read closes
    # the connection, and a pooled one could race that close.
    session.headers["Connection"] = "close"
    yield session
    session.close()


@pytest.fixture(autouse=True)
def server_stays_healthy(server: ServerProcess) -> Iterator[None]:
    logged = len(server.output)
    yield
    assert server.proc is not None, server.log_tail()
    assert server.proc.poll() is None, server.log_tail()
    health = requests.get(server.url + "/healthz", timeout=TIMEOUT)
    assert health.status_code == 200
    validate_rest("Health", health.json())
    time.sleep(0.02)  # let the log pump catch up with what the last request logged
    new_lines = "".join(server.output[logged:])
    assert "Traceback" not in new_lines, new_lines
    base = server.data_dir.parent
    assert (base / "sentinel" / "victim.info").read_bytes() == DECOY_INFO
    assert (base / "sentinel" / "victim.bin").read_bytes() == DECOY_BIN
    allowed = ("data", "conf", "sentinel")
    stray = [p for p in base.rglob("*") if p.relative_to(base).parts[0] not in allowed]
    assert stray == [], stray


# --------------------------------------------------------------------------- helpers


def body_of(response: requests.Response) -> Any:
    """The JSON body of an answer, which is never a traceback."""
    assert "Traceback" not in response.text
    assert response.headers.get("Content-Type", "").startswith("application/json"), (
        response.status_code,
        response.headers,
        response.text,
    )
    return response.json()


def expect_error(
    response: requests.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = body_of(response)
    validate_rest("Error", body)
    if code is not None:
        assert body["error"]["code"] == code, body
    assert body["error"]["message"].strip()
    return body  # type: ignore[no-any-return]


def create(server: ServerProcess, http: requests.Session, **document: Any) -> dict[str, Any]:
    document.setdefault("filename", "file.bin")
    response = http.post(f"{server.url}/api/files/upload", json=document, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    body = body_of(response)
    validate_rest("CreateResponse", body)
    return body  # type: ignore[no-any-return]


def send(
    server: ServerProcess,
    http: requests.Session,
    upload_id: str,
    start: int,
    data: bytes,
    total: int | str = "*",
    method: str = "PUT",
    content_range: str | None = None,
) -> requests.Response:
    header = (
        f"bytes {start}-{start + len(data) - 1}/{total}" if content_range is None else content_range
    )
    return http.request(
        method,
        f"{server.url}/api/files/upload/{upload_id}",
        headers={"Content-Range": header},
        data=data,
        timeout=TIMEOUT,
    )


def chunk_ok(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    body = body_of(response)
    validate_rest("ChunkResponse", body)
    assert set(body) == CHUNK_KEYS
    return body  # type: ignore[no-any-return]


def position(answer: dict[str, Any]) -> dict[str, Any]:
    """A chunk answer without its `chunkSize` advice, which depends on earlier bodies."""
    return {key: value for key, value in answer.items() if key != "chunkSize"}


def status(server: ServerProcess, http: requests.Session, upload_id: str) -> dict[str, Any]:
    response = http.get(f"{server.url}/api/files/upload/{upload_id}", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = body_of(response)
    validate_rest("UploadStatus", body)
    assert set(body) >= STATUS_KEYS
    return body  # type: ignore[no-any-return]


def wait_for_state(
    server: ServerProcess,
    http: requests.Session,
    upload_id: str,
    wanted: str,
    timeout: float = 10.0,
) -> dict[str, Any]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        current = status(server, http, upload_id)
        seen.append(current["state"])
        if current["state"] == wanted:
            return current
        assert time.monotonic() < deadline, f"state never became {wanted}: {seen[-5:]}"
        time.sleep(0.02)


def download(server: ServerProcess, upload_id: str) -> bytes:
    response = requests.get(f"{server.url}/files/{upload_id}", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.content


def tus_head(server: ServerProcess, upload_id: str) -> requests.Response:
    return requests.head(f"{server.url}/files/{upload_id}", headers=TUS, timeout=TIMEOUT)


def parse_utc(text: str) -> datetime:
    """ISO-8601 in UTC, as the contract says: an explicit zero offset (`Z`)."""
    assert text.endswith("Z"), text
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


def stored_bytes(server: ServerProcess, upload_id: str) -> int:
    return (server.data_dir / f"{upload_id}.bin").stat().st_size


def upload_all(server: ServerProcess, http: requests.Session, source: bytes, chunk: int) -> str:
    created = create(server, http, size=len(source))
    for start in range(0, len(source), chunk):
        chunk_ok(
            send(
                server, http, created["uploadId"], start, source[start : start + chunk], len(source)
            )
        )
    return str(created["uploadId"])


# --------------------------------------------------------------------------- POST: create


def test_create_is_201_with_every_key_and_a_location(
    server: ServerProcess, http: requests.Session
) -> None:
    response = http.post(
        f"{server.url}/api/files/upload",
        json={"filename": "report.pdf", "size": 10},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201
    body = body_of(response)
    validate_rest("CreateResponse", body)
    assert set(body) == CREATE_KEYS
    upload_id = body["uploadId"]
    assert body["offset"] == 0
    assert body["size"] == 10
    assert isinstance(body["chunkSize"], int)
    assert body["chunkSize"] > 0
    assert parse_utc(body["expiresAt"]) > datetime.now(UTC)
    assert body["uploadUrl"] == f"{server.url}/api/files/upload/{upload_id}"
    assert body["tusUrl"] == f"{server.url}/files/{upload_id}"
    assert response.headers["Location"] == body["uploadUrl"]
    # The Location leads to the upload.
    assert http.get(response.headers["Location"], timeout=TIMEOUT).status_code == 200


def test_upload_id_is_the_tus_id(server: ServerProcess, http: requests.Session) -> None:
    created = create(server, http, filename="both.txt", size=10)
    head = tus_head(server, created["uploadId"])
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "10"
    assert f"filename {base64.b64encode(b'both.txt').decode()}" in head.headers["Upload-Metadata"]
    # Half over tus, half over REST: one upload.
    patch = requests.patch(
        created["tusUrl"],
        data=b"01234",
        timeout=TIMEOUT,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
    )
    assert patch.status_code == 204
    assert chunk_ok(send(server, http, created["uploadId"], 5, b"56789", 10))["complete"]
    assert download(server, created["uploadId"]) == b"0123456789"


def test_create_keeps_mime_type_and_metadata(server: ServerProcess, http: requests.Session) -> None:
    created = create(
        server,
        http,
        filename="photo.jpg",
        size=3,
        mimeType="image/jpeg",
        metadata={"album": "holidays", "note": "été ✓"},
    )
    current = status(server, http, created["uploadId"])
    assert current["filename"] == "photo.jpg"
    assert current["metadata"] == {
        "album": "holidays",
        "note": "été ✓",
        "filename": "photo.jpg",
        "filetype": "image/jpeg",
    }


def test_size_null_defers_the_length_until_a_chunk_declares_it(
    server: ServerProcess, http: requests.Session
) -> None:
    created = create(server, http, filename="stream.bin", size=None)
    upload_id = created["uploadId"]
    assert created["size"] is None
    assert tus_head(server, upload_id).headers["Upload-Defer-Length"] == "1"
    first = status(server, http, upload_id)
    assert first["size"] is None
    assert first["percent"] is None

    answer = chunk_ok(send(server, http, upload_id, 0, b"hello", content_range="bytes 0-4/*"))
    assert position(answer) == {"uploadId": upload_id, "offset": 5, "size": None, "complete": False}
    middle = status(server, http, upload_id)
    assert middle["offset"] == 5
    assert middle["size"] is None
    assert middle["percent"] is None
    assert middle["state"] == "uploading"

    answer = chunk_ok(send(server, http, upload_id, 5, b" world", 11))
    assert position(answer) == {"uploadId": upload_id, "offset": 11, "size": 11, "complete": True}
    assert tus_head(server, upload_id).headers["Upload-Length"] == "11"
    wait_for_state(server, http, upload_id, "complete")
    assert download(server, upload_id) == b"hello world"


def test_zero_byte_upload_completes(server: ServerProcess, http: requests.Session) -> None:
    """`size: 0` has every byte at creation: it must reach `complete` like any other."""
    created = create(server, http, filename="empty.txt", size=0)
    done = wait_for_state(server, http, created["uploadId"], "complete", timeout=2.0)
    assert done["percent"] == 100
    assert done.get("sha256") == hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------- PUT / PATCH


@pytest.mark.parametrize(
    "methods",
    [("PUT", "PUT", "PUT"), ("PATCH", "PATCH", "PATCH"), ("PUT", "PATCH", "PUT")],
    ids=["put", "patch", "mixed"],
)
def test_put_and_patch_both_write_chunks(
    server: ServerProcess, http: requests.Session, methods: tuple[str, ...]
) -> None:
    source = bytes(range(256)) * 3 + b"tail"
    created = create(server, http, size=len(source))
    upload_id, offset = created["uploadId"], 0
    for method, piece in zip(methods, (source[:300], source[300:600], source[600:]), strict=True):
        answer = chunk_ok(send(server, http, upload_id, offset, piece, len(source), method))
        offset += len(piece)
        assert answer["offset"] == offset
        assert answer["size"] == len(source)
        assert answer["complete"] is (offset == len(source))
    wait_for_state(server, http, upload_id, "complete")
    assert download(server, upload_id) == source


@pytest.mark.parametrize(
    "start", [6, 100, 0, 3], ids=["ahead", "far-ahead", "zero-overlap", "inside-then-beyond"]
)
def test_wrong_start_is_409_with_the_current_offset(
    server: ServerProcess, http: requests.Session, start: int
) -> None:
    """START is not the offset and the range is not entirely received: 409 {error, offset}.
    `zero-overlap` and `inside-then-beyond` start inside the received part but end past it."""
    created = create(server, http, size=200)
    upload_id = created["uploadId"]
    chunk_ok(send(server, http, upload_id, 0, b"ABCDE", 200))
    response = send(server, http, upload_id, start, b"xxxxxxxx", 200)
    body = expect_error(response, 409, "offset-mismatch")
    validate_rest("OffsetMismatchError", body)
    assert body["offset"] == 5
    assert status(server, http, upload_id)["offset"] == 5
    assert stored_bytes(server, upload_id) == 5
    # Resuming from the offset the 409 gave works, and nothing of the refused body is kept.
    chunk_ok(send(server, http, upload_id, body["offset"], b"F" * 195, 200))
    assert download(server, upload_id) == b"ABCDE" + b"F" * 195


def test_retry_of_a_received_range_is_200_and_stores_nothing_twice(
    server: ServerProcess, http: requests.Session
) -> None:
    source = b"".join(f"{i:04d}".encode() for i in range(100))  # 400 distinct-ish bytes
    created = create(server, http, size=len(source))
    upload_id = created["uploadId"]
    chunk_ok(send(server, http, upload_id, 0, source[:100], len(source)))
    chunk_ok(send(server, http, upload_id, 100, source[100:250], len(source), "PATCH"))
    # The same ranges again (the answer got lost, the client retries), and a sub-range.
    for start, end, method in [
        (0, 100, "PUT"),
        (100, 250, "PATCH"),
        (0, 250, "PUT"),
        (20, 30, "PATCH"),
        (249, 250, "PUT"),
    ]:
        answer = chunk_ok(
            send(server, http, upload_id, start, source[start:end], len(source), method)
        )
        assert position(answer) == {
            "uploadId": upload_id,
            "offset": 250,
            "size": len(source),
            "complete": False,
        }
        assert stored_bytes(server, upload_id) == 250
    assert chunk_ok(send(server, http, upload_id, 250, source[250:], len(source)))["complete"]
    # A retry after completion is still a 200 with the final offset.
    again = chunk_ok(send(server, http, upload_id, 250, source[250:], len(source)))
    assert position(again) == {
        "uploadId": upload_id,
        "offset": len(source),
        "size": len(source),
        "complete": True,
    }
    wait_for_state(server, http, upload_id, "complete")
    assert stored_bytes(server, upload_id) == len(source)
    assert download(server, upload_id) == source


# --------------------------------------------------------------------------- GET status


def test_status_has_every_key_and_sane_values(
    server: ServerProcess, http: requests.Session
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    created = create(server, http, filename="notes.txt", size=8, metadata={"k": "v"})
    upload_id = created["uploadId"]
    chunk_ok(send(server, http, upload_id, 0, b"abc", 8))
    current = status(server, http, upload_id)
    assert current["uploadId"] == upload_id
    assert current["filename"] == "notes.txt"
    assert current["size"] == 8
    assert current["offset"] == 3
    assert current["state"] == "uploading"
    assert current["percent"] == pytest.approx(37.5)
    assert current["metadata"] == {"k": "v", "filename": "notes.txt"}
    created_at = parse_utc(current["createdAt"])
    assert before <= created_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert parse_utc(current["expiresAt"]) > datetime.now(UTC)


def test_percent_runs_from_0_to_100(server: ServerProcess, http: requests.Session) -> None:
    created = create(server, http, size=3)
    upload_id = created["uploadId"]
    seen = [status(server, http, upload_id)["percent"]]
    for offset in range(3):
        chunk_ok(send(server, http, upload_id, offset, b"x", 3))
        seen.append(status(server, http, upload_id)["percent"])
    assert seen[0] == 0
    assert seen[-1] == 100
    assert seen == sorted(seen)
    assert all(0 <= p <= 100 for p in seen)
    assert seen[1] == pytest.approx(33.33, abs=0.01)


def test_state_goes_uploading_then_processing_or_complete(
    server: ServerProcess, http: requests.Session
) -> None:
    source = b"z" * 4096
    created = create(server, http, size=len(source))
    upload_id = created["uploadId"]
    chunk_ok(send(server, http, upload_id, 0, source[:1000], len(source)))
    assert status(server, http, upload_id)["state"] == "uploading"
    chunk_ok(send(server, http, upload_id, 1000, source[1000:], len(source)))
    assert status(server, http, upload_id)["state"] in {"processing", "complete"}
    done = wait_for_state(server, http, upload_id, "complete")
    assert done["offset"] == done["size"] == len(source)
    assert done["percent"] == 100
    assert done["expiresAt"] is None
    assert done.get("sha256") in (None, hashlib.sha256(source).hexdigest())


def test_status_of_a_tus_upload_without_filename(
    server: ServerProcess, http: requests.Session
) -> None:
    created = requests.post(
        f"{server.url}/files/", timeout=TIMEOUT, headers={**TUS, "Upload-Length": "4"}
    )
    assert created.status_code == 201
    upload_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    current = status(server, http, upload_id)
    assert current["filename"] is None
    assert current["metadata"] == {}
    assert current["state"] in STATES


# --------------------------------------------------------------------------- DELETE


def test_delete_is_204_and_removes_the_data(server: ServerProcess, http: requests.Session) -> None:
    created = create(server, http, size=10)
    upload_id = created["uploadId"]
    chunk_ok(send(server, http, upload_id, 0, b"secret", 10))
    assert (server.data_dir / f"{upload_id}.bin").exists()
    response = http.delete(f"{server.url}/api/files/upload/{upload_id}", timeout=TIMEOUT)
    assert response.status_code == 204
    assert response.content == b""
    assert not (server.data_dir / f"{upload_id}.bin").exists()
    assert not any(
        b"secret" in path.read_bytes() for path in server.data_dir.iterdir() if path.is_file()
    )
    expect_error(http.get(f"{server.url}/api/files/upload/{upload_id}", timeout=TIMEOUT), 410)
    expect_error(send(server, http, upload_id, 6, b"more", 10), 410)
    expect_error(http.delete(f"{server.url}/api/files/upload/{upload_id}", timeout=TIMEOUT), 410)
    assert tus_head(server, upload_id).status_code in (404, 410)


# --------------------------------------------------------------------------- bad input


BAD_CONTENT_RANGES = [
    "",
    "bytes",
    "bytes 0-4",
    "bytes 0-4/",
    "bytes=0-4/10",
    "bytes 0-4/10 trailing",
    "items 0-4/10",
    "BYTES 0-4/10",
    "bytes */10",
    "bytes 0-/10",
    "bytes -4/10",
    "bytes -1-4/10",
    "bytes 4-0/10",
    "bytes 0-10/10",
    "bytes 0-4/abc",
    "bytes 0-4/-10",
    "bytes 0x0-0x4/10",
    "bytes 0-4/10, bytes 5-9/10",
    "bytes 0.0-4/10",
    "bytes 0-4/1e3",
    "bytes " + "9" * 21 + "-4/10",
    "bytes 0 - 4 / 10",
    "0-4/10",
]


@pytest.mark.parametrize("content_range", BAD_CONTENT_RANGES)
def test_garbage_content_range_is_400(
    server: ServerProcess, http: requests.Session, content_range: str
) -> None:
    created = create(server, http, size=10)
    response = send(server, http, created["uploadId"], 0, b"hello", content_range=content_range)
    expect_error(response, 400, "bad-request")
    assert status(server, http, created["uploadId"])["offset"] == 0


def test_missing_content_range_is_400(server: ServerProcess, http: requests.Session) -> None:
    created = create(server, http, size=10)
    response = http.put(created["uploadUrl"], data=b"hello", timeout=TIMEOUT)
    expect_error(response, 400, "bad-request")


@pytest.mark.parametrize(
    ("content_range", "data"),
    [
        ("bytes 0-4/10", b"hel"),
        ("bytes 0-4/10", b"hello!"),
        ("bytes 0-9/10", b"x"),
        ("bytes 0-0/*", b"ab"),
    ],
    ids=["shorter", "longer", "much-shorter", "deferred-longer"],
)
def test_content_length_not_matching_the_range_is_400(
    server: ServerProcess, http: requests.Session, content_range: str, data: bytes
) -> None:
    created = create(server, http, size=10)
    response = send(server, http, created["uploadId"], 0, data, content_range=content_range)
    body = expect_error(response, 400, "bad-request")
    assert "Content-Length" in body["error"]["message"]
    assert status(server, http, created["uploadId"])["offset"] == 0


def test_chunked_body_without_content_length_is_400(
    server: ServerProcess, http: requests.Session
) -> None:
    created = create(server, http, size=10)
    response = http.put(
        created["uploadUrl"],
        data=iter([b"hel", b"lo"]),
        timeout=TIMEOUT,
        headers={"Content-Range": "bytes 0-4/10"},
    )
    expect_error(response, 400, "bad-request")
    assert status(server, http, created["uploadId"])["offset"] == 0


def test_a_total_contradicting_the_size_is_400_in_rest_terms(
    server: ServerProcess, http: requests.Session
) -> None:
    created = create(server, http, size=10)
    body = expect_error(send(server, http, created["uploadId"], 0, b"hello", 12), 400)
    # The REST client sent no tus header: the message must speak of what it did send.
    assert "Upload-" not in body["error"]["message"], body


def test_a_chunk_past_a_known_size_is_refused(
    server: ServerProcess, http: requests.Session
) -> None:
    created = create(server, http, size=4)
    response = send(server, http, created["uploadId"], 0, b"hello", content_range="bytes 0-4/*")
    expect_error(response, 413, "size-exceeded")
    assert status(server, http, created["uploadId"])["offset"] == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"{'filename': 'a'}",
        b'{"filename": "a",}',
        b"nul",
        b"\xff\xfe\x00",
        b'{"filename": "a" "size": 1}',
        b"filename=a&size=1",
        b'{"filename": "a"}}',
    ],
    ids=[
        "empty",
        "open-brace",
        "single-quotes",
        "trailing-comma",
        "nul",
        "binary",
        "missing-comma",
        "form",
        "extra-brace",
    ],
)
def test_malformed_json_is_400(server: ServerProcess, http: requests.Session, raw: bytes) -> None:
    response = http.post(
        f"{server.url}/api/files/upload",
        data=raw,
        timeout=TIMEOUT,
        headers={"Content-Type": "application/json"},
    )
    expect_error(response, 400, "bad-request")


def test_deeply_nested_json_is_400(server: ServerProcess, http: requests.Session) -> None:
    for raw in (b"[" * 60_000, b'{"filename": "a", "metadata": ' + b"[" * 60_000):
        response = http.post(f"{server.url}/api/files/upload", data=raw, timeout=TIMEOUT)
        expect_error(response, 400)


def test_a_document_over_64_kib_is_413(server: ServerProcess, http: requests.Session) -> None:
    raw = json.dumps({"filename": "a", "size": 1, "metadata": {"v": "x" * 70_000}}).encode()
    response = http.post(f"{server.url}/api/files/upload", data=raw, timeout=TIMEOUT)
    expect_error(response, 413, "size-exceeded")


@pytest.mark.parametrize(
    "document",
    [[], [{"filename": "a"}], "a", 1, 1.5, None, True],
    ids=["list", "list-of-object", "string", "int", "float", "null", "bool"],
)
def test_json_that_is_not_an_object_is_400(
    server: ServerProcess, http: requests.Session, document: Any
) -> None:
    response = http.post(
        f"{server.url}/api/files/upload", data=json.dumps(document), timeout=TIMEOUT
    )
    expect_error(response, 400, "bad-request")


MISSING = object()


@pytest.mark.parametrize(
    "filename",
    [MISSING, "", None, 5, ["a"], {"a": "b"}, True, "x" * 1025],
    ids=["missing", "empty", "null", "int", "list", "object", "bool", "too-long"],
)
def test_bad_filename_is_400(server: ServerProcess, http: requests.Session, filename: Any) -> None:
    document: dict[str, Any] = {"size": 5}
    if filename is not MISSING:
        document["filename"] = filename
    response = http.post(f"{server.url}/api/files/upload", json=document, timeout=TIMEOUT)
    body = expect_error(response, 400, "bad-request")
    assert "filename" in body["error"]["message"]


@pytest.mark.parametrize(
    "size",
    [-1, -(2**70), "5", "", 1.5, 5.0, True, [], {}],
    ids=[
        "negative",
        "very-negative",
        "string",
        "empty-string",
        "float",
        "integral-float",
        "bool",
        "list",
        "object",
    ],
)
def test_bad_size_is_400(server: ServerProcess, http: requests.Session, size: Any) -> None:
    response = http.post(
        f"{server.url}/api/files/upload", json={"filename": "a", "size": size}, timeout=TIMEOUT
    )
    body = expect_error(response, 400, "bad-request")
    assert "size" in body["error"]["message"]


def test_size_above_the_maximum_is_413(server: ServerProcess, http: requests.Session) -> None:
    response = http.post(
        f"{server.url}/api/files/upload", json={"filename": "a", "size": 10**30}, timeout=TIMEOUT
    )
    expect_error(response, 413, "size-exceeded")


@pytest.mark.parametrize("mime", [5, ["image/png"], {"a": "b"}], ids=["int", "list", "object"])
def test_bad_mime_type_is_400(server: ServerProcess, http: requests.Session, mime: Any) -> None:
    response = http.post(
        f"{server.url}/api/files/upload",
        json={"filename": "a", "size": 1, "mimeType": mime},
        timeout=TIMEOUT,
    )
    expect_error(response, 400, "bad-request")


@pytest.mark.parametrize(
    "metadata",
    [
        {"a": 1},
        {"a": None},
        {"a": {"b": "c"}},
        {"a": ["b"]},
        {"a": True},
        ["a", "b"],
        "a=b",
        5,
    ],
    ids=[
        "int-value",
        "null-value",
        "object-value",
        "list-value",
        "bool-value",
        "list",
        "string",
        "int",
    ],
)
def test_metadata_not_a_string_map_is_400(
    server: ServerProcess, http: requests.Session, metadata: Any
) -> None:
    response = http.post(
        f"{server.url}/api/files/upload",
        json={"filename": "a", "size": 1, "metadata": metadata},
        timeout=TIMEOUT,
    )
    body = expect_error(response, 400, "bad-request")
    assert "metadata" in body["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    ['"\\udcff"', '"\\ud800"', '"a\\udfff"'],
    ids=["escaped-byte", "high-surrogate", "low-surrogate"],
)
@pytest.mark.parametrize("place", ["value", "filename"])
def test_metadata_that_is_not_unicode_text_is_400(
    server: ServerProcess, http: requests.Session, raw: str, place: str
) -> None:
    """JSON strings with a lone surrogate are not text (binary values come from tus only)."""
    fields = {"filename": raw} if place == "filename" else {"filename": '"a"', "k": raw}
    metadata = f', "metadata": {{"k": {fields["k"]}}}' if "k" in fields else ""
    document = f'{{"filename": {fields["filename"]}, "size": 1{metadata}}}'  # raw JSON escapes
    before = set(os.listdir(server.data_dir))
    response = http.post(f"{server.url}/api/files/upload", data=document, timeout=TIMEOUT)
    expect_error(response, 400, "invalid-metadata")
    assert set(os.listdir(server.data_dir)) == before


@pytest.mark.parametrize(
    "metadata", [[], "", 0, False], ids=["empty-list", "empty-string", "zero", "false"]
)
def test_falsy_metadata_that_is_not_a_map_is_400(
    server: ServerProcess, http: requests.Session, metadata: Any
) -> None:
    """Not a string-to-string map, however empty it looks: refused like `5` or `"a=b"`."""
    response = http.post(
        f"{server.url}/api/files/upload",
        json={"filename": "a", "size": 1, "metadata": metadata},
        timeout=TIMEOUT,
    )
    expect_error(response, 400, "bad-request")


@pytest.mark.parametrize(
    "key",
    ["a b", " lead", "trail ", "a,b", "", "tab\there", "new\nline", "caf\u00e9", "nul\u0000"],
    ids=[
        "space",
        "leading-space",
        "trailing-space",
        "comma",
        "empty",
        "tab",
        "newline",
        "non-ascii",
        "nul",
    ],
)
def test_metadata_keys_that_tus_cannot_carry_are_400(
    server: ServerProcess, http: requests.Session, key: str
) -> None:
    response = http.post(
        f"{server.url}/api/files/upload",
        json={"filename": "a", "size": 1, "metadata": {key: "v"}},
        timeout=TIMEOUT,
    )
    expect_error(response, 400, "invalid-metadata")


def test_overlapping_range_is_409_and_keeps_the_stored_bytes(
    server: ServerProcess, http: requests.Session
) -> None:
    created = create(server, http, size=10)
    upload_id = created["uploadId"]
    chunk_ok(send(server, http, upload_id, 0, b"01234", 10))
    # START inside the received part, END beyond it.
    body = expect_error(send(server, http, upload_id, 3, b"XXXXX", 10), 409, "offset-mismatch")
    assert body["offset"] == 5
    body = expect_error(send(server, http, upload_id, 0, b"XXXXXXXXXX", 10), 409, "offset-mismatch")
    assert body["offset"] == 5
    assert stored_bytes(server, upload_id) == 5
    chunk_ok(send(server, http, upload_id, 5, b"56789", 10))
    assert download(server, upload_id) == b"0123456789"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_unknown_id_is_404(server: ServerProcess, http: requests.Session, method: str) -> None:
    url = f"{server.url}/api/files/upload/{UNKNOWN_ID}"
    if method in ("PUT", "PATCH"):
        response = http.request(
            method, url, data=b"hello", timeout=TIMEOUT, headers={"Content-Range": "bytes 0-4/5"}
        )
    else:
        response = http.request(method, url, timeout=TIMEOUT)
    expect_error(response, 404, "not-found")


TRAVERSAL_IDS = [
    "..%2F..%2Fsentinel%2Fvictim",
    "..%2fsentinel%2fvictim",
    "%2e%2e%2fsentinel%2fvictim",
    "../sentinel/victim",
    "..",
    "%2e%2e",
    "..%5Csentinel%5Cvictim",
    "%2Fetc%2Fpasswd",
    "victim%00AAAAAAAAAAAAAAAAAAAAA",
    "A" * 65,
    "....................",
    "%C3%A9t%C3%A9-xxxxxxxxxxx",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("raw_id", TRAVERSAL_IDS)
def test_path_traversal_ids_are_404(server: ServerProcess, method: str, raw_id: str) -> None:
    """Sent byte for byte (no client-side normalisation); the decoy outside the data dir is
    checked by the autouse fixture."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connection = HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        headers = {"Content-Range": "bytes 0-3/4"} if method == "PUT" else {}
        connection.request(
            method,
            f"/api/files/upload/{raw_id}",
            body=b"EVIL" if method == "PUT" else None,
            headers=headers,
        )
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    assert response.status == 404, (method, raw_id, response.status, text)
    assert "Traceback" not in text
    validate_rest("Error", json.loads(text))


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/" + UNKNOWN_ID)]
)
def test_wrong_method_is_405_json(
    server: ServerProcess, http: requests.Session, method: str, suffix: str
) -> None:
    response = http.request(method, f"{server.url}/api/files/upload{suffix}", timeout=TIMEOUT)
    expect_error(response, 405, "method-not-allowed")


# --------------------------------------------------------------------------- random input


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
CREATE_DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "filename": st.text(max_size=20) | JSON_VALUES,
        "size": st.integers(-10, 2**40) | st.none() | JSON_VALUES,
        "mimeType": st.text(max_size=10) | JSON_VALUES,
        "metadata": st.dictionaries(
            st.text(max_size=6), st.text(max_size=6) | JSON_SCALARS, max_size=3
        )
        | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
CREATE_BODIES = (
    CREATE_DOCUMENTS.map(lambda d: json.dumps(d).encode())
    | JSON_VALUES.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=40)
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=CREATE_BODIES)
def test_random_json_to_create_never_5xx(
    server: ServerProcess, http: requests.Session, raw: bytes
) -> None:
    response = http.post(f"{server.url}/api/files/upload", data=raw, timeout=TIMEOUT)
    assert response.status_code < 500, (raw, response.status_code, response.text)
    body = body_of(response)
    validate_rest("CreateResponse" if response.status_code == 201 else "Error", body)
    if response.status_code != 201:
        assert 400 <= response.status_code < 500


HEADER_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=30
).map(str.strip)
NUMBERS = st.integers(0, 12) | st.integers(0, 2**70)
CONTENT_RANGES = (
    st.builds(
        lambda sep, start, end, total: f"bytes{sep}{start}-{end}/{total}",
        st.sampled_from([" ", "  ", "=", "", " \t"]),
        NUMBERS,
        NUMBERS,
        NUMBERS.map(str) | st.just("*") | HEADER_TEXT,
    )
    | HEADER_TEXT
    | st.none()
)


@pytest.fixture(scope="module")
def fuzzed_upload(server: ServerProcess, http: requests.Session) -> str:
    return str(create(server, http, filename="fuzz.bin", size=None)["uploadId"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content_range=CONTENT_RANGES,
    data=st.binary(max_size=16),
    method=st.sampled_from(["PUT", "PATCH"]),
)
def test_random_content_range_never_5xx(
    server: ServerProcess,
    http: requests.Session,
    fuzzed_upload: str,
    content_range: str | None,
    data: bytes,
    method: str,
) -> None:
    headers = {} if content_range is None else {"Content-Range": content_range.strip()}
    response = http.request(
        method,
        f"{server.url}/api/files/upload/{fuzzed_upload}",
        headers=headers,
        data=data,
        timeout=TIMEOUT,
    )
    assert response.status_code < 500, (content_range, response.status_code, response.text)
    body = body_of(response)
    validate_rest("ChunkResponse" if response.status_code == 200 else "Error", body)
    current = status(server, http, fuzzed_upload)
    assert current["offset"] == stored_bytes(server, fuzzed_upload)


def test_server_still_works_after_the_fuzzing(
    server: ServerProcess, http: requests.Session
) -> None:
    source = b"after the storm"
    upload_id = upload_all(server, http, source, 4)
    wait_for_state(server, http, upload_id, "complete")
    assert download(server, upload_id) == source
