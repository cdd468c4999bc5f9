"""What an HTTP pre-create hook costs per upload creation.

Starts two `formforge serve` processes on 127.0.0.1 (free ports, temporary data dirs): one
without hooks, one with an HTTP pre-create hook whose receiver (a ThreadingHTTPServer in
this process) answers `{}`. Then runs N tus creations (`POST /files/`, one keep-alive
session per server) against each, alternating in rounds so both see the same machine
noise, and prints the median per-creation latency of each and the difference.

    python bench/hook_overhead.py [--creations 300] [--rounds 10] [--fsync]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

HOST = "127.0.0.1"


class Accept(BaseHTTPRequestHandler):
    """The hook receiver: reads the JSON object, answers `{}`."""

    calls = 0

    def do_POST(self) -> None:
        json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        Accept.calls += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def start_receiver() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer((HOST, 0), Accept)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://{HOST}:{server.server_address[1]}/check"


def start_server(
    work: Path, name: str, config: dict[str, Any]
) -> tuple[subprocess.Popen[str], str]:
    path = work / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "formforge", "serve", "--host", HOST, "--port", "0",
         "--data-dir", str(work / name), "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the {name} server did not start")
    return proc, url


def create_once(session: requests.Session, files_url: str) -> float:
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "1024",
               "Upload-Metadata": "filename YS5wZGY="}  # fmt: skip
    started = time.perf_counter()
    response = session.post(files_url, headers=headers, timeout=30)
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise SystemExit(f"creation failed: {response.status_code} {response.text}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creations", type=int, default=300, help="per server (N)")
    parser.add_argument("--rounds", type=int, default=10, help="alternations")
    parser.add_argument("--warmup", type=int, default=20, help="creations before timing")
    parser.add_argument("--fsync", action="store_true", help="storage.fsync: true")
    args = parser.parse_args()

    receiver, hook_url = start_receiver()
    storage = {"storage": {"fsync": args.fsync}}
    with tempfile.TemporaryDirectory(prefix="formforge-bench-") as scratch:
        work = Path(scratch)
        plain = start_server(work, "plain", storage)
        hooks = {"hooks": {"pre_create": [{"http": hook_url}]}}
        hooked = start_server(work, "hooked", {**storage, **hooks})
        try:
            servers = {"no hooks": plain[1], "http pre-create": hooked[1]}
            sessions = {name: requests.Session() for name in servers}
            for session in sessions.values():
                session.trust_env = False  # loopback only, whatever HTTP(S)_PROXY says
            times: dict[str, list[float]] = {name: [] for name in servers}
            for name, url in servers.items():
                for _ in range(args.warmup):
                    create_once(sessions[name], url + "/files/")
            Accept.calls = 0
            per_round = -(-args.creations // args.rounds)
            for round_number in range(args.rounds):
                order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
                for name in order:
                    todo = min(per_round, args.creations - len(times[name]))
                    for _ in range(todo):
                        times[name].append(create_once(sessions[name], servers[name] + "/files/"))
        finally:
            for proc, _ in (plain, hooked):
                proc.terminate()
                proc.wait(10)
            receiver.shutdown()

    assert Accept.calls == args.creations, (Accept.calls, args.creations)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    for name, values in times.items():
        ms = sorted(v * 1000 for v in values)
        p90 = ms[int(0.9 * (len(ms) - 1))]
        print(f"{name:16s} n={len(ms)}  median {medians[name]:.2f} ms  p90 {p90:.2f} ms")
    overhead = medians["http pre-create"] - medians["no hooks"]
    print(f"overhead of an HTTP pre-create hook: {overhead:.2f} ms per creation (median)")


if __name__ == "__main__":
    main()
