"""Hints for thin links: chunk sizes that follow each client's measured rate.

- `formforge/throughput.py`: the rate per client (a moving average over its request bodies,
  for a bounded number of clients) and the advice it gives: about `TARGET_SECONDS` of the
  rate, a power of two within bounds, 8 MiB for a client not measured yet.
- A real server: a REST client capped by `limits.bandwidth_per_upload` is told to send
  small chunks, in the chunk's own answer and in its next creation; a tus PATCH teaches the
  same table; a fast client is told to send bigger chunks.
- The page's rule (`static/chunking.js`), run under Node: same bounds and target, with the
  sample rules, shrinking at once and growing at most twofold per chunk.
"""

from __future__ import annotations

import json
import subprocess
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from formforge.fronts.throughput import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CLIENTS,
    MIN_CHUNK_SIZE,
    MIN_SAMPLE_BYTES,
    MIN_SAMPLE_SECONDS,
    TARGET_SECONDS,
    Throughput,
    chunk_size_for,
)
from tests.schemas import validate_rest

KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 30.0
CHUNKING_CASES_JS = Path(__file__).resolve().parents[1] / "js" / "chunking-cases.mjs"


# ============================================================ the rate and the advice


@pytest.mark.parametrize(
    ("bytes_per_second", "advice"),
    [
        (None, 8 * MiB),  # not measured yet: the default
        (4 * MiB, 8 * MiB),  # two seconds' worth
        (3 * MiB, 4 * MiB),  # 6 MiB, rounded down to a power of two
        (256 * KiB, 512 * KiB),
        (255 * KiB, 256 * KiB),
        (10 * KiB, 256 * KiB),  # never below the floor
        (0.0, 256 * KiB),
        (40 * MiB, 64 * MiB),
        (10 * 1024 * MiB, 64 * MiB),  # never above the ceiling
        (float("inf"), 64 * MiB),
    ],
)
def test_advice_is_two_seconds_of_the_rate_as_a_bounded_power_of_two(
    bytes_per_second: float | None, advice: int
) -> None:
    assert chunk_size_for(bytes_per_second) == advice


def test_every_advice_is_a_power_of_two_within_the_bounds() -> None:
    for rate in range(0, 50 * MiB, 97 * KiB):
        size = chunk_size_for(rate)
        assert MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE
        assert size & (size - 1) == 0, size
        assert size <= max(rate * TARGET_SECONDS, MIN_CHUNK_SIZE)


def test_an_unknown_client_gets_the_default() -> None:
    table = Throughput()
    assert table.rate("192.0.2.1") is None
    assert table.chunk_size("192.0.2.1") == DEFAULT_CHUNK_SIZE


def test_the_rate_is_a_moving_average_per_client() -> None:
    table = Throughput()
    table.record("a", 1 * MiB, 1.0)
    assert table.rate("a") == 1 * MiB  # the first sample is the rate
    table.record("a", 3 * MiB, 1.0)
    assert table.rate("a") == 2 * MiB  # halfway to the new sample
    table.record("a", 2 * MiB, 2.0)
    assert table.rate("a") == 1.5 * MiB
    assert table.chunk_size("a") == 2 * MiB
    assert table.rate("b") is None  # one client's rate is its own


@pytest.mark.parametrize(
    ("count", "seconds"),
    [
        (MIN_SAMPLE_BYTES - 1, 1.0),  # too few bytes to tell a rate
        (8 * MiB, MIN_SAMPLE_SECONDS * 0.99),  # too quick: buffers, not the link
        (0, 0.0),
        (MiB, -1.0),
    ],
)
def test_a_body_too_short_to_tell_a_rate_changes_nothing(count: int, seconds: float) -> None:
    table = Throughput()
    table.record("a", count, seconds)
    assert table.rate("a") is None
    table.record("b", MiB, 1.0)
    table.record("b", count, seconds)
    assert table.rate("b") == MiB


def test_the_table_keeps_the_clients_heard_from_last() -> None:
    table = Throughput(max_clients=3)
    for client in ("a", "b", "c"):
        table.record(client, MiB, 1.0)
    table.record("a", MiB, 1.0)  # heard from again: now the freshest
    table.record("d", MiB, 1.0)
    assert len(table) == 3
    assert table.rate("b") is None  # the stalest is forgotten
    assert all(table.rate(client) == MiB for client in ("a", "c", "d"))


def test_a_crowd_of_clients_cannot_grow_the_table() -> None:
    table = Throughput()
    for number in range(2 * MAX_CLIENTS):
        table.record(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}", MiB, 1.0)
    assert len(table) == MAX_CLIENTS == 10_000


# ============================================================ a real server


def start_limited(start_server: Any, tmp_path: Path, limits: str = "") -> Any:
    config = tmp_path / "throughput.yaml"
    config.write_text("storage:\n  fsync: false\n" + (f"limits:\n{limits}" if limits else ""))
    return start_server(args=["--config", str(config)])


def rest_create(server: Any, size: int) -> dict[str, Any]:
    answer = requests.post(
        f"{server.url}/api/files/upload", json={"filename": "f.bin", "size": size}, timeout=TIMEOUT
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    validate_rest("CreateResponse", body)
    return body


def rest_put(server: Any, upload_id: str, data: bytes) -> dict[str, Any]:
    answer = requests.put(
        f"{server.url}/api/files/upload/{upload_id}",
        data=data,
        headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    validate_rest("ChunkResponse", body)
    return body


def test_a_capped_rest_client_is_told_to_send_small_chunks(
    start_server: Any, tmp_path: Path
) -> None:
    server = start_limited(start_server, tmp_path, "  bandwidth_per_upload: 262144\n")
    created = rest_create(server, 512 * KiB)
    assert created["chunkSize"] == DEFAULT_CHUNK_SIZE  # nothing known about this client yet

    started = time.monotonic()
    answer = rest_put(server, created["uploadId"], b"x" * (512 * KiB))
    took = time.monotonic() - started
    assert answer["complete"], f"512 KiB at 256 KiB/s took {took:.2f} s"
    assert took >= 1.8, f"512 KiB at 256 KiB/s took {took:.2f} s"
    # About two seconds of 256 KiB/s: the chunk's own answer already says so...
    assert MIN_CHUNK_SIZE <= answer["chunkSize"] <= 512 * KiB, answer
    # ...and so does the next creation by the same client.
    assert rest_create(server, 10 * MiB)["chunkSize"] == answer["chunkSize"]
    print(f"capped at 256 KiB/s: {took:.2f} s for 512 KiB, chunkSize {answer['chunkSize']}")


def test_a_tus_patch_teaches_the_rest_front_too(start_server: Any, tmp_path: Path) -> None:
    server = start_limited(start_server, tmp_path, "  bandwidth_per_upload: 262144\n")
    tus = {"Tus-Resumable": "1.0.0"}
    created = requests.post(
        server.files_url, headers={**tus, "Upload-Length": str(512 * KiB)}, timeout=TIMEOUT
    )
    assert created.status_code == 201
    patched = requests.patch(
        created.headers["Location"],
        data=b"y" * (512 * KiB),
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        timeout=TIMEOUT,
    )
    assert patched.status_code == 204
    assert MIN_CHUNK_SIZE <= rest_create(server, MiB)["chunkSize"] <= 512 * KiB


def put_paced(server: Any, upload_id: str, pieces: int, piece: int, pause: float) -> Any:
    """A REST PUT whose body goes out `piece` bytes at a time, `pause` seconds apart: a fast
    link, but one whose rate is not lost in loopback's socket buffers."""
    address = urlsplit(server.url)
    connection = HTTPConnection(address.hostname or "", address.port, timeout=TIMEOUT)
    size = pieces * piece
    try:
        connection.putrequest("PUT", f"/api/files/upload/{upload_id}")
        connection.putheader("Content-Range", f"bytes 0-{size - 1}/{size}")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        for _ in range(pieces):
            connection.send(b"z" * piece)
            time.sleep(pause)
        answer = connection.getresponse()
        assert answer.status == 200
        return json.loads(answer.read())
    finally:
        connection.close()


def test_a_fast_client_is_told_to_send_bigger_chunks(start_server: Any, tmp_path: Path) -> None:
    server = start_limited(start_server, tmp_path)
    created = rest_create(server, 8 * MiB)
    assert created["chunkSize"] == DEFAULT_CHUNK_SIZE
    # 8 MiB over 0.15 to 1 s: at least 8 MiB/s, so at least two seconds' worth is 16 MiB.
    started = time.monotonic()
    answer = put_paced(server, created["uploadId"], pieces=16, piece=512 * KiB, pause=0.01)
    took = time.monotonic() - started
    validate_rest("ChunkResponse", answer)
    assert took < 1.0, f"the paced PUT took {took:.2f} s"
    assert 16 * MiB <= answer["chunkSize"] <= MAX_CHUNK_SIZE, answer
    assert rest_create(server, MiB)["chunkSize"] == answer["chunkSize"]
    print(f"unlimited: {took:.2f} s for 8 MiB, chunkSize {answer['chunkSize']}")


# ============================================================ the page's rule, under Node


def next_sizes(node: str, cases: list[tuple[float, float, float]]) -> dict[str, Any]:
    proc = subprocess.run(
        [node, str(CHUNKING_CASES_JS)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# (bytes of the last chunk, seconds it took, the chunk size it was sent at) -> next size
PAGE_CASES: list[tuple[tuple[float, float, float], float]] = [
    ((8 * MiB, 32.0, 8 * MiB), 512 * KiB),  # 256 KiB/s: down at once to two seconds' worth
    ((1 * MiB, 8.0, 1 * MiB), 256 * KiB),  # 128 KiB/s
    ((1 * MiB, 100.0, 1 * MiB), 256 * KiB),  # never below the floor
    ((8 * MiB, 0.1, 8 * MiB), 16 * MiB),  # fast: grows, but only twofold per chunk
    ((32 * MiB, 0.1, 32 * MiB), 64 * MiB),
    ((64 * MiB, 0.1, 64 * MiB), 64 * MiB),  # never above the ceiling
    ((4 * MiB, 1.0, 8 * MiB), 8 * MiB),  # 4 MiB/s: two seconds' worth is what it sends
    ((3 * MiB, 1.0, 8 * MiB), 4 * MiB),  # 6 MiB, rounded down to a power of two
    ((64 * KiB - 1, 10.0, 8 * MiB), 8 * MiB),  # too few bytes to tell: unchanged
    ((8 * MiB, 0.049, 1 * MiB), 1 * MiB),  # too quick to tell: unchanged
    ((0, 0, 3 * MiB), 3 * MiB),
]


def test_the_pages_rule_under_node(node: str) -> None:
    result = next_sizes(node, [case for case, _ in PAGE_CASES])
    assert result["next"] == [size for _, size in PAGE_CASES]
    # The page and the server agree on the bounds, the target and what a sample is.
    assert result["constants"] == {
        "MIN_CHUNK_SIZE": MIN_CHUNK_SIZE,
        "MAX_CHUNK_SIZE": MAX_CHUNK_SIZE,
        "TARGET_SECONDS": TARGET_SECONDS,
        "MIN_SAMPLE_BYTES": MIN_SAMPLE_BYTES,
        "MIN_SAMPLE_SECONDS": MIN_SAMPLE_SECONDS,
    }
