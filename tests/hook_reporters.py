"""Post-finish hooks that report progress, one per transport, for real servers in tests.

Each runs the same steps through its own way of reporting (CONTRACT.md, Socket.IO, "During
processing"; README, "Reporting progress from a hook"):

1. report (25, "indexing"), then wait until the test creates `control/release-1`;
2. report a burst of BURST values with the message "burst", then (90, "finishing"), note
   when the burst began and ended in `control/burst.json`, wait for `control/release-2`;
3. answer `{}`.

With `control/garbage` present, step 1 first reports GARBAGE (bad percents, a huge message,
a message that is no string), which the server must clamp or drop.

The HTTP end is a ThreadingHTTPServer on 127.0.0.1 that POSTs to the call's `progressUrl`;
the command end a python3 script printing JSON lines to standard error; the Python ends a
module on PYTHONPATH whose `hook(payload, report)` runs in a thread and whose
`ahook(payload, report)` is a coroutine. Every wait is bounded.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BURST = 50

STEPS = r"""
import asyncio, json, os, time

BURST = @BURST@
GARBAGE = [("lots", None), (1e9, "x" * 5000), (-3, 12), (float("nan"), "nan"), (True, None),
           (None, "\x00two\nlines")]


def steps(report, control):
    # Yields the name of each file to wait for; the runners below wait (bounded).
    if os.path.exists(os.path.join(control, "garbage")):
        for percent, message in GARBAGE:
            report(percent, message)
    report(25, "indexing")
    yield "release-1"
    began = time.monotonic()
    for number in range(BURST):
        report(number, "burst")
    report(90, "finishing")
    ended = time.monotonic()
    with open(os.path.join(control, "burst.json"), "w") as out:
        json.dump({"began": began, "ended": ended}, out)
    yield "release-2"


def run_steps(report, control):
    for name in steps(report, control):
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(control, name)) and time.monotonic() < deadline:
            time.sleep(0.02)


async def run_steps_async(report, control):
    for name in steps(report, control):
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(control, name)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
""".replace("@BURST@", str(BURST))

COMMAND_SCRIPT = (
    "import sys\n"
    + STEPS
    + r"""
def report(percent, message):
    print(json.dumps({"progress": percent, "message": message}), file=sys.stderr, flush=True)

json.load(sys.stdin)
print("an ordinary line on standard error", file=sys.stderr, flush=True)
run_steps(report, sys.argv[1])
print("{}")
"""
)

PYTHON_MODULE = (
    "CONTROL = @CONTROL@\n"
    + STEPS
    + r"""
def hook(payload, report):  # a plain function: runs in a thread, reports from there
    run_steps(report, CONTROL)
    return {}


async def ahook(payload, report):  # a coroutine: reports from the event loop
    await run_steps_async(report, CONTROL)
    return {}
"""
)


class ReporterEnd:
    """One transport's post-finish hook; `target()` is its config entry."""

    transport = ""
    env: dict[str, str] = {}  # noqa: RUF012 -- the server's extra environment

    def __init__(self, tmp_path: Path) -> None:
        self.control = tmp_path / "control"
        self.control.mkdir(exist_ok=True)

    def target(self) -> dict[str, str]:
        raise NotImplementedError

    def release(self, step: int) -> None:
        (self.control / f"release-{step}").touch()

    def burst_span(self) -> tuple[float, float]:
        times = json.loads((self.control / "burst.json").read_text())
        return float(times["began"]), float(times["ended"])

    def close(self) -> None:
        self.release(1)
        self.release(2)


class CommandEnd(ReporterEnd):
    transport = "command"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.script = tmp_path / "reporter.py"
        self.script.write_text(COMMAND_SCRIPT)

    def target(self) -> dict[str, str]:
        return {"command": shlex.join([sys.executable, str(self.script), str(self.control)])}


class PythonEnd(ReporterEnd):
    transport = "python"
    function = "hook"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        module = tmp_path / "reportmods" / "reporting_hooks.py"
        module.parent.mkdir(exist_ok=True)
        module.write_text(PYTHON_MODULE.replace("@CONTROL@", repr(str(self.control))))
        self.env = {"PYTHONPATH": str(module.parent)}

    def target(self) -> dict[str, str]:
        return {"python": f"reporting_hooks:{self.function}"}


class AsyncPythonEnd(PythonEnd):
    function = "ahook"


class HttpEnd(ReporterEnd):
    """Answers each POST after running the steps, reporting to the payload's progressUrl."""

    transport = "http"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.progress_urls: list[str] = []
        self.report_statuses: list[int] = []
        namespace: dict[str, Any] = {}
        exec(STEPS, namespace)  # the very steps the other ends run
        self._run_steps = namespace["run_steps"]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        end = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                url = json.loads(body)["progressUrl"]
                end.progress_urls.append(url)
                end._run_steps(
                    lambda percent, message: end.post(url, percent, message), str(end.control)
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def post(self, url: str, percent: Any, message: Any) -> None:
        import requests  # a new session per report: the hook's thread is its own

        with requests.Session() as session:
            session.trust_env = False  # loopback only
            body = json.dumps({"percent": percent, "message": message})  # NaN included
            answer = session.post(
                url, data=body, timeout=10, headers={"Content-Type": "application/json"}
            )
        self.report_statuses.append(answer.status_code)

    def target(self) -> dict[str, str]:
        return {"http": self.url}

    def close(self) -> None:
        super().close()
        self.server.shutdown()
        self.server.server_close()


ENDS: dict[str, type[ReporterEnd]] = {
    "http": HttpEnd,
    "command": CommandEnd,
    "python": PythonEnd,
    "python-async": AsyncPythonEnd,
}
