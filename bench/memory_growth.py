"""Does the server's memory stay flat as an upload grows? Peak RSS for 1 GiB and 4 GiB.

Starts its own `formforge serve` on 127.0.0.1 (a free port, a temporary data dir, fsync
off), then for each size sends one upload both ways tusbench does (`stream`: one PATCH;
`big`: 8 MiB PATCHes on one connection) from a 1 MiB block in memory, and reports the
server's peak RSS during each (VmHWM, reset before each run) next to its idle RSS. Flat
means the 4 GiB peak is the 1 GiB peak: the ratio printed last (goal: <= 1.05).

    python bench/memory_growth.py [--sizes-gib 1,4] [--event-loop auto]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
MiB = 1 << 20
BLOCK = os.urandom(MiB)
PATCH_SIZE = 8 * MiB


def start_server(work: Path, event_loop: str) -> tuple[subprocess.Popen[str], int]:
    config = work / "bench.yaml"
    config.write_text(f"storage:\n  fsync: false\nserver:\n  event_loop: {event_loop}\n")
    command = [sys.executable, "-m", "formforge", "serve", "--port", "0"]
    command += ["--data-dir", str(work / "data"), "--config", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, int(url.rsplit(":", 1)[1])


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = sock.recv(65536)
        if not piece:
            raise RuntimeError("connection closed before the answer")
        answer += piece
    return answer


def header(answer: bytes, name: str) -> str:
    for line in answer.decode().split("\r\n"):
        key, _, value = line.partition(":")
        if key.lower() == name.lower():
            return value.strip()
    raise RuntimeError(f"no {name} in {answer[:300]!r}")


def send_blocks(sock: socket.socket, count: int) -> None:
    for _ in range(count):
        sock.sendall(BLOCK)


def upload(port: int, size: int, patch_size: int) -> float:
    """One upload of `size` bytes in PATCHes of `patch_size` on one connection; MiB/s."""
    with socket.create_connection((HOST, port), timeout=120) as sock:
        sock.sendall(
            f"POST /files/ HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Length: {size}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        path = "/files/" + header(read_answer(sock), "Location").rsplit("/", 1)[1]
        started = time.perf_counter()
        for offset in range(0, size, patch_size):
            sock.sendall(
                f"PATCH {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
                f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {patch_size}\r\n\r\n".encode()
            )
            send_blocks(sock, patch_size // MiB)
            answer = read_answer(sock)
            if not answer.startswith(b"HTTP/1.1 204"):
                raise RuntimeError(answer[:300].decode(errors="replace"))
        elapsed = time.perf_counter() - started
        sock.sendall(
            f"DELETE {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        read_answer(sock)
    return size / elapsed / MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-gib", default="1,4")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args()
    sizes = [int(size) << 30 for size in args.sizes_gib.split(",")]
    peaks: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp), args.event_loop)
        try:
            time.sleep(1.0)
            idle = status_kib(proc.pid, "VmRSS") / 1024
            print(f"idle RSS: {idle:.1f} MiB", file=sys.stderr)
            for size in sizes:
                for shape, patch_size in (("stream", size), ("big", PATCH_SIZE)):
                    os.sync()  # the last run's dirty pages must not be written back now
                    reset_peak(proc.pid)
                    mibps = upload(port, size, patch_size)
                    peak = status_kib(proc.pid, "VmHWM") / 1024
                    peaks[shape, size] = peak
                    print(
                        f"{shape:6s} {size >> 30} GiB: {mibps:7.1f} MiB/s, peak RSS {peak:.1f} MiB",
                        file=sys.stderr,
                    )
        finally:
            proc.terminate()
            proc.wait(10)
    small, large = sizes[0], sizes[-1]
    print(f"idle RSS MiB: {idle:.1f}")
    for shape in ("stream", "big"):
        first, last = peaks[shape, small], peaks[shape, large]
        print(
            f"{shape}: peak RSS MiB {small >> 30} GiB {first:.1f}, {large >> 30} GiB {last:.1f}, "
            f"ratio {last / first:.3f}"
        )


if __name__ == "__main__":
    main()
