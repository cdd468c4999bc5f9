"""`formforge upload`: real `python -m formforge upload` processes against a real server.

The interrupted uploads go through `StallingProxy`, a loopback TCP proxy that lets a set
number of bytes through and then holds the client mid-PATCH: the server is killed at a
known point whatever the machine's speed. Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tinydb import TinyDB

from formforge.client.upload import FileFingerprint

pytestmark = pytest.mark.slow

KiB = 1024
MiB = 1024 * KiB
CLI_TIMEOUT = 60.0  # seconds, for one whole `formforge upload` run
HTTP_TIMEOUT = 30.0
HTTP = requests.Session()
HTTP.trust_env = False  # our own requests never go through a proxy


# --------------------------------------------------------------------------- helpers


class StallingProxy:
    """TCP proxy on 127.0.0.1 to `upstream_port`. Once `stall_after` request bytes have gone
    through (all connections together), the rest is held: the client hangs mid-body and
    `stalled` is set. `cut()` resets every open connection and lets later ones through."""

    def __init__(self, upstream_port: int, stall_after: int | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._upstream = ("127.0.0.1", upstream_port)
        self._budget = stall_after
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.stalled = threading.Event()
        self._released = threading.Event()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def files_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def cut(self) -> None:
        with self._lock:
            self._budget = None
            sockets, self._sockets = self._sockets, []
        self._released.set()
        _close(*sockets)

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:  # the server is down: the client sees its connection closed
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, metered: bool) -> None:
        try:
            while data := src.recv(64 * KiB):
                allowed = self._allow(data) if metered else data
                dst.sendall(allowed)
                if len(allowed) < len(data):
                    self.stalled.set()
                    self._released.wait(CLI_TIMEOUT)
                    return
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _allow(self, data: bytes) -> bytes:
        with self._lock:
            if self._budget is None:
                return data
            allowed = data[: self._budget]
            self._budget -= len(allowed)
            return allowed


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):  # not connected (any more)
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.fixture
def proxies() -> Iterator[Callable[..., StallingProxy]]:
    made: list[StallingProxy] = []

    def make(upstream_port: int, stall_after: int | None = None) -> StallingProxy:
        made.append(StallingProxy(upstream_port, stall_after))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORMFORGE_")}
    env["FORMFORGE_UPLOAD_STATE"] = str(tmp_path / "state" / "uploads.json")
    for name in ("NO_PROXY", "no_proxy"):  # requests honours HTTP(S)_PROXY
        env[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1"]))
    return env


def upload_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "formforge", "upload", *args]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        upload_cmd(*args), env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )


def start_cli(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """A background run whose stdout/stderr go to files (no pipe to fill up)."""
    out = (tmp_path / "cli.stdout").open("w")
    err = (tmp_path / "cli.stderr").open("w")
    with out, err:
        return subprocess.Popen(upload_cmd(*args), env=env, stdout=out, stderr=err, text=True)


def finish_cli(proc: subprocess.Popen[str], tmp_path: Path) -> tuple[int, str, str]:
    try:
        code = proc.wait(CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        code = -1
    return code, (tmp_path / "cli.stdout").read_text(), (tmp_path / "cli.stderr").read_text()


def make_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for start in range(0, size, MiB):
            block = os.urandom(min(MiB, size - start))
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def download_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with HTTP.get(url, stream=True, timeout=HTTP_TIMEOUT) as resp:
        assert resp.status_code == 200, f"GET {url} -> {resp.status_code}"
        for block in resp.iter_content(MiB):
            digest.update(block)
    return digest.hexdigest()


def upload_ids(server: Any) -> list[str]:
    return sorted(path.stem for path in Path(server.data_dir).glob("*.bin"))


def head_offset(url: str) -> int:
    resp = HTTP.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, f"HEAD {url} -> {resp.status_code}"
    return int(resp.headers["Upload-Offset"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored_urls(env: dict[str, str]) -> list[str]:
    with TinyDB(env["FORMFORGE_UPLOAD_STATE"]) as db:
        return [row["url"] for row in db.all() if row.get("url")]


def interrupt_upload(
    server: Any, proxy: StallingProxy, proc: subprocess.Popen[str], tmp_path: Path
) -> str:
    """Waits until the proxy holds the CLI mid-PATCH, then SIGKILLs the server and resets
    the CLI's connections. Returns the id of the one upload started."""
    if not proxy.stalled.wait(CLI_TIMEOUT):
        proc.kill()
        pytest.fail("the CLI never sent its first MiBs:\n" + finish_cli(proc, tmp_path)[2])
    server.kill()
    proxy.cut()
    ids = upload_ids(server)
    assert len(ids) == 1, ids
    return ids[0]


# --------------------------------------------------------------------------- resuming


def test_second_run_resumes_upload_interrupted_by_server_kill(
    start_server: Callable[..., Any],
    proxies: Callable[..., StallingProxy],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """30 MiB; the server is killed with some MiB stored; the first run gives up (exit 1).
    After a restart a second run resumes at the stored offset: no new upload, exit 0."""
    server = start_server()
    proxy = proxies(server.port, stall_after=6 * MiB)
    src = tmp_path / "random-30MiB.bin"
    sha = make_random_file(src, 30 * MiB)
    args = (str(src), "--url", proxy.files_url, "--chunk-size", str(MiB))

    first = start_cli(cli_env, tmp_path, *args, "--retries", "2")
    upload_id = interrupt_upload(server, proxy, first, tmp_path)
    code, out, err = finish_cli(first, tmp_path)
    assert code == 1, err
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {src}: ")
    assert "run the command again to resume" in err

    server.restart()
    stored = head_offset(server.files_url + upload_id)
    assert 4 * MiB <= stored < 30 * MiB

    second = run_cli(cli_env, *args)
    url = proxy.files_url + upload_id
    assert second.returncode == 0, second.stderr + server.log_tail()
    assert f"resuming {url} at offset {stored}\n" in second.stderr
    assert second.stdout == url + "\n"
    assert upload_ids(server) == [upload_id], "the second run created a new upload"
    assert download_sha256(server.files_url + upload_id) == sha
    assert stored_urls(cli_env) == [], "a finished upload's URL stays stored"


def test_one_run_rides_out_a_server_restart(
    start_server: Callable[..., Any],
    proxies: Callable[..., StallingProxy],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """With the default retries, a run whose server is killed and restarted mid-upload
    HEADs for the offset and finishes the same upload."""
    server = start_server()
    proxy = proxies(server.port, stall_after=3 * MiB)
    src = tmp_path / "random-12MiB.bin"
    sha = make_random_file(src, 12 * MiB)

    proc = start_cli(
        cli_env, tmp_path, str(src), "--url", proxy.files_url, "--chunk-size", "1048576"
    )
    upload_id = interrupt_upload(server, proxy, proc, tmp_path)
    server.restart()
    code, out, err = finish_cli(proc, tmp_path)

    assert code == 0, err + server.log_tail()
    assert re.search(r"trying again in [\d.]+ s \(1/7\)", err), err
    assert out == proxy.files_url + upload_id + "\n"
    assert upload_ids(server) == [upload_id]
    assert download_sha256(server.files_url + upload_id) == sha


def test_stored_upload_that_is_gone_starts_a_new_one(
    start_server: Callable[..., Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server()
    src = tmp_path / "notes.txt"
    src.write_text("hello\n")
    key = FileFingerprint(server.files_url).of_path(src)
    Path(cli_env["FORMFORGE_UPLOAD_STATE"]).parent.mkdir(parents=True)
    with TinyDB(cli_env["FORMFORGE_UPLOAD_STATE"]) as db:
        db.insert({"key": key, "url": server.files_url + "AAAAAAAAAAAAAAAAAAAAAA"})

    result = run_cli(cli_env, str(src), "--url", server.files_url)

    assert result.returncode == 0, result.stderr
    assert "starting a new upload" in result.stderr
    assert "404" in result.stderr
    (upload_id,) = upload_ids(server)
    assert result.stdout == server.files_url + upload_id + "\n"


# --------------------------------------------------------------------------- plain runs


@pytest.mark.parametrize("checksum", [None, "sha256"])
def test_two_files_in_one_run(
    start_server: Callable[..., Any],
    cli_env: dict[str, str],
    tmp_path: Path,
    checksum: str | None,
) -> None:
    server = start_server()
    files = {tmp_path / "a.bin": 3 * MiB + 17, tmp_path / "b.txt": 0}
    shas = {path: make_random_file(path, size) for path, size in files.items()}
    extra = ["--checksum", checksum] if checksum else []

    result = run_cli(
        cli_env, *map(str, files), "--url", server.files_url, "--chunk-size", str(MiB), *extra
    )

    assert result.returncode == 0, result.stderr + server.log_tail()
    urls = result.stdout.splitlines()
    assert len(urls) == 2, result.stdout
    assert len(set(urls)) == 2, result.stdout
    for url, path in zip(urls, files, strict=True):
        assert url.startswith(server.files_url)
        assert download_sha256(url) == shas[path]
    assert stored_urls(cli_env) == []


def test_token_from_the_environment(
    start_server: Callable[..., Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    """With auth.bearer_tokens set, FORMFORGE_TOKEN is sent; without it, one error line."""
    config = tmp_path / "auth.yaml"
    config.write_text('auth:\n  bearer_tokens: ["cli-token"]\n')
    server = start_server(args=["--config", str(config)])
    src = tmp_path / "a.txt"
    src.write_text("a")

    refused = run_cli(cli_env, str(src), "--url", server.files_url)
    assert "FORMFORGE_TOKEN" in _assert_one_error_line(refused, 1)

    accepted = run_cli(
        {**cli_env, "FORMFORGE_TOKEN": "cli-token"}, str(src), "--url", server.files_url
    )
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith(server.files_url)


def test_ctrl_c_is_one_line_and_keeps_the_upload_resumable(
    start_server: Callable[..., Any],
    proxies: Callable[..., StallingProxy],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    server = start_server()
    proxy = proxies(server.port, stall_after=2 * MiB)
    src = tmp_path / "random-4MiB.bin"
    make_random_file(src, 4 * MiB)

    proc = start_cli(
        cli_env, tmp_path, str(src), "--url", proxy.files_url, "--chunk-size", str(MiB)
    )
    assert proxy.stalled.wait(CLI_TIMEOUT), finish_cli(proc, tmp_path)[2]
    proc.send_signal(signal.SIGINT)
    code, out, err = finish_cli(proc, tmp_path)

    assert code == 130, err
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "interrupted: run the same command again to resume"
    (upload_id,) = upload_ids(server)
    assert stored_urls(cli_env) == [proxy.files_url + upload_id]


# --------------------------------------------------------------------------- errors


def _assert_one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_nothing_listening_is_one_error_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("a")
    url = f"http://127.0.0.1:{free_port()}/files/"
    line = _assert_one_error_line(run_cli(cli_env, str(src), "--url", url), 1)
    assert line == f"error: cannot reach {url}: connection refused"


@pytest.mark.parametrize("path", ["/healthz", "/"])
def test_non_tus_url_is_one_error_line(
    start_server: Callable[..., Any], cli_env: dict[str, str], tmp_path: Path, path: str
) -> None:
    server = start_server()
    src = tmp_path / "a.txt"
    src.write_text("a")
    line = _assert_one_error_line(run_cli(cli_env, str(src), "--url", server.url + path), 1)
    assert "is not a tus server" in line
    assert upload_ids(server) == []


@pytest.mark.parametrize(
    ("file_name", "url", "message"),
    [
        ("missing.bin", "http://127.0.0.1:9/files/", "missing.bin: no such file"),
        ("a.txt", "ftp://127.0.0.1/files/", "is not an http:// or https:// URL"),
        ("a.txt", "http://127.0.0.1:99999/files/", "is not a URL"),
    ],
)
def test_usage_errors_exit_2(
    cli_env: dict[str, str], tmp_path: Path, file_name: str, url: str, message: str
) -> None:
    (tmp_path / "a.txt").write_text("a")
    result = run_cli(cli_env, str(tmp_path / file_name), "--url", url)
    assert message in _assert_one_error_line(result, 2)
