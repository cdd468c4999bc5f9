"""Bandwidth limits and the concurrency cap (config `limits.*`), enforced by backpressure."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from formforge.core.bandwidth import Bandwidth, Schedule

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_schedule_makes_each_reader_wait_until_its_bytes_are_paid_for() -> None:
    clock = FakeClock()
    schedule = Schedule(2 * MiB, clock)
    assert schedule.reserve(MiB) == pytest.approx(0.5)
    clock.now += 0.5
    assert schedule.reserve(MiB) == pytest.approx(0.5)
    clock.now += 10  # idle time is not saved up into a burst
    assert schedule.reserve(MiB) == pytest.approx(0.5)


def test_a_shared_schedule_splits_the_rate_between_readers() -> None:
    clock = FakeClock()
    schedule = Schedule(4 * MiB, clock)
    first, second = schedule.reserve(MiB), schedule.reserve(MiB)
    assert (first, second) == pytest.approx((0.25, 0.5))


def test_no_limit_costs_nothing() -> None:
    assert Bandwidth(None, None).pace_for_upload() is None


# -- against a real server -----------------------------------------------------------------


def start(start_server: Any, tmp_path: Path, limits: str) -> Any:
    config = tmp_path / "limits.yaml"
    config.write_text(f"storage:\n  fsync: false\nlimits:\n{limits}")
    return start_server(args=["--config", str(config)])


def create(server: Any, size: int) -> str:
    response = requests.post(
        server.files_url, headers={**TUS, "Upload-Length": str(size)}, timeout=10
    )
    assert response.status_code == 201
    return str(response.headers["Location"])


def patch(url: str, body: bytes, offset: int = 0) -> requests.Response:
    headers = {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return requests.patch(url, data=body, headers=headers, timeout=60)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_per_upload_cap_sets_the_pace_and_memory_stays_flat(
    start_server: Any, tmp_path: Path
) -> None:
    server = start(start_server, tmp_path, "  bandwidth_per_upload: 2097152\n")
    url = create(server, 20 * MiB)
    body = os.urandom(20 * MiB)
    assert server.proc is not None
    before = rss_mib(server.proc.pid)
    peak = [before]

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_mib(server.proc.pid))
            time.sleep(0.2)

    done = threading.Event()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    response = patch(url, body)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join(5)
    assert response.status_code == 204
    assert 10 * 0.85 <= elapsed <= 10 * 1.15, f"20 MiB at 2 MiB/s took {elapsed:.1f} s"
    # The server reads slowly instead of buffering: the body never piles up in memory.
    assert max(peak) - before < 16, f"RSS grew from {before:.0f} to {max(peak):.0f} MiB"


def test_a_total_cap_is_shared_fairly(start_server: Any, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, "  bandwidth_total: 4194304\n")
    urls = [create(server, 10 * MiB) for _ in range(2)]
    finished: dict[str, float] = {}
    started = time.monotonic()

    def upload(url: str) -> None:
        assert patch(url, os.urandom(10 * MiB)).status_code == 204
        finished[url] = time.monotonic() - started

    threads = [threading.Thread(target=upload, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    first, second = sorted(finished.values())
    # 20 MiB at 4 MiB/s together: about 5 s, and neither upload starves the other.
    assert 5 * 0.85 <= second <= 5 * 1.3, f"both finished after {second:.1f} s"
    assert first >= 0.8 * second, f"unfair: {first:.1f} s vs {second:.1f} s"


def test_beyond_max_concurrent_uploads_is_503_with_retry_after(
    start_server: Any, tmp_path: Path
) -> None:
    server = start(start_server, tmp_path, "  max_concurrent_uploads: 1\n")
    busy, other = create(server, 100), create(server, 100)
    host, port = server.url.removeprefix("http://").split(":")
    path = "/files/" + busy.rsplit("/", 1)[1]
    with socket.create_connection((host, int(port)), timeout=10) as holder:
        holder.sendall(
            (
                f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
                "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                "Content-Length: 100\r\n\r\n"
            ).encode()
            + b"x" * 10
        )
        deadline = time.monotonic() + 5
        while requests.head(busy, headers=TUS, timeout=5).headers["Upload-Offset"] != "10":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = patch(other, b"y" * 100)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
    # Once the first request is gone, the other upload is welcome.
    deadline = time.monotonic() + 5
    while (answer := patch(other, b"y" * 100)).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert answer.status_code == 204


def test_an_upload_read_slowly_on_purpose_is_not_taken_over_as_stalled(
    start_server: Any, tmp_path: Path
) -> None:
    server = start(start_server, tmp_path, "  bandwidth_per_upload: 262144\n")
    url = create(server, 3 * MiB)
    answers: list[requests.Response] = []
    paced = threading.Thread(target=lambda: answers.append(patch(url, os.urandom(3 * MiB))))
    paced.start()
    # Waits between reads of the paced body last seconds (a 1 MiB read at 256 KiB/s is 4 s):
    # longer than the one second of silence after which a holder counts as stalled.
    time.sleep(2.5)
    offset = int(requests.head(url, headers=TUS, timeout=5).headers["Upload-Offset"])
    assert 0 < offset < 3 * MiB
    competing = patch(url, b"z" * 10, offset=offset)
    assert competing.status_code == 423, competing.text
    paced.join(30)
    assert [answer.status_code for answer in answers] == [204]
    assert requests.head(url, headers=TUS, timeout=5).headers["Upload-Offset"] == str(3 * MiB)
