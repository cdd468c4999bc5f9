"""The published documents match the server.

- `docs/openapi.yaml` and `docs/asyncapi.yaml` are well-formed: YAML without duplicate keys,
  the right spec versions, every `$ref` resolves, every schema is a valid JSON Schema, the
  AsyncAPI operations point at messages of their own channels, and the error-code enums are
  the codes of `formforge/errors.py`.
- Socket.IO events that a real `formforge serve` emits (captured by a python-socketio client
  in the upload's room) validate against the AsyncAPI payload schemas: progress and completion
  of a REST upload, a deferred-length upload, and `uploadError` for a bad tus checksum, a body
  past the size, a connection cut mid-chunk and a deletion; the acknowledgements too.

(The REST answers are validated against openapi.yaml by `tests/protocol/test_rest.py`.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest
import requests
import socketio
import yaml
from jsonschema import Draft202012Validator

from formforge.core.errors import ErrorKind
from formforge.core.model import UploadState
from tests.conftest import ServerProcess, running_server
from tests.schemas import ASYNCAPI_PATH, OPENAPI_PATH, validate_event, validate_rest

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
TIMEOUT = 10.0
WAIT = 5.0
MESSAGES = {
    "joinUploadRoom",
    "joinUploadRoomAck",
    "leaveUploadRoom",
    "leaveUploadRoomAck",
    "uploadProgress",
    "uploadComplete",
    "uploadError",
}
# Codes that reach `uploadError` (formforge/service.py): a failed write (`_write` publishes the
# error of `_write_locked`/`_chunks`/the store: checksum, size, cut body, offset race),
# processing, termination and expiry.
EVENT_ERROR_CODES = {
    "checksum-mismatch",
    "size-exceeded",
    "connection-lost",
    "offset-mismatch",
    "processing-failed",
    "terminated",
    "expired",
}


# ============================================================ the documents


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key) for key, _ in node.value]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(map(str, duplicates))}", node.start_mark
        )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def strict_load(path: Path) -> dict[str, Any]:
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    assert isinstance(document, dict)
    return document


def refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every `$ref` in the document, with the JSON pointer of the object that holds it."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield where, node["$ref"]
        for key, value in node.items():
            yield from refs(value, f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{where}/{index}")


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: the documents are self-contained"
    node: Any = document
    for token in ref[2:].split("/"):
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref} does not resolve ({token!r})"
        assert token in node, f"{ref} does not resolve ({token!r})"
        node = node[token]
    return node


def deref(document: dict[str, Any], node: Any) -> Any:
    """Follow `$ref`s (a channel's message is a reference to a component) to the object."""
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


def schemas_in(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, schema in document["components"]["schemas"].items():
        yield f"components.schemas.{name}", schema


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return strict_load(OPENAPI_PATH)


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return strict_load(ASYNCAPI_PATH)


def test_openapi_is_well_formed(openapi: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", str(openapi["openapi"])), openapi["openapi"]
    assert openapi["info"]["title"]
    assert openapi["info"]["version"]
    for holder, ref in refs(openapi):
        assert resolve(openapi, ref) is not None, (holder, ref)
    for name, schema in schemas_in(openapi):
        Draft202012Validator.check_schema(schema)
        assert name  # every schema is a valid 2020-12 schema
    paths = openapi["paths"]
    wanted = {
        "/api/files/upload": {"post"},
        "/api/files/upload/{uploadId}": {"put", "patch", "get", "delete"},
        "/healthz": {"get"},
    }
    for path, methods in wanted.items():
        assert methods <= set(paths[path]), (path, set(paths[path]))
    operation_ids = [
        op["operationId"]
        for item in paths.values()
        for key, op in item.items()
        if key != "parameters"
    ]
    assert len(operation_ids) == len(set(operation_ids))
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5](\d\d|XX)", str(status)), (path, method, status)
                response = resolve(openapi, response["$ref"]) if "$ref" in response else response
                for media in response.get("content", {}).values():
                    assert "schema" in media, (path, method, status)


def test_openapi_says_what_the_contract_and_the_code_say(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    # CONTRACT.md "REST": the keys of each answer.
    assert set(schemas["CreateResponse"]["required"]) == {
        "uploadId",
        "uploadUrl",
        "tusUrl",
        "offset",
        "size",
        "chunkSize",
        "expiresAt",
    }
    assert set(schemas["ChunkResponse"]["required"]) == {
        "uploadId",
        "offset",
        "size",
        "complete",
        "chunkSize",
    }
    assert set(schemas["UploadStatus"]["required"]) == {
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
    assert set(schemas["Error"]["required"]) == {"error"}
    assert set(schemas["Error"]["properties"]) == {"error", "offset"}
    # The error table, whole (any of it can reach a REST client through the one renderer).
    assert set(schemas["ErrorCode"]["enum"]) == {kind.code for kind in ErrorKind}
    # GET reports every state but `terminated`, which is a 410 instead.
    assert set(schemas["UploadState"]["enum"]) == {str(state) for state in UploadState} - {
        "terminated"
    }
    put = openapi["paths"]["/api/files/upload/{uploadId}"]["put"]
    assert {"200", "400", "404", "409", "410"} <= set(map(str, put["responses"]))


def test_asyncapi_is_well_formed(asyncapi: dict[str, Any]) -> None:
    assert str(asyncapi["asyncapi"]) == "3.0.0"
    assert asyncapi["info"]["title"]
    assert asyncapi["info"]["version"]
    for holder, ref in refs(asyncapi):
        assert resolve(asyncapi, ref) is not None, (holder, ref)
    for _name, schema in schemas_in(asyncapi):
        Draft202012Validator.check_schema(schema)
    messages = asyncapi["components"]["messages"]
    assert set(messages) == MESSAGES
    for name, message in messages.items():
        assert message["name"] == name
        Draft202012Validator.check_schema(message["payload"])
    channels = asyncapi["channels"]
    for channel in channels.values():
        for parameter in re.findall(r"{(\w+)}", channel["address"]):
            assert parameter in channel.get("parameters", {}), channel["address"]
    for op_name, operation in asyncapi["operations"].items():
        assert operation["action"] in ("send", "receive"), op_name
        _check_messages_belong(asyncapi, operation, op_name)
        if "reply" in operation:
            _check_messages_belong(asyncapi, operation["reply"], f"{op_name}.reply")


def _check_messages_belong(asyncapi: dict[str, Any], holder: dict[str, Any], where: str) -> None:
    """AsyncAPI 3: an operation's (or reply's) messages are a subset of its channel's."""
    channel_ref = holder["channel"]["$ref"]
    assert channel_ref.startswith("#/channels/"), where
    for message in holder["messages"]:
        assert message["$ref"].startswith(channel_ref + "/messages/"), (where, message)
        resolve(asyncapi, message["$ref"])


def test_asyncapi_says_what_the_contract_and_the_code_say(asyncapi: dict[str, Any]) -> None:
    operations = asyncapi["operations"]
    received = {
        deref(asyncapi, m)["name"]
        for op in operations.values()
        if op["action"] == "receive"
        for m in op["messages"]
    }
    sent = {
        deref(asyncapi, m)["name"]
        for op in operations.values()
        if op["action"] == "send"
        for m in op["messages"]
    }
    assert received == {"joinUploadRoom", "leaveUploadRoom"}
    assert sent == {"uploadProgress", "uploadComplete", "uploadError"}
    for name in ("joinUploadRoom", "leaveUploadRoom"):
        assert operations[name]["reply"]["messages"], name
    schemas = asyncapi["components"]["schemas"]
    assert set(schemas["UploadErrorCode"]["enum"]) == EVENT_ERROR_CODES
    assert {kind.code for kind in ErrorKind} >= EVENT_ERROR_CODES
    assert set(schemas["UploadProgress"]["required"]) == {
        "uploadId",
        "offset",
        "size",
        "percent",
        "bytesPerSecond",
        "stage",
        "processing",
    }
    assert set(schemas["UploadProgress"]["properties"]["stage"]["enum"]) == {
        "uploading",
        "processing",
    }
    assert set(schemas["UploadComplete"]["required"]) == {
        "uploadId",
        "size",
        "filename",
        "metadata",
        "sha256",
        "url",
    }
    assert set(schemas["UploadError"]["required"]) == {
        "uploadId",
        "code",
        "message",
        "offset",
        "retryable",
    }


def test_the_schemas_reject_what_the_contract_forbids() -> None:
    """The validators are not vacuous: a payload that breaks the contract is refused."""
    good = {
        "uploadId": "A" * 22,
        "offset": 5,
        "size": None,
        "percent": None,
        "bytesPerSecond": 0.0,
        "stage": "uploading",
        "processing": None,
    }
    validate_event("uploadProgress", good)
    for bad in (
        {**good, "percent": 101},
        {**good, "size": "5"},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "offset"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_event("uploadProgress", bad)
    with pytest.raises(jsonschema.ValidationError):
        validate_event(
            "uploadError",
            {
                "uploadId": "A" * 22,
                "code": "bad-request",
                "message": "m",
                "offset": 0,
                "retryable": False,
            },
        )
    with pytest.raises(jsonschema.ValidationError):
        validate_rest(
            "UploadStatus",
            {
                "uploadId": "A" * 22,
                "filename": "a",
                "size": 1,
                "offset": 0,
                "state": "uploading",
                "percent": 0,
                "metadata": {},
                "createdAt": "yesterday",
                "expiresAt": None,
            },
        )


# ============================================================ real events


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("docs_match")
    # Frequent progress, so throttled events during a body are captured and validated too.
    config = "storage:\n  fsync: false\nevents:\n  progress_interval_ms: 50\n"
    with running_server(base, config) as process:
        yield process


@dataclass
class Room:
    """A Socket.IO client that records, and validates, every event it receives."""

    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(reconnection=False)
    )
    seen: list[tuple[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sio.on("*", self._record)

    def _record(self, name: str, data: Any = None, *more: Any) -> None:
        self.seen.append((name, data))

    async def call(self, event: str, argument: Any) -> Any:
        ack = await self.sio.call(event, argument, timeout=WAIT)
        validate_event(f"{event}Ack", ack)
        return ack

    async def wait_for(self, name: str, check: Callable[[dict[str, Any]], bool] = bool) -> Any:
        async def poll() -> Any:
            while True:
                for seen_name, data in self.seen:
                    if seen_name == name and check(data):
                        return data
                await asyncio.sleep(0.01)

        try:
            return await asyncio.wait_for(poll(), WAIT)
        except TimeoutError:
            pytest.fail(f"no matching {name} within {WAIT} s; got {self.seen}")

    def validate_all(self) -> int:
        """Every recorded event against its AsyncAPI message; how many there were."""
        for name, data in self.seen:
            assert name in ("uploadProgress", "uploadComplete", "uploadError"), name
            validate_event(name, data)
        return len(self.seen)


def in_room(server: ServerProcess, scenario: Callable[[Room], Awaitable[None]]) -> Room:
    async def run() -> Room:
        room = Room()
        await room.sio.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
        try:
            await asyncio.wait_for(scenario(room), 4 * WAIT)
        finally:
            await room.sio.disconnect()
        return room

    return asyncio.run(run())


async def off_loop(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


def rest_create(server: ServerProcess, **document: Any) -> str:
    response = requests.post(f"{server.url}/api/files/upload", json=document, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return str(response.json()["uploadId"])


def rest_put(
    server: ServerProcess, upload_id: str, start: int, data: bytes, total: int | str
) -> requests.Response:
    return requests.put(
        f"{server.url}/api/files/upload/{upload_id}",
        data=data,
        timeout=TIMEOUT,
        headers={"Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}"},
    )


def tus_create(server: ServerProcess, length: int) -> str:
    response = requests.post(
        f"{server.url}/files/", timeout=TIMEOUT, headers={**TUS, "Upload-Length": str(length)}
    )
    assert response.status_code == 201, response.text
    return str(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])


def test_a_rest_upload_emits_progress_and_complete_as_documented(server: ServerProcess) -> None:
    source = os.urandom(3 * 65536 + 123)
    upload_id = rest_create(
        server,
        filename="photo.raw",
        size=len(source),
        mimeType="image/x-raw",
        metadata={"album": "docs"},
    )
    other_id = rest_create(server, filename="bystander.bin", size=10)

    def at(end: int) -> Callable[[dict[str, Any]], bool]:
        return lambda event: bool(event["offset"] == end)

    async def scenario(room: Room) -> None:
        ack = await room.call("joinUploadRoom", upload_id)
        assert ack == {"ok": True, "room": f"upload:{upload_id}"}
        snapshot = await room.wait_for("uploadProgress")
        assert snapshot["offset"] == 0
        assert snapshot["size"] == len(source)
        for start in range(0, len(source), 65536):
            piece = source[start : start + 65536]
            response = await off_loop(rest_put, server, upload_id, start, piece, len(source))
            assert response.status_code == 200, response.text
            end = start + len(piece)
            # Always flushed at the end of a chunk request.
            await room.wait_for("uploadProgress", at(end))
        done = await room.wait_for("uploadComplete")
        assert done["sha256"] == hashlib.sha256(source).hexdigest()
        assert done["size"] == len(source)
        assert done["filename"] == "photo.raw"
        assert done["metadata"] == {
            "album": "docs",
            "filename": "photo.raw",
            "filetype": "image/x-raw",
        }
        assert done["url"] == f"{server.url}/files/{upload_id}"
        assert (await off_loop(requests.get, done["url"], timeout=TIMEOUT)).content == source
        # Events of another upload never reach this room.
        await off_loop(rest_put, server, other_id, 0, b"0123456789", 10)
        assert await room.call("leaveUploadRoom", upload_id) == {"ok": True}

    room = in_room(server, scenario)
    assert room.validate_all() >= 5
    assert {data["uploadId"] for _, data in room.seen} == {upload_id}
    names = [name for name, _ in room.seen]
    assert names.count("uploadComplete") == 1
    assert names.index("uploadComplete") > max(
        i for i, name in enumerate(names) if name == "uploadProgress"
    )
    percents = [data["percent"] for name, data in room.seen if name == "uploadProgress"]
    assert percents == sorted(percents)
    assert percents[-1] == 100


def test_a_deferred_upload_reports_null_size_and_percent(server: ServerProcess) -> None:
    upload_id = rest_create(server, filename="stream.bin", size=None)

    async def scenario(room: Room) -> None:
        await room.call("joinUploadRoom", upload_id)
        snapshot = await room.wait_for("uploadProgress")
        assert snapshot["size"] is None
        assert snapshot["percent"] is None
        response = await off_loop(rest_put, server, upload_id, 0, b"hello", "*")
        assert response.status_code == 200, response.text
        first = await room.wait_for("uploadProgress", lambda e: e["offset"] == 5)
        assert first["size"] is None
        assert first["percent"] is None
        response = await off_loop(rest_put, server, upload_id, 5, b" world", 11)
        assert response.status_code == 200, response.text
        last = await room.wait_for("uploadProgress", lambda e: e["offset"] == 11)
        assert last["size"] == 11
        assert last["percent"] == 100
        await room.wait_for("uploadComplete")

    assert in_room(server, scenario).validate_all() >= 4


def test_a_bad_tus_checksum_emits_upload_error(server: ServerProcess) -> None:
    upload_id = tus_create(server, 10)
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()

    async def scenario(room: Room) -> None:
        await room.call("joinUploadRoom", upload_id)
        response = await off_loop(
            requests.patch,
            f"{server.url}/files/{upload_id}",
            data=b"0123456789",
            timeout=TIMEOUT,
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": OCTET,
                "Upload-Checksum": f"sha1 {wrong}",
            },
        )
        assert response.status_code == 460, response.text
        error = await room.wait_for("uploadError")
        assert error["code"] == "checksum-mismatch"
        assert error["retryable"] is True
        assert error["offset"] == 0

    assert in_room(server, scenario).validate_all() >= 2


def test_a_body_past_the_size_emits_size_exceeded(server: ServerProcess) -> None:
    upload_id = tus_create(server, 4)

    async def scenario(room: Room) -> None:
        await room.call("joinUploadRoom", upload_id)
        # Chunked, so the length is only found out while the body streams in.
        response = await off_loop(
            requests.patch,
            f"{server.url}/files/{upload_id}",
            data=iter([b"0123", b"456789"]),
            timeout=TIMEOUT,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
        )
        assert response.status_code == 413, response.text
        error = await room.wait_for("uploadError")
        assert error["code"] == "size-exceeded"
        assert error["retryable"] is False

    assert in_room(server, scenario).validate_all() >= 2


def _cut_put(server: ServerProcess, upload_id: str, sent: bytes, declared: int) -> None:
    """A REST PUT whose connection closes after `sent` of `declared` bytes have been stored."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as connection:
        connection.sendall(
            f"PUT /api/files/upload/{upload_id} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Range: bytes 0-{declared - 1}/{declared}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
            + sent
        )
        deadline = time.monotonic() + WAIT
        while requests.get(f"{server.url}/api/files/upload/{upload_id}", timeout=TIMEOUT).json()[
            "offset"
        ] < len(sent):
            assert time.monotonic() < deadline, "the sent bytes never arrived"
            time.sleep(0.01)
    # Leaving the block closes the socket mid-body.


def test_a_connection_cut_mid_chunk_emits_connection_lost(server: ServerProcess) -> None:
    upload_id = rest_create(server, filename="cut.bin", size=100)

    async def scenario(room: Room) -> None:
        await room.call("joinUploadRoom", upload_id)
        await off_loop(_cut_put, server, upload_id, b"x" * 10, 100)
        error = await room.wait_for("uploadError")
        assert error["code"] == "connection-lost"
        assert error["retryable"] is True
        assert error["offset"] == 10

    assert in_room(server, scenario).validate_all() >= 2


def test_a_deletion_emits_terminated(server: ServerProcess) -> None:
    upload_id = rest_create(server, filename="gone.bin", size=10)

    async def scenario(room: Room) -> None:
        await room.call("joinUploadRoom", upload_id)
        response = await off_loop(
            requests.delete, f"{server.url}/api/files/upload/{upload_id}", timeout=TIMEOUT
        )
        assert response.status_code == 204
        error = await room.wait_for("uploadError")
        assert error["code"] == "terminated"
        assert error["retryable"] is False

    assert in_room(server, scenario).validate_all() >= 2


def test_acknowledgements_of_refused_joins_match_the_document(server: ServerProcess) -> None:
    deleted = rest_create(server, filename="deleted.bin", size=1)
    assert (
        requests.delete(f"{server.url}/api/files/upload/{deleted}", timeout=TIMEOUT).status_code
        == 204
    )

    async def scenario(room: Room) -> None:
        arguments: tuple[object, ...] = ("A" * 22, "../../etc/passwd", "", 42, [], {"id": "x"})
        for argument in (*arguments, deleted):
            ack = await room.call("joinUploadRoom", argument)
            assert ack["ok"] is False, (argument, ack)
        for argument in ("..", 42):
            ack = await room.call("leaveUploadRoom", argument)
            assert ack["ok"] is False, (argument, ack)

    room = in_room(server, scenario)
    assert room.seen == []  # a refused join gets no snapshot


def test_a_join_or_leave_without_an_id_is_acknowledged(server: ServerProcess) -> None:
    """No argument at all is a malformed id too: `{"ok": false}`, not a silent handler crash."""

    async def scenario(room: Room) -> None:
        for event in ("joinUploadRoom", "leaveUploadRoom"):
            try:
                ack = await room.sio.call(event, timeout=2)
            except socketio.exceptions.TimeoutError:
                pytest.fail(f"{event} without an argument was never acknowledged")
            validate_event(f"{event}Ack", ack)
            assert ack["ok"] is False

    in_room(server, scenario)


def test_the_documented_401_is_what_a_guarded_server_answers(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """openapi.yaml's `Unauthorized` response and the AsyncAPI server's note on tokens."""
    config = tmp_path / "auth.yaml"
    config.write_text('auth:\n  bearer_tokens: ["docs-token"]\nstorage:\n  fsync: false\n')
    server = start_server(args=["--config", str(config)])
    api = f"{server.url}/api/files/upload"
    for method, url in [
        ("POST", api),
        ("GET", f"{api}/{'A' * 22}"),
        ("PUT", f"{api}/{'A' * 22}"),
        ("DELETE", f"{api}/{'A' * 22}"),
    ]:
        response = requests.request(
            method,
            url,
            timeout=TIMEOUT,
            json={"filename": "a"},
            headers={"Authorization": "Bearer wrong"},
        )
        assert response.status_code == 401, (method, response.status_code, response.text)
        body = response.json()
        validate_rest("Error", body)
        assert body["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="formforge"'
    health = requests.get(f"{server.url}/healthz", timeout=TIMEOUT)
    assert health.status_code == 200
    validate_rest("Health", health.json())
    created = requests.post(
        api,
        json={"filename": "a", "size": 1},
        timeout=TIMEOUT,
        headers={"Authorization": "Bearer docs-token"},
    )
    assert created.status_code == 201
    validate_rest("CreateResponse", created.json())

    async def connect(auth: dict[str, str] | None) -> bool:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(server.url, transports=["websocket"], auth=auth, wait_timeout=WAIT)
        except socketio.exceptions.ConnectionError:
            return False
        await client.disconnect()
        return True

    assert asyncio.run(connect(None)) is False
    assert asyncio.run(connect({"token": "docs-token"})) is True
