"""Real, unmodified tus clients against a real `formforge serve` process.

- tus-js-client 4.3.1 (Node build), driven by tests/js/tus-upload.mjs; pinned in
  tests/js/package-lock.json (`npm ci --prefix tests/js` installs it; the fixture below does
  it once if tests/js/node_modules is missing).
- tuspy (the `tusclient` package), in-process.

Every upload is checked the same way: the finished upload downloads (`GET`) to exactly the
source bytes (sha256). Only 127.0.0.1 is contacted, and every wait has a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import pytest
import requests
from tusclient import client as tus_client

pytestmark = pytest.mark.slow

KiB = 1024
MiB = 1024 * KiB
JS_DIR = Path(__file__).resolve().parents[1] / "js"
TUS_UPLOAD_JS = JS_DIR / "tus-upload.mjs"
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
HTTP_TIMEOUT = 30.0  # seconds, for each of our own requests
NODE_TIMEOUT = 180.0  # seconds, for one whole tus-js-client upload
# tus-js-client's retry delays (ms) for the kill test: ~18 s in all, far more than a restart.
RETRY_DELAYS = "0,250,500,1000,1000,2000,2000,3000,3000,5000"

# Our own requests never go through a proxy, whatever the environment says.
HTTP = requests.Session()
HTTP.trust_env = False

T = TypeVar("T")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """tuspy uses plain `requests`, which honours HTTP(S)_PROXY: keep loopback direct."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1"])))


@pytest.fixture
def server(start_server: Callable[..., Any]) -> Any:
    """A fresh `formforge serve` on its own data dir (see conftest.py)."""
    return start_server()


def _restart(server: Any) -> None:
    """SIGKILL (if still running) and start again: same port, same data dir."""
    server.restart()


def _server_log(server: Any, lines: int = 40) -> str:
    return str(server.log_tail(lines))


# --------------------------------------------------------------------------- helpers


def make_random_file(path: Path, size: int) -> str:
    """Write `size` random bytes (1 MiB at a time); return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(MiB, remaining))
            f.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def download_sha256(url: str, server: Any) -> tuple[str, int]:
    """`GET` a finished upload; return (sha256, byte count) of the body."""
    assert url.startswith(server.files_url), f"upload URL {url!r} is not under {server.files_url}"
    digest = hashlib.sha256()
    count = 0
    with HTTP.get(url, stream=True, timeout=HTTP_TIMEOUT) as resp:
        assert resp.status_code == 200, (
            f"GET {url} -> {resp.status_code} {dict(resp.headers)} {resp.text[:500]!r}, "
            f"expected 200 with the upload's bytes\n{_server_log(server)}"
        )
        for block in resp.iter_content(MiB):
            digest.update(block)
            count += len(block)
    return digest.hexdigest(), count


def tus_head(url: str, server: Any) -> requests.Response:
    assert url.startswith(server.files_url), f"upload URL {url!r} is not under {server.files_url}"
    resp = HTTP.head(url, headers=TUS_HEADERS, timeout=HTTP_TIMEOUT)
    assert resp.status_code in (200, 204), (
        f"HEAD {url} (Tus-Resumable: 1.0.0) -> {resp.status_code} {dict(resp.headers)}, "
        f"expected 200/204\n{_server_log(server)}"
    )
    return resp


def run_tus_js(node: str, server: Any, path: Path, *args: str) -> dict[str, Any]:
    """Upload `path` with tus-js-client; return the script's JSON result line."""
    cmd = [node, str(TUS_UPLOAD_JS), "--endpoint", server.files_url, "--file", str(path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NODE_TIMEOUT)
    assert proc.returncode == 0, (
        f"tus-js-client upload failed (exit {proc.returncode}): {' '.join(cmd[1:])}\n"
        f"stderr: {proc.stderr}\nstdout: {proc.stdout}\n{_server_log(server)}"
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def call_with_deadline(
    server: Any, seconds: float, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run a blocking tuspy call in a worker thread. tuspy sets no HTTP time-outs, so if the
    call is not done in time the server is killed (which ends the blocked request) and the
    test fails, instead of hanging."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=seconds)
        except TimeoutError:
            server.kill()
            pytest.fail(
                f"{getattr(fn, '__qualname__', fn)} did not finish within {seconds} s\n"
                f"{_server_log(server)}"
            )


# --------------------------------------------------------------------------- tus-js-client


def test_tus_js_client_uploads_in_chunks(node: str, server: Any, tmp_path: Path) -> None:
    size = 20 * MiB
    src = tmp_path / "random-20MiB.bin"
    sha = make_random_file(src, size)

    result = run_tus_js(node, server, src, "--chunk-size", str(MiB))

    assert result["bytes"] == size
    assert download_sha256(result["url"], server) == (sha, size)
    head = tus_head(result["url"], server)
    assert head.headers.get("Upload-Offset") == str(size), dict(head.headers)
    assert head.headers.get("Upload-Length") == str(size), dict(head.headers)


def test_tus_js_client_parallel_uploads_concatenate(node: str, server: Any, tmp_path: Path) -> None:
    """parallelUploads: 4 partial uploads (`Upload-Concat: partial`), then a final upload
    (`Upload-Concat: final;<urls>`) whose download is the whole file."""
    size = 20 * MiB
    src = tmp_path / "random-20MiB-parallel.bin"
    sha = make_random_file(src, size)

    result = run_tus_js(node, server, src, "--chunk-size", str(MiB), "--parallel", "4")

    assert result["bytes"] == size
    assert download_sha256(result["url"], server) == (sha, size)
    # tus concatenation: a finished final upload reports Upload-Offset == Upload-Length and
    # the Upload-Concat it was created with (the partial URLs may come back relative).
    final = tus_head(result["url"], server).headers
    assert final.get("Upload-Offset") == final.get("Upload-Length") == str(size), dict(final)
    concat = final.get("Upload-Concat", "")
    assert concat.startswith("final;"), f"HEAD final: Upload-Concat {concat!r}"
    partial_urls = [urljoin(server.files_url, u) for u in concat[len("final;") :].split()]
    assert len(partial_urls) == 4, concat
    partial_sizes = []
    for url in partial_urls:
        part = tus_head(url, server).headers
        assert part.get("Upload-Concat") == "partial", (url, dict(part))
        assert part.get("Upload-Offset") == part.get("Upload-Length"), (url, dict(part))
        partial_sizes.append(int(part["Upload-Length"]))
    assert sum(partial_sizes) == size, partial_sizes


def test_tus_js_client_survives_server_kill(node: str, server: Any, tmp_path: Path) -> None:
    """SIGKILL the server mid-upload and restart it on the same port: tus-js-client's retries
    (HEAD, then PATCH from the offset) finish the upload, and no acknowledged byte is lost."""
    size = 40 * MiB
    src = tmp_path / "random-40MiB.bin"
    sha = make_random_file(src, size)
    out_path, err_path = tmp_path / "node.stdout", tmp_path / "node.stderr"
    cmd = [
        node,
        str(TUS_UPLOAD_JS),
        "--endpoint",
        server.files_url,
        "--file",
        str(src),
        "--chunk-size",
        str(256 * KiB),
        "--retry-delays",
        RETRY_DELAYS,
        "--verbose",
    ]

    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    try:
        # The script logs `upload-url URL` once created, then `chunk-complete OFFSET/SIZE`
        # each time the server acknowledges a PATCH (OFFSET is the server's Upload-Offset).
        deadline = time.monotonic() + 60
        acknowledged = 0
        while acknowledged < 2 * MiB:
            if proc.poll() is not None:
                pytest.fail(
                    f"tus-js-client exited ({proc.returncode}) before the kill:\n"
                    f"{err_path.read_text()}\n{_server_log(server)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"under 2 MiB acknowledged after 60 s:\n{err_path.read_text()}\n"
                    f"{_server_log(server)}"
                )
            time.sleep(0.01)
            offsets = re.findall(r"^chunk-complete (\d+)/\d+\n", err_path.read_text(), re.M)
            acknowledged = int(offsets[-1]) if offsets else 0
        server.kill()
        assert acknowledged < size, "the upload finished before the kill; nothing was tested"
        url_lines = re.findall(r"^upload-url (\S+)\n", err_path.read_text(), re.M)
        assert url_lines, err_path.read_text()
        assert set(url_lines) == {url_lines[0]}, err_path.read_text()
        upload_url = url_lines[0]

        time.sleep(0.5)  # let the client hit the dead server (connection reset / refused)
        _restart(server)
        offset_after_restart = int(tus_head(upload_url, server).headers["Upload-Offset"])
        assert offset_after_restart >= acknowledged, (
            f"HEAD after the restart reports Upload-Offset {offset_after_restart}, but the "
            f"server had acknowledged {acknowledged} bytes before it was killed"
        )

        try:
            proc.wait(NODE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"tus-js-client did not finish within {NODE_TIMEOUT} s after the restart"
                f":\n{err_path.read_text()[-3000:]}\n{_server_log(server)}"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    stderr = err_path.read_text()
    assert proc.returncode == 0, (
        f"tus-js-client failed after the restart (exit {proc.returncode}):\n{stderr[-3000:]}\n"
        f"{_server_log(server)}"
    )
    result = json.loads(out_path.read_text().strip().splitlines()[-1])
    assert result == {"url": upload_url, "bytes": size}
    assert download_sha256(upload_url, server) == (sha, size)


# --------------------------------------------------------------------------- tuspy


def test_tuspy_uploads_with_checksums(server: Any, tmp_path: Path) -> None:
    """tuspy, 4 MiB chunks, each PATCH with `Upload-Checksum: sha1 <base64>`."""
    size = 50 * MiB
    src = tmp_path / "random-50MiB.bin"
    sha = make_random_file(src, size)
    uploader = tus_client.TusClient(server.files_url).uploader(
        str(src),
        chunk_size=4 * MiB,
        metadata={"filename": src.name},
        upload_checksum=True,
    )

    call_with_deadline(server, 120, uploader.upload)

    assert uploader.offset == size
    assert uploader.url is not None
    assert download_sha256(uploader.url, server) == (sha, size)
    with HTTP.get(uploader.url, stream=True, timeout=HTTP_TIMEOUT) as resp:
        disposition = resp.headers.get("Content-Disposition", "")
    assert src.name in disposition, f"GET Content-Disposition {disposition!r} lacks the filename"


def test_tuspy_resumes_after_server_kill(server: Any, tmp_path: Path) -> None:
    """Upload 3 chunks, SIGKILL the server, restart it: a NEW uploader for the same URL finds
    exactly the acknowledged offset (HEAD) and finishes the upload."""
    size, chunk = 24 * MiB, 4 * MiB
    src = tmp_path / "random-24MiB.bin"
    sha = make_random_file(src, size)
    options: dict[str, Any] = {
        "chunk_size": chunk,
        "metadata": {"filename": src.name},
        "upload_checksum": True,
    }
    first = tus_client.TusClient(server.files_url).uploader(str(src), **options)
    call_with_deadline(server, 60, first.upload, stop_at=3 * chunk)
    acknowledged = first.offset
    assert acknowledged == 3 * chunk
    assert first.url is not None, first.url
    assert first.url.startswith(server.files_url), first.url

    server.kill()
    _restart(server)

    second = call_with_deadline(
        server,
        30,
        tus_client.TusClient(server.files_url).uploader,
        str(src),
        url=first.url,
        **options,
    )
    assert second.offset == acknowledged, (
        f"after kill+restart, HEAD {first.url} -> Upload-Offset {second.offset}, "
        f"expected the {acknowledged} bytes acknowledged before the kill"
    )
    assert call_with_deadline(server, 30, second.get_offset) == acknowledged
    call_with_deadline(server, 120, second.upload)

    assert second.offset == size
    assert download_sha256(first.url, server) == (sha, size)
