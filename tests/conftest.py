"""Shared fixtures: real `formforge serve` processes on loopback, on their own data dirs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 15.0
JS_DIR = Path(__file__).resolve().parent / "js"
TIERS = ("unit", "contract", "protocol", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, the folder it is in: `pytest -m unit` and the like."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


@dataclass
class ServerProcess:
    """A `formforge serve` child process; `url` is what it printed on start."""

    data_dir: Path
    args: list[str]
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    port: int = 0
    output: list[str] = field(default_factory=list)

    def start(self) -> ServerProcess:
        port_args = ["--port", str(self.port)] if self.port else ["--port", "0"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "formforge",
                "serve",
                "--host",
                "127.0.0.1",
                *port_args,
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: kill() reaches --workers too
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("http://"):
                self.url = line.strip().rstrip("/")
                # Keep the port so a restart lands on the same address (clients keep URLs).
                self.port = int(self.url.rsplit(":", 1)[1])
                self._drain_output()
                return self
        self.kill()
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _drain_output(self) -> None:
        """Keep reading the log pipe so a chatty server can never block on a full pipe."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        stream = self.proc.stdout

        def pump() -> None:
            try:
                for line in stream:
                    self.output.append(line)
            except (OSError, ValueError):  # closed by the fixture's teardown
                pass

        threading.Thread(target=pump, name="server-output", daemon=True).start()

    def log_tail(self, lines: int = 40) -> str:
        return "--- server output (tail) ---\n" + "".join(self.output[-lines:])

    @property
    def files_url(self) -> str:
        return self.url + "/files/"

    def kill(self) -> None:
        """SIGKILL: the crash case, nothing gets a chance to clean up."""
        if self.proc is None:
            return
        # The whole group, even when the first process is gone: --workers leave children.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()


def clean_environ() -> dict[str, str]:
    """This process's environment without FORMFORGE_* settings, which would leak into servers."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FORMFORGE_")}


@contextlib.contextmanager
def running_server(base: Path, config_text: str) -> Iterator[ServerProcess]:
    """A server on `base/data` with `config_text` as its config, for module-scoped fixtures."""
    config = base / "conf" / "config.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(config_text)
    process = ServerProcess(
        data_dir=base / "data", args=["--config", str(config)], env=clean_environ(), cwd=base
    )
    try:
        yield process.start()
    finally:
        process.kill()
        if process.proc and process.proc.stdout:
            process.proc.stdout.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    """Factory: `start_server(args=[...], env={...})` starts a real server process."""
    started: list[ServerProcess] = []

    def start(
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> ServerProcess:
        full_env = clean_environ()
        full_env.update(env or {})
        server = ServerProcess(
            data_dir=data_dir or tmp_path / "data",
            args=list(args or []),
            env=full_env,
            cwd=tmp_path,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()
        if server.proc and server.proc.stdout:
            server.proc.stdout.close()


@pytest.fixture(scope="session")
def node() -> str:
    """Path of `node`, with tests/js/node_modules installed from the lock file when stale."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("`node` is not on PATH: the JavaScript client tests need Node.js 18+")
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    lock = JS_DIR / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: cannot run `npm ci --prefix tests/js`")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.fail(f"`npm ci` in tests/js failed:\n{proc.stdout}\n{proc.stderr}")
    return node
