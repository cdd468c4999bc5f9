"""`formforge serve`: settings in, one URL line out, signals stop it, bad config is one line.

The first part runs `main()` in-process with a fake server; the second runs real
`python -m formforge serve` processes (they need formforge/server.py).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import requests

from formforge import cli
from formforge.config import Settings

URL_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)$")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No FORMFORGE_* variable or ./config.yaml of the developer's leaks in."""
    for name in list(os.environ):
        if name.startswith("FORMFORGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class FakeServer:
    """Stands in for formforge.server.Server; signals this process once it has started."""

    instances: ClassVar[list[FakeServer]] = []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopped = False
        self.signals: list[signal.Signals] = [signal.SIGTERM]
        self.start_error: OSError | None = None
        self.stop_gate: asyncio.Event | None = None
        FakeServer.instances.append(self)
        FakeServer.configure(self)  # via the class: tests swap in plain functions

    @staticmethod
    def configure(server: FakeServer) -> None:
        """Tests replace this to shape the next instance."""

    async def start(self) -> str:
        if self.start_error:
            raise self.start_error
        loop = asyncio.get_running_loop()
        for delay, signum in enumerate(self.signals):
            loop.call_later(0.05 * (delay + 1), os.kill, os.getpid(), signum)
        return f"http://{self.settings.server.host}:{self.settings.server.port or 45678}"

    async def stop(self) -> None:
        if self.stop_gate:
            await self.stop_gate.wait()
        self.stopped = True


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> type[FakeServer]:
    FakeServer.instances = []
    monkeypatch.setattr(cli, "_load_server_class", lambda: FakeServer)
    return FakeServer


# --- in-process, with a fake server ------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_the_url_then_stops_on_signal(fake_server, capsys, monkeypatch, signum):
    monkeypatch.setattr(fake_server, "configure", lambda s: setattr(s, "signals", [signum]))
    assert cli.main(["serve", "--port", "0", "--host", "127.0.0.1"]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:45678\n"
    (server,) = fake_server.instances
    assert server.stopped


def test_serve_passes_flags_environment_and_file_to_the_server(fake_server, monkeypatch):
    Path("config.yaml").write_text("server: {host: 0.0.0.0, port: 1}\nstorage: {fsync: false}\n")
    monkeypatch.setenv("FORMFORGE_PORT", "2")
    assert cli.main(["serve", "--data-dir", "elsewhere"]) == 0
    settings = fake_server.instances[0].settings
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 2)
    assert (settings.storage.path, settings.storage.fsync) == (Path("elsewhere"), False)
    assert settings.config_file == Path("config.yaml")


def test_port_in_use_is_one_line_and_exit_1(fake_server, capsys, monkeypatch):
    def taken(server: FakeServer) -> None:
        server.start_error = OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(fake_server, "configure", taken)
    assert cli.main(["serve", "--port", "3999"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: cannot listen on 127.0.0.1:3999: Address already in use\n"
    assert not fake_server.instances[0].stopped


def test_second_signal_while_stopping_exits_at_once(fake_server, monkeypatch):
    forced: list[bool] = []

    def slow_stop(server: FakeServer) -> None:
        server.signals = [signal.SIGTERM, signal.SIGINT]
        server.stop_gate = asyncio.Event()

    def force_exit() -> None:  # the real one is os._exit(0), which would end pytest
        forced.append(True)
        fake_server.instances[0].stop_gate.set()

    monkeypatch.setattr(fake_server, "configure", slow_stop)
    monkeypatch.setattr(cli, "_force_exit", force_exit)
    assert cli.main(["serve"]) == 0
    assert forced == [True]


def test_stop_that_hangs_is_given_up_on(fake_server, monkeypatch):
    monkeypatch.setattr(
        fake_server, "configure", lambda s: setattr(s, "stop_gate", asyncio.Event())
    )
    monkeypatch.setattr(cli, "STOP_TIMEOUT_SECONDS", 0.1)
    assert cli.main(["serve"]) == 0
    assert not fake_server.instances[0].stopped


# the config file's text (None: no file), then what follows "config error in bad.yaml: "
BAD_CONFIGS = [
    ("server: {bogus: 1}", "server.bogus: unknown key"),
    ("storage: {fsync: maybe}", "storage.fsync: Input should be a valid boolean"),
    ("server: [", "invalid YAML at line 1, column 10: "
                  "expected the node content, but found '<stream end>'"),
    ("- 1", "the top level must be a mapping of sections"),
    ("storage: {backend: s3}", "storage: backend s3 needs a storage.s3 section"),
    (None, "cannot read file: No such file or directory"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line"), BAD_CONFIGS)
def test_bad_config_is_one_line_and_exit_2(fake_server, capsys, text, line):
    if text is not None:
        Path("bad.yaml").write_text(text)
    assert cli.main(["serve", "--config", "bad.yaml"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"config error in bad.yaml: {line}\n")
    assert fake_server.instances == []


def test_bad_environment_is_one_line_and_exit_2(fake_server, capsys, monkeypatch):
    monkeypatch.setenv("FORMFORGE_PORT", "abc")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "config error in environment variable FORMFORGE_PORT: not an integer: 'abc'\n"
    )


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["--help"], 0),
        (["serve", "--help"], 0),
        ([], 2),
        (["serve", "--port", "abc"], 2),
        (["serve", "--verbose"], 2),
        (["upload"], 2),  # not there yet
    ],
)
def test_usage(fake_server, capsys, argv, status):
    assert cli.main(argv) == status
    assert "Traceback" not in capsys.readouterr().err
    assert fake_server.instances == []


# --- real processes (need formforge/server.py) --------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FORMFORGE_")}


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "formforge", "serve", *args],
        cwd=tmp_path, env={**_env(), **(env or {})}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
def test_process_prints_only_the_url_on_stdout_and_sigterm_exits_0(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert proc.stdout is not None
    first = proc.stdout.readline().rstrip("\n")
    match = URL_LINE.match(first)
    assert match, first + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    assert int(match.group(1)) != 0
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out == ""
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_stops_on_signal_within_a_few_seconds(start_server, signum) -> None:
    server = start_server()
    assert URL_LINE.match(server.url)
    assert server.port != 0
    started = time.monotonic()
    server.proc.send_signal(signum)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "Traceback" not in "".join(server.output) + server.proc.stdout.read()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env", "cwd"])
def test_process_with_bad_config_exits_2_with_one_line(tmp_path: Path, how: str) -> None:
    name = "config.yaml" if how == "cwd" else "bad.yaml"
    (tmp_path / name).write_text("server:\n  port: lots\n")
    args = ["--config", name] if how == "flag" else []
    proc = _serve(tmp_path, *args, env={"FORMFORGE_CONFIG": name} if how == "env" else {})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == ""
    assert err == f"config error in {name}: server.port: Input should be a valid integer\n"


@pytest.mark.slow
def test_process_with_port_in_use_exits_1_with_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve(tmp_path, "--port", str(port), "--data-dir", str(tmp_path / "data"))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == ""
    assert "Traceback" not in err
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n" in err


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_process_serves_uploads_on_the_chosen_event_loop(start_server, tmp_path, choice) -> None:
    (tmp_path / "loop.yaml").write_text(f"server: {{event_loop: {choice}}}\n")
    server = start_server(args=["--config", str(tmp_path / "loop.yaml")])
    assert f"loop={choice}" in "".join(server.output)
    tus = {"Tus-Resumable": "1.0.0"}
    created = requests.post(server.files_url, headers={**tus, "Upload-Length": "5"}, timeout=10)
    assert created.status_code == 201
    patched = requests.patch(
        created.headers["Location"],
        data=b"hello",
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        timeout=10,
    )
    assert (patched.status_code, patched.headers["Upload-Offset"]) == (204, "5")
