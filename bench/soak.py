"""Whole upload lives, many of them: server CPU per upload and RSS per 10,000 uploads.

Each upload is tus creation + one PATCH + DELETE, on `--connections` kept-alive connections
at once. FormForge (this tree) and a baseline run side by side, both started fresh with
fsync off, in alternating blocks of `--block` uploads so that the machine's noise falls on
both alike. After each block: the server's RSS and its CPU per upload in that block (from
/proc, children included), and the RSS again after `--settle` quiet seconds (FormForge
hands its free heap back after one idle second): what a block left behind. Bounded:
`--uploads` per server, then both are stopped.

    python bench/soak.py [--uploads 30000] [--block 10000] [--connections 10] [--size 65536]
        [--event-loop auto] [--baseline-rev HEAD~1 | --baseline-cmd "CMD {port} {dir}"
        | --no-baseline]

`--baseline-rev` runs FormForge at that git revision (a temporary worktree, this venv);
`--baseline-cmd` any tus server at `/files/` (`{port}` and `{dir}` are filled in).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    rows: list[dict[str, float]] = field(default_factory=list)
    done: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system time of the process and of its children waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no RSS for {pid}")


def wait_for_port(proc: subprocess.Popen[bytes], port: int) -> None:
    for _ in range(300):  # 30 s
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit("the server did not listen within 30 s")


def start(name: str, command: list[str], work: Path, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    data = work / name
    data.mkdir()
    filled = [part.format(port=port, dir=data) for part in command]
    proc = subprocess.Popen(
        filled, cwd=data, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(proc, port)
    return Server(name, proc, port)


def formforge_command(work: Path, event_loop: str) -> list[str]:
    config = work / "nofsync.yaml"
    config.write_text(f"storage:\n  fsync: false\nserver:\n  event_loop: {event_loop}\n")
    return [
        *(sys.executable, "-m", "formforge", "serve", "--port", "{port}"),
        *("--data-dir", "{dir}/files", "--config", str(config)),
    ]


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """`rev` checked out in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="soak-rev-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "add", "--detach", str(tree), rev], check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run([*git, "remove", "--force", str(tree)], check=False)


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, expect: int
) -> dict[str, str]:
    writer.write(request)
    await writer.drain()
    status, headers = await answer(reader)
    if status != expect:
        raise RuntimeError(f"{request.split(b' ', 2)[:2]} answered {status}, not {expect}")
    return headers


async def one_life(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes
) -> None:
    common = f"Host: {HOST}:{port}\r\nTus-Resumable: 1.0.0\r\n"
    created = await exchange(
        reader,
        writer,
        f"POST /files/ HTTP/1.1\r\n{common}Upload-Length: {len(body)}\r\n"
        "Content-Length: 0\r\n\r\n".encode(),
        201,
    )
    path = "/" + created["location"].split("://", 1)[-1].split("/", 1)[1]
    patch = (
        f"PATCH {path} HTTP/1.1\r\n{common}Upload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await exchange(reader, writer, patch.encode() + body, 204)
    delete = f"DELETE {path} HTTP/1.1\r\n{common}Content-Length: 0\r\n\r\n"
    await exchange(reader, writer, delete.encode(), 204)


async def lives(port: int, count: int, connections: int, body: bytes) -> None:
    async def connection(share: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for _ in range(share):
                await one_life(reader, writer, port, body)
        finally:
            writer.close()

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    await asyncio.gather(*(connection(share) for share in shares if share))


def run_block(server: Server, args: argparse.Namespace, body: bytes) -> dict[str, float]:
    pid, count = server.proc.pid, min(args.block, args.uploads - server.done)
    cpu = cpu_seconds(pid)
    started = time.monotonic()
    asyncio.run(lives(server.port, count, args.connections, body))
    server.done += count
    row = {
        "uploads": server.done,
        "rss_mib": round(rss_mib(pid), 1),
        "cpu_ms_per_upload": round((cpu_seconds(pid) - cpu) * 1000 / count, 3),
        "seconds": round(time.monotonic() - started, 1),
    }
    time.sleep(args.settle)
    row["settled_rss_mib"] = round(rss_mib(pid), 1)
    server.rows.append(row)
    return row


def soak(servers: list[Server], args: argparse.Namespace) -> None:
    body = os.urandom(args.size)
    for server in servers:
        time.sleep(1.0)
        server.rows.append({"uploads": 0, "rss_mib": round(rss_mib(server.proc.pid), 1)})
    while servers[0].done < args.uploads:
        for server in servers:
            row = run_block(server, args, body)
            print(
                f"{server.name:10s} {row['uploads']:7.0f} uploads: RSS {row['rss_mib']:6.1f} MiB "
                f"({row['settled_rss_mib']:.1f} settled), "
                f"{row['cpu_ms_per_upload']:.3f} ms CPU per upload ({row['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


def summary(server: Server, block: int) -> dict[str, object]:
    rows = server.rows
    cpu = sorted(row["cpu_ms_per_upload"] for row in rows[1:])
    blocks = max(len(rows) - 2, 1)
    return {
        "server": server.name,
        "idle_rss_mib": rows[0]["rss_mib"],
        "rss_mib_per_block": [row["rss_mib"] for row in rows[1:]],
        "settled_rss_mib_per_block": [row["settled_rss_mib"] for row in rows[1:]],
        "rss_growth_mib_per_block_after_the_first": {
            key: round((rows[-1][key] - rows[1][key]) / blocks, 2)
            for key in ("rss_mib", "settled_rss_mib")
        },
        "cpu_ms_per_upload_per_block": [row["cpu_ms_per_upload"] for row in rows[1:]],
        "cpu_ms_per_upload_median": cpu[len(cpu) // 2] if cpu else None,
        "block": block,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=30_000, help="per server")
    parser.add_argument("--block", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per upload")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    parser.add_argument("--settle", type=float, default=2.0, help="quiet seconds after a block")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline-rev", help="FormForge at this git revision")
    baseline.add_argument("--baseline-cmd", help="any tus server; {port} and {dir} filled in")
    baseline.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        command = formforge_command(work, args.event_loop)
        servers = [start("formforge", command, work)]
        if args.baseline_rev:
            tree = stack.enter_context(worktree(args.baseline_rev))
            env = dict(os.environ, PYTHONPATH=str(tree))
            servers.append(start(f"ff@{args.baseline_rev}", command, work, env))
        elif args.baseline_cmd:
            servers.append(start("baseline", shlex.split(args.baseline_cmd), work))
        try:
            soak(servers, args)
        finally:
            for server in servers:
                server.proc.terminate()
                server.proc.wait(10)
    for server in servers:
        print(json.dumps(summary(server, args.block)))


if __name__ == "__main__":
    main()
