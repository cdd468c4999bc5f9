"""Operating the server: request ids and the log formats, against real server processes.

`server.log_format: json` writes one JSON object per line (time, level, event, upload id,
request id where there is one) beside the text format, and each HTTP request has a request id
(taken from `X-Request-ID` when a proxy sends one) in logs and in hook payloads. The id a
client sends is kept only when it is short visible ASCII; otherwise the server makes one.
Every answer echoes the id in `X-Request-ID`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from formforge.logs import split_fields

pytestmark = pytest.mark.slow

HTTP = requests.Session()
HTTP.trust_env = False
TUS = {"Tus-Resumable": "1.0.0"}
WAIT = 10.0
GENERATED = re.compile(r"[0-9a-f]{32}")
# A pre-create hook that keeps what it was given, one JSON object a line, and accepts.
HOOK = """import json, sys
payload = json.load(sys.stdin)
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(payload) + "\\n")
print("{}")
"""


def serve(start_server: Callable[..., Any], tmp_path: Path, log_format: str | None) -> Any:
    script, record = tmp_path / "hook.py", tmp_path / "hook-calls.jsonl"
    script.write_text(HOOK)
    settings: dict[str, Any] = {
        "storage": {"fsync": False},
        "hooks": {"pre_create": [{"command": f"{sys.executable} {script} {record}"}]},
    }
    if log_format is not None:
        settings["server"] = {"log_format": log_format}
    config = tmp_path / "ops.yaml"
    config.write_text(yaml.safe_dump(settings))
    return start_server(args=["--config", str(config)])


def create(server: Any, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """A tus creation; (upload id, the X-Request-ID the answer carried)."""
    answer = HTTP.post(
        server.files_url, headers={**TUS, "Upload-Length": "5", **(headers or {})}, timeout=WAIT
    )
    assert answer.status_code == 201, answer.text
    return answer.headers["Location"].rsplit("/", 1)[-1], answer.headers["X-Request-ID"]


def hook_request_ids(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "hook-calls.jsonl").read_text().splitlines()
    return [json.loads(line)["request"]["requestId"] for line in lines]


def log_lines(server: Any, wanted: Callable[[list[str]], bool]) -> list[str]:
    """The server's output lines, once `wanted` holds for them (logging is asynchronous)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        lines = [line.rstrip("\n") for line in list(server.output)]
        if wanted(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the log never showed it\n{server.log_tail()}")


def test_request_ids_are_taken_or_made_echoed_and_given_to_hooks(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, None)
    kept = {"proxy-7f3a": "proxy-7f3a", "Root=1-67a;Parent=9b": "Root=1-67a;Parent=9b"}
    refused = ["x" * 129, "two words", "caf\u00e9", ""]
    sent: list[str] = []
    for given, expected in kept.items():
        _, echoed = create(server, {"X-Request-ID": given})
        assert echoed == expected
        sent.append(echoed)
    for given in refused:
        _, echoed = create(server, {"X-Request-ID": given.encode().decode("latin-1")})
        assert GENERATED.fullmatch(echoed), (given, echoed)
        sent.append(echoed)
    _, echoed = create(server)
    assert GENERATED.fullmatch(echoed)
    sent.append(echoed)
    assert len(set(sent)) == len(sent), "each request its own id"
    assert hook_request_ids(tmp_path) == sent

    # Every answer carries one, whichever handler gave it.
    for path in ("/healthz", "/metrics", "/", "/static/app.js", "/nowhere", "/files/nope"):
        answer = HTTP.get(server.url + path, headers={"X-Request-ID": "probe-1"}, timeout=WAIT)
        assert answer.headers.get("X-Request-ID") == "probe-1", path


def test_text_log_lines_name_the_request(start_server: Callable[..., Any], tmp_path: Path) -> None:
    server = serve(start_server, tmp_path, None)
    upload_id, _ = create(server, {"X-Request-ID": "text-req-1"})
    wanted = f"created upload_id={upload_id} size=5 request_id=text-req-1"
    log_lines(server, lambda lines: any(line.endswith(wanted) for line in lines))


def test_json_log_lines(start_server: Callable[..., Any], tmp_path: Path) -> None:
    server = serve(start_server, tmp_path, "json")
    upload_id, _ = create(server, {"X-Request-ID": "json-req-1"})
    url = server.files_url + upload_id
    patch = {**TUS, "Content-Type": "application/offset+octet-stream", "X-Request-ID": "json-req-2"}
    refused = HTTP.patch(url, headers={**patch, "Upload-Offset": "3"}, data=b"x", timeout=WAIT)
    assert refused.status_code == 409

    def about(lines: list[str], request_id: str) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [line for line in parsed if line.get("request_id") == request_id]

    lines = log_lines(server, lambda lines: bool(about(lines, "json-req-2")))
    # Every line is one JSON object, but the URL line on standard output.
    assert [line for line in lines if not line.startswith("{")] == [server.url]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    for record in records:
        assert {"time", "level", "logger", "event"} <= record.keys(), record
        moment = datetime.fromisoformat(record["time"])
        assert record["time"].endswith("Z"), record
        assert moment.utcoffset() == timedelta(0), record
    [created] = about(lines, "json-req-1")
    assert (created["event"], created["level"]) == ("created", "info")
    assert created["logger"].startswith("formforge.")
    assert created["logger"].endswith(".service")
    assert (created["upload_id"], created["size"]) == (upload_id, "5")
    [conflict] = about(lines, "json-req-2")
    assert conflict["upload_id"] == upload_id
    assert conflict["event"].startswith(f"PATCH /files/{upload_id} -> 409 offset-mismatch")
    started = [record for record in records if record["event"] == "listening"]
    assert started
    assert "request_id" not in started[0]


def test_log_messages_split_into_event_and_fields() -> None:
    assert split_fields("created upload_id=abc size=3") == (
        "created",
        {"upload_id": "abc", "size": "3"},
    )
    # A value runs to the next field: an error's message keeps its spaces.
    assert split_fields("hook failed point=pre-create error=timed out after 10 s") == (
        "hook failed",
        {"point": "pre-create", "error": "timed out after 10 s"},
    )
    assert split_fields("GET /x -> 404 not-found: no such upload") == (
        "GET /x -> 404 not-found: no such upload",
        {},
    )
