"""What live progress costs: one big tus PATCH with 0 and with N Socket.IO clients watching.

Starts its own `formforge serve` on 127.0.0.1 (a free port, a temporary data dir), then
alternates runs without and with watchers so both see the same machine noise, and prints
the median throughput of each and their ratio (goal: >= 0.9), and the median server CPU
time per upload of each and their ratio (goal: <= 1.1).

    python bench/progress_events.py [--size-mib 1024] [--watchers 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import socketio

HOST = "127.0.0.1"


def start_server(data_dir: Path, fsync: bool) -> tuple[subprocess.Popen[str], str]:
    config = data_dir.parent / "bench.yaml"
    config.write_text(f"storage:\n  fsync: {str(fsync).lower()}\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "formforge",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, url


def http(port: int, request: bytes, body_file: Path | None = None) -> bytes:
    """One raw HTTP/1.1 exchange; the body goes with sendfile, as a fast client would."""
    with socket.create_connection((HOST, port), timeout=120) as sock:
        sock.sendall(request)
        if body_file is not None:
            with open(body_file, "rb") as body:
                sock.sendfile(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        return answer


def create_upload(port: int, size: int) -> str:
    answer = http(
        port,
        (
            f"POST /files/ HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Length: {size}\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
    )
    for line in answer.decode().split("\r\n"):
        if line.lower().startswith("location:"):
            return line.split("/")[-1].strip()
    raise RuntimeError(answer.decode(errors="replace"))


def patch_all(port: int, upload_id: str, source: Path) -> float:
    size = source.stat().st_size
    request = (
        f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    answer = http(port, request, source)
    elapsed = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.1 204"):
        raise RuntimeError(answer[:200].decode(errors="replace"))
    return size / elapsed / 2**20


def cpu_seconds(pid: int) -> float:
    """The server's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def watched_run(
    url: str, port: int, source: Path, watchers: int, pid: int
) -> tuple[float, int, float]:
    os.sync()  # the last run's dirty pages must not be written back during this one
    await asyncio.sleep(1.0)
    upload_id = create_upload(port, source.stat().st_size)
    clients = [socketio.AsyncClient() for _ in range(watchers)]
    received = 0

    def count(_: object) -> None:
        nonlocal received
        received += 1

    for client in clients:
        client.on("uploadProgress", count)
        await client.connect(url, transports=["websocket"])
        ack = await client.call("joinUploadRoom", upload_id, timeout=10)
        assert ack["ok"], ack
    cpu_before = cpu_seconds(pid)
    mibps = await asyncio.to_thread(patch_all, port, upload_id, source)
    await asyncio.sleep(0.5)  # the last events arrive, and their CPU is counted
    cpu = cpu_seconds(pid) - cpu_before
    for client in clients:
        await client.disconnect()
    http(
        port,
        (
            f"DELETE /files/{upload_id} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
    )
    return mibps, received, cpu


def make_source(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for _ in range(size >> 20):
            out.write(block)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fsync", action="store_true", help="storage.fsync: true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.bin"
        make_source(source, args.size_mib << 20)
        proc, url = start_server(Path(tmp) / "data", args.fsync)
        port = int(url.rsplit(":", 1)[1])
        try:
            results: dict[int, list[float]] = {0: [], args.watchers: []}
            cpu: dict[int, list[float]] = {0: [], args.watchers: []}
            for _ in range(args.repeat):
                for watchers in results:
                    mibps, events, seconds = await watched_run(
                        url, port, source, watchers, proc.pid
                    )
                    results[watchers].append(mibps)
                    cpu[watchers].append(seconds)
                    print(
                        f"watchers={watchers:3d} MiB/s={mibps:7.1f} events={events} "
                        f"server CPU s={seconds:.2f}",
                        file=sys.stderr,
                    )
        finally:
            proc.terminate()
            proc.wait(10)
    base = statistics.median(results[0])
    watched = statistics.median(results[args.watchers])
    print(f"size={args.size_mib}MiB fsync={args.fsync} repeat={args.repeat}")
    print(f"median MiB/s without watchers: {base:.1f}")
    print(f"median MiB/s with {args.watchers} watchers: {watched:.1f}")
    print(f"ratio: {watched / base:.3f}")
    # Throughput swings +-30 % between runs at these speeds; the CPU an upload costs the
    # server is the steadier measure of what the watchers add.
    base_cpu = statistics.median(cpu[0])
    watched_cpu = statistics.median(cpu[args.watchers])
    print(f"median server CPU s: {base_cpu:.2f} without, {watched_cpu:.2f} with watchers")
    print(f"CPU ratio: {watched_cpu / base_cpu:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
