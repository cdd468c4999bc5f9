#!/usr/bin/env python3
"""Uploads through a lossy network: tuspy and tus-js-client against a real `formforge serve`.

    sudo .venv/bin/python tools/lossy_upload.py [--size-mib 50] [--loss 0.10] [--delay-ms 150]
        [--reset-every 3] [--max-resets 8] [--clients tuspy,tus-js-client] [--chunk-mib 8]
        [--cc default|bbr|reno] [--deadline 3600] [--seed 1] [--json]

The network is made here and torn down on exit, also on failure or Ctrl-C:

    server namespace ff-srv-XXXX          client namespace ff-cli-XXXX
      fftun 10.213.N.1  <-- the wire -->    fftun 10.213.N.2
      formforge serve --host 10.213.N.1     tuspy / node tus-upload.mjs

Both namespaces are new and private to this run; the server binds only its own namespace's
address, and nothing outside them can reach it. The wire between them is this script (a
child process holding a TUN device in each namespace): packets from the client are dropped
with probability `--loss` and the rest delivered `--delay-ms` late, like
`tc qdisc add dev <client-side> root netem loss 10% delay 150ms` (egress of the client side);
the server's packets pass untouched. It is done in user space because kernels built without
`sch_netem` (this project's CI kernel among them) answer that tc line with "Specified qdisc
kind is unknown"; the wire also counts what TCP resent. Every `--reset-every` seconds the
established connections are killed with `ss -K`, alternately in the client's and the
server's namespace (at most `--max-resets` times per upload).

Each client uploads the same random file with its own retries; the script then downloads it
inside the server's namespace and compares sha256. Measured per client: wall time, requests
by status, bytes the server stored (`formforge_bytes_received_total`, which must equal the
size: nothing stored twice), and from the wire the bytes the client put on it: "app" bytes
(new TCP sequence space, headers included, so size + HTTP overhead + what was re-sent after
resets) and TCP retransmissions.

The congestion control of the client's namespace (`--cc`: one of the host's
net.ipv4.tcp_allowed_congestion_control) decides the speed more than anything: BBR (this
kernel's default) ignores random loss, and 50 MiB takes under a minute; a loss-based one
(Reno, CUBIC) manages some 30 KiB/s at 10 % loss, so 50 MiB takes about half an hour.

Needs root (network namespaces, TUN), iproute2 (`ip`, `ss`), `/dev/net/tun`, and for
tus-js-client `node` with `npm ci --prefix tests/js`. Exit 0 when every upload matched.

Internal sub-commands (run by the script itself): `_wire`, `_tuspy`, `_fetch`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import random
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JS_CLIENT = ROOT / "tests" / "js" / "tus-upload.mjs"
JS_MODULES = ROOT / "tests" / "js" / "node_modules" / "tus-js-client"
PORT = 1080
TUN = "fftun"
CLIENTS = ("tuspy", "tus-js-client")
MiB = 1024 * 1024
START_TIMEOUT = 20.0
JS_RETRY_DELAYS = "0,300,1000,2000,3000,5000,5000,5000,5000,5000"

# ----------------------------------------------------------------------------- the wire

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child before exec: if the harness dies (even by SIGKILL), so does the child, so
    no server or wire outlives a run (their namespaces are named per run)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _open_tun(namespace: str) -> int:
    """A TUN device named TUN inside `namespace`; it vanishes when this process exits."""
    _setns(f"/run/netns/{namespace}")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class SequenceCounter:
    """TCP payload per direction: all of it, and the part that is new sequence space (what the
    application wrote), so that `total - new` is what TCP retransmitted; and the connections
    opened."""

    def __init__(self) -> None:
        self.highest: dict[tuple[bytes, int, bytes, int], tuple[int, int]] = {}
        self.total = 0
        self.new = 0
        self.connections = 0

    def see(self, packet: bytes) -> None:
        if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != 6:
            return
        ihl = (packet[0] & 0x0F) * 4
        total_length = struct.unpack_from("!H", packet, 2)[0]
        sport, dport, seq = struct.unpack_from("!HHI", packet, ihl)
        offset = (packet[ihl + 12] >> 4) * 4
        flags = packet[ihl + 13]
        payload = total_length - ihl - offset
        key = (packet[12:16], sport, packet[16:20], dport)
        if flags & 0x12 == 0x02:  # SYN: the initial sequence number (a resent SYN: the same)
            if self.highest.get(key, (None,))[0] != seq:
                self.connections += 1
            self.highest[key] = (seq, 1)
        if payload <= 0 or key not in self.highest:
            return
        isn, highest = self.highest[key]
        start = (seq - isn) % (1 << 32)
        end = start + payload
        self.total += payload
        if end > highest:
            self.new += end - max(start, highest)
            self.highest[key] = (isn, end)


def wire_main(args: argparse.Namespace) -> int:
    """Shuttle packets between the two namespaces' TUN devices until SIGTERM.

    Client to server: dropped with probability `loss`, the rest delayed by `delay` seconds
    (one FIFO: a fixed delay keeps the order). Server to client: untouched. SIGUSR1 prints
    the counters as one JSON line; SIGTERM prints them and exits.
    """
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    server_fd = _open_tun(args.server_ns)
    client_fd = _open_tun(args.client_ns)
    _setns(f"/proc/self/fd/{home}")
    rng = random.Random(args.seed)
    queues: dict[int, collections.deque[tuple[float, bytes]]] = {
        server_fd: collections.deque(),
        client_fd: collections.deque(),
    }
    counts: collections.Counter[str] = collections.Counter()
    upstream = SequenceCounter()
    flags = {"stop": False, "report": False}
    signal.signal(signal.SIGTERM, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: flags.update(report=True))

    def report() -> None:
        line = {
            **counts,
            "c2s_tcp_payload": upstream.total,
            "c2s_tcp_new": upstream.new,
            "c2s_connections": upstream.connections,
        }
        print(json.dumps(line), flush=True)

    selector = selectors.DefaultSelector()
    selector.register(client_fd, selectors.EVENT_READ, ("c2s", server_fd))
    selector.register(server_fd, selectors.EVENT_READ, ("s2c", client_fd))
    print(json.dumps({"ready": True}), flush=True)
    while not flags["stop"]:
        now = time.monotonic()
        due = min((queue[0][0] for queue in queues.values() if queue), default=now + 0.2)
        for key, _ in selector.select(min(max(due - now, 0.0), 0.2)):
            direction, target = key.data
            for _ in range(256):  # bounded: the other side gets its turn
                try:
                    packet = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                counts[f"{direction}_packets"] += 1
                counts[f"{direction}_bytes"] += len(packet)
                if direction == "c2s":
                    upstream.see(packet)
                    if rng.random() < args.loss:
                        counts["c2s_dropped"] += 1
                        continue
                    queues[target].append((time.monotonic() + args.delay, packet))
                else:
                    queues[target].append((0.0, packet))
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                except OSError:
                    counts["write_errors"] += 1
        if flags["report"]:
            flags["report"] = False
            report()
    report()
    return 0


# ----------------------------------------------------------------------------- the lab


def _run(*command: str, check: bool = True, timeout: float = 20.0) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def netns_unavailable() -> str | None:
    """Why the lab cannot be built here, or None when it can."""
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "iproute2 (`ip`, `ss`) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    probe = f"ff-probe-{os.getpid()}-{random.randrange(1 << 24):06x}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Lab:
    """Two fresh namespaces joined by the wire; `close()` removes everything it made."""

    loss: float
    delay: float
    seed: int
    cc: str = "default"
    tag: str = field(
        default_factory=lambda: f"{os.getpid() % 10000:04d}{random.randrange(256):02x}"
    )
    subnet: int = field(default_factory=lambda: random.randrange(1, 255))
    namespaces: list[str] = field(default_factory=list)
    wire: subprocess.Popen[str] | None = None
    wire_lines: list[dict[str, Any]] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    congestion_control: str = ""

    @property
    def server_ns(self) -> str:
        return f"ff-srv-{self.tag}"

    @property
    def client_ns(self) -> str:
        return f"ff-cli-{self.tag}"

    @property
    def server_ip(self) -> str:
        return f"10.213.{self.subnet}.1"

    @property
    def client_ip(self) -> str:
        return f"10.213.{self.subnet}.2"

    def open(self) -> Lab:
        for name in (self.server_ns, self.client_ns):
            _run("ip", "netns", "add", name)
            self.namespaces.append(name)
        self.wire = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_wire",
                "--server-ns",
                self.server_ns,
                "--client-ns",
                self.client_ns,
                "--loss",
                str(self.loss),
                "--delay",
                str(self.delay),
                "--seed",
                str(self.seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._read_wire, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.wire_lines:
            if self.wire.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the wire did not start")
            time.sleep(0.05)
        for name, mine, peer in (
            (self.server_ns, self.server_ip, self.client_ip),
            (self.client_ns, self.client_ip, self.server_ip),
        ):
            _run("ip", "-n", name, "addr", "add", mine, "peer", peer, "dev", TUN)
            _run("ip", "-n", name, "link", "set", TUN, "txqueuelen", "1000", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")
        if self.cc != "default":
            # A namespace may only pick one of net.ipv4.tcp_allowed_congestion_control.
            try:
                _run(
                    "ip",
                    "netns",
                    "exec",
                    self.client_ns,
                    "sysctl",
                    "-q",
                    f"net.ipv4.tcp_congestion_control={self.cc}",
                )
            except RuntimeError:
                allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text()
                raise RuntimeError(
                    f"congestion control {self.cc!r} cannot be set in a network "
                    f"namespace; allowed: {allowed.strip()}"
                ) from None
        self.congestion_control = _run(
            "ip", "netns", "exec", self.client_ns, "sysctl", "-n", "net.ipv4.tcp_congestion_control"
        ).strip()
        return self

    def _read_wire(self) -> None:
        assert self.wire is not None
        assert self.wire.stdout is not None
        for line in self.wire.stdout:
            with contextlib.suppress(ValueError):
                self.wire_lines.append(json.loads(line))

    def wire_counts(self) -> dict[str, int]:
        """The wire's counters now (cumulative)."""
        assert self.wire is not None
        seen = len(self.wire_lines)
        self.wire.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while len(self.wire_lines) == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        return dict(self.wire_lines[-1]) if len(self.wire_lines) > seen else {}

    def spawn(self, namespace: str, command: list[str], **popen: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command], preexec_fn=_die_with_parent, **popen
        )
        self.processes.append(process)
        return process

    def exec(self, namespace: str, command: list[str], timeout: float) -> str:
        return _run("ip", "netns", "exec", namespace, *command, timeout=timeout)

    def kill_connections(self, side: str) -> int:
        """`ss -K` every established connection of the upload port on one side."""
        namespace, match = (
            (self.client_ns, f"dport = :{PORT}")
            if side == "client"
            else (self.server_ns, f"sport = :{PORT}")
        )
        out = _run(
            "ip",
            "netns",
            "exec",
            namespace,
            "ss",
            "-K",
            "-tn",
            "state",
            "established",
            f"( {match} )",
            check=False,
        )
        return max(len(out.strip().splitlines()) - 1, 0)

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        if self.wire is not None and self.wire.poll() is None:
            self.wire.terminate()
            try:
                self.wire.wait(10)
            except subprocess.TimeoutExpired:
                self.wire.kill()
                self.wire.wait(10)
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the server


@dataclass
class LabServer:
    lab: Lab
    process: subprocess.Popen[str]
    url: str
    log: list[str]

    @property
    def files_url(self) -> str:
        return self.url + "/files/"

    def fetch(self, upload_url: str, timeout: float = 120.0) -> dict[str, Any]:
        """Inside the server's namespace (not through the wire): the download's sha256, the
        upload's REST status once processed, and the metrics."""
        out = self.lab.exec(
            self.lab.server_ns,
            [sys.executable, __file__, "_fetch", self.url, upload_url],
            timeout=timeout,
        )
        return json.loads(out)  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        return self.fetch("", timeout=30)["metrics"]  # type: ignore[no-any-return]


def start_server(lab: Lab, workdir: Path) -> LabServer:
    """`formforge serve` inside the server namespace, bound to its address only."""
    config = workdir / "config.yaml"
    config.write_text("server:\n  idle_timeout_seconds: 30\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORMFORGE_")}
    process = lab.spawn(
        lab.server_ns,
        [
            sys.executable,
            "-m",
            "formforge",
            "serve",
            "--host",
            lab.server_ip,
            "--port",
            str(PORT),
            "--data-dir",
            str(workdir / "data"),
            "--config",
            str(config),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    log: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        if line.startswith("http://"):
            # Keep draining, so a chatty server never blocks on a full pipe.
            threading.Thread(target=log.extend, args=(process.stdout,), daemon=True).start()
            return LabServer(lab, process, line.strip().rstrip("/"), log)
    raise RuntimeError("the server did not start:\n" + "".join(log))


def fetch_main(args: argparse.Namespace) -> int:
    """Run inside the server namespace: metrics, and for an upload its status and sha256."""
    import requests

    session = requests.Session()
    session.trust_env = False
    result: dict[str, Any] = {}
    if args.upload_url:
        upload_id = args.upload_url.rstrip("/").rsplit("/", 1)[-1]
        deadline = time.monotonic() + 60
        while True:
            status = session.get(f"{args.base}/api/files/upload/{upload_id}", timeout=10).json()
            if status.get("state") != "processing" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        result["status"] = status
        digest = hashlib.sha256()
        size = 0
        with session.get(f"{args.base}/files/{upload_id}", stream=True, timeout=30) as response:
            result["download_status"] = response.status_code
            for chunk in response.iter_content(MiB):
                digest.update(chunk)
                size += len(chunk)
        result["sha256"], result["size"] = digest.hexdigest(), size
    result["healthz"] = session.get(f"{args.base}/healthz", timeout=10).status_code
    metrics: dict[str, float] = {}
    for line in session.get(f"{args.base}/metrics", timeout=10).text.splitlines():
        if line.startswith(("formforge_bytes_received_total", "formforge_http_requests_total")):
            name, value = line.rsplit(" ", 1)
            metrics[name] = float(value)
    result["metrics"] = metrics
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- the clients


def tuspy_main(args: argparse.Namespace) -> int:
    """tuspy as an application uses it: its own per-chunk retries, and when those give up (or
    the creation or a HEAD fails, which tuspy does not retry) a new Uploader on the same URL."""
    from tusclient import client as tus_client

    started = time.monotonic()
    url: str | None = None
    errors: list[str] = []
    for _attempt in range(args.attempts):
        uploader = None
        try:
            uploader = tus_client.TusClient(args.endpoint).uploader(
                file_path=args.file,
                url=url,
                chunk_size=args.chunk_size,
                retries=args.retries,
                retry_delay=args.retry_delay,
                metadata={"filename": Path(args.file).name},
            )
            uploader.upload()
            print(
                json.dumps(
                    {
                        "url": uploader.url,
                        "restarts": len(errors),
                        "errors": errors,
                        "seconds": round(time.monotonic() - started, 2),
                    }
                )
            )
            return 0
        except Exception as error:  # any tuspy/requests failure: resume like an app would
            url = getattr(uploader, "url", None) or url
            errors.append(f"{type(error).__name__}: {str(error)[:200]}")
            time.sleep(args.retry_delay)
    print("\n".join(errors), file=sys.stderr)
    return 1


@dataclass
class UploadResult:
    client: str
    ok: bool
    seconds: float
    size: int
    url: str = ""
    resets: int = 0
    sockets_killed: int = 0
    stored_bytes: float = 0
    app_bytes: int = 0
    tcp_payload: int = 0
    dropped_packets: int = 0
    client_packets: int = 0
    connections: int = 0
    requests: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    sha256_match: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @property
    def resent_bytes(self) -> int:
        """Application bytes on the wire beyond the file: re-sent body bytes + HTTP headers."""
        return self.app_bytes - self.size

    @property
    def tcp_retransmitted(self) -> int:
        return self.tcp_payload - self.app_bytes

    def summary(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "size": self.size,
            "resets": self.resets,
            "sockets_killed": self.sockets_killed,
            "stored_bytes": int(self.stored_bytes),
            "app_bytes_sent": self.app_bytes,
            "resent_bytes": self.resent_bytes,
            "tcp_retransmitted_bytes": self.tcp_retransmitted,
            "client_packets": self.client_packets,
            "dropped_packets": self.dropped_packets,
            "connections": self.connections,
            "requests": self.requests,
            "tuspy_restarts": self.restarts,
            "sha256_match": self.sha256_match,
        }


def _client_command(client: str, endpoint: str, source: Path, chunk_size: int) -> list[str]:
    if client == "tuspy":
        return [
            sys.executable,
            __file__,
            "_tuspy",
            "--endpoint",
            endpoint,
            "--file",
            str(source),
            "--chunk-size",
            str(chunk_size),
        ]
    return [
        "node",
        str(JS_CLIENT),
        "--endpoint",
        endpoint,
        "--file",
        str(source),
        "--chunk-size",
        str(chunk_size),
        "--retry-delays",
        JS_RETRY_DELAYS,
    ]


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value - before.get(key, 0)
        for key, value in after.items()
        if value - before.get(key, 0)
    }


def upload_through(
    server: LabServer,
    client: str,
    source: Path,
    source_sha256: str,
    chunk_size: int,
    reset_every: float,
    max_resets: int,
    timeout: float,
) -> UploadResult:
    """One client uploads `source` while connections are reset; measured and verified."""
    lab = server.lab
    metrics_before, wire_before = server.metrics(), lab.wire_counts()
    size = source.stat().st_size
    started = time.monotonic()
    process = lab.spawn(
        lab.client_ns,
        _client_command(client, server.files_url, source, chunk_size),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    resets = killed = 0
    next_reset = started + reset_every / 2
    while process.poll() is None:
        now = time.monotonic()
        if now - started > timeout:
            process.kill()
            break
        if resets < max_resets and now >= next_reset:
            count = lab.kill_connections("client" if resets % 2 == 0 else "server")
            if count:
                resets += 1
                killed += count
            next_reset = now + reset_every
        time.sleep(0.05)
    out, err = process.communicate(timeout=10)
    seconds = time.monotonic() - started
    result = UploadResult(
        client,
        process.returncode == 0,
        seconds,
        size,
        resets=resets,
        sockets_killed=killed,
        output=(out + err)[-3000:],
    )
    if not result.ok:
        return result
    answer = json.loads(out.strip().splitlines()[-1])
    result.url, result.restarts = answer["url"], answer.get("restarts", 0)
    fetched = server.fetch(result.url)
    wire = _delta(lab.wire_counts(), wire_before)
    metrics = _delta(fetched["metrics"], metrics_before)
    result.status = fetched["status"]
    result.sha256_match = (
        fetched["download_status"] == 200
        and fetched["size"] == size
        and fetched["sha256"] == source_sha256
    )
    result.stored_bytes = metrics.pop("formforge_bytes_received_total", 0)
    # The client's requests by answer (GETs are this script's own: metrics, status, download).
    result.requests = {
        re.sub(
            r'formforge_http_requests_total\{method="(\w+)",status="(\d+)"\}', r"\1 \2", key
        ): value
        for key, value in metrics.items()
        if 'method="GET"' not in key
    }
    result.app_bytes, result.tcp_payload = (
        wire.get("c2s_tcp_new", 0),
        wire.get("c2s_tcp_payload", 0),
    )
    result.client_packets = wire.get("c2s_packets", 0)
    result.dropped_packets = wire.get("c2s_dropped", 0)
    result.connections = wire.get("c2s_connections", 0)
    return result


def make_source(directory: Path, size: int, seed: int) -> tuple[Path, str]:
    source = directory / "source.bin"
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(source, "wb") as out:
        remaining = size
        while remaining:
            block = rng.randbytes(min(remaining, MiB))
            out.write(block)
            digest.update(block)
            remaining -= len(block)
    return source, digest.hexdigest()


@contextlib.contextmanager
def lossy_lab(
    workdir: Path, loss: float, delay: float, seed: int, cc: str = "default"
) -> Iterator[LabServer]:
    """The namespaces, the wire and a server in them; all gone afterwards."""
    with Lab(loss, delay, seed, cc) as lab:
        yield start_server(lab, workdir)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    wire = sub.add_parser("_wire")
    wire.add_argument("--server-ns", required=True)
    wire.add_argument("--client-ns", required=True)
    wire.add_argument("--loss", type=float, required=True)
    wire.add_argument("--delay", type=float, required=True)
    wire.add_argument("--seed", type=int, default=1)
    tuspy = sub.add_parser("_tuspy")
    tuspy.add_argument("--endpoint", required=True)
    tuspy.add_argument("--file", required=True)
    tuspy.add_argument("--chunk-size", type=int, required=True)
    tuspy.add_argument("--retries", type=int, default=10)
    tuspy.add_argument("--retry-delay", type=float, default=0.5)
    tuspy.add_argument("--attempts", type=int, default=20)
    fetch = sub.add_parser("_fetch")
    fetch.add_argument("base")
    fetch.add_argument("upload_url")
    parser.add_argument("--size-mib", type=float, default=50)
    parser.add_argument("--loss", type=float, default=0.10)
    parser.add_argument("--delay-ms", type=float, default=150)
    parser.add_argument("--reset-every", type=float, default=3.0)
    parser.add_argument("--max-resets", type=int, default=8)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--chunk-mib", type=float, default=8)
    parser.add_argument("--cc", default="default", help="client TCP congestion control")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds per client")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.command == "_wire":
        return wire_main(args)
    if args.command == "_tuspy":
        return tuspy_main(args)
    if args.command == "_fetch":
        return fetch_main(args)

    # Stopped by a signal: still remove the namespaces (the children die with this process).
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, lambda number, _frame: sys.exit(128 + number))
    reason = netns_unavailable()
    if reason:
        print(f"lossy_upload: {reason}", file=sys.stderr)
        return 2
    clients = [c for c in args.clients.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="ff-lossy-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        source, sha = make_source(workdir, int(args.size_mib * MiB), args.seed)
        results = []
        with lossy_lab(workdir, args.loss, args.delay_ms / 1000, args.seed, args.cc) as server:
            for client in clients:
                result = upload_through(
                    server,
                    client,
                    source,
                    sha,
                    int(args.chunk_mib * MiB),
                    args.reset_every,
                    args.max_resets,
                    args.deadline,
                )
                results.append(result)
                if not args.json:
                    print(json.dumps(result.summary()), flush=True)
                    if not result.ok:
                        print(result.output, file=sys.stderr)
            log = "".join(server.log)
            congestion_control = server.lab.congestion_control
        report = {
            "size": source.stat().st_size,
            "loss": args.loss,
            "delay_ms": args.delay_ms,
            "congestion_control": congestion_control,
            "server_tracebacks": log.count("Traceback"),
            "results": [r.summary() for r in results],
        }
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(
                f"congestion control {congestion_control}; server tracebacks "
                f"{report['server_tracebacks']}"
            )
    ok = all(r.ok and r.sha256_match for r in results) and not report["server_tracebacks"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
