"""Many slow uploads at once (phones on thin links): server CPU and memory per slow client.

Each server is started fresh (127.0.0.1, a free port, a temporary data dir); N tus uploads
are created, then every body is sent at the same time at a fixed rate in small writes,
each on its own connection (started within one second). Server CPU and RSS come from
/proc (the server's children counted). Servers alternate, repetition by repetition, so
all see the same machine noise; the medians and each one's CPU ratio to the first server
(the baseline) are printed at the end.

    # Descriptors: 2 per client (+1,024) are asked for; past the hard limit only as root.
    python bench/slow_clients.py --clients 1000 --size 1MiB --rate 32KiB --piece 4KiB \\
        --repeat 3 --server 'before=PYTHONPATH=/path/to/old/checkout python -m formforge \\
        serve --port {port} --data-dir {dir} --config {config}' --server formforge

`--server NAME=COMMAND` (repeatable; `{port}`, `{dir}` and `{config}`, an fsync-off config,
are filled in); `--server formforge` is this checkout, `--server formforge-no-mark` the same
with `server.receive_low_water: false` (every body read as its bytes arrive). The first is
the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
THIS_CHECKOUT = (
    f"{sys.executable} -m formforge serve --port {{port}} --data-dir {{dir}} --config {{config}}"
)
NO_MARK = "formforge-no-mark"
CONFIG = "storage: {fsync: false}\n"
CONFIG_NO_MARK = CONFIG + "server: {receive_low_water: false}\n"


def size(text: str) -> int:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def proc_stats(pid: int) -> tuple[float, float]:
    """RSS (MiB) and CPU seconds of `pid` and its children."""
    pids, rss, cpu = [pid], 0.0, 0.0
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += sum(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return rss / 1024, cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start(command: str, base: Path, config_text: str) -> tuple[subprocess.Popen[bytes], int]:
    port, config = free_port(), base / "nofsync.yaml"
    config.write_text(config_text)
    line = command.format(port=port, dir=base / "data", config=config)
    proc = subprocess.Popen(
        line,
        shell=True,
        start_new_session=True,
        cwd=base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):  # up to 20 s for the port to accept
        try:
            socket.create_connection((HOST, port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start: {line}")


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    """The server itself when the shell ran it as a child (env assignments, pipes)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    try:
        return int(children.read_text().split()[0])
    except (OSError, IndexError):
        return proc.pid


async def head_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = dict(ln.split(":", 1) for ln in lines[1:] if ":" in ln)
    return int(lines[0].split()[1]), {k.strip().lower(): v.strip() for k, v in fields.items()}


async def create(port: int, length: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"POST /files/ HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Length: {length}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    status, headers = await head_of(reader)
    writer.close()
    if status != 201:
        raise RuntimeError(f"POST answered {status}")
    location = headers["location"]
    return location[location.index("/files/") :]


async def slow_patch(
    port: int, path: str, length: int, rate: int, piece: int, start_at: float
) -> bool:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"PATCH {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
    )
    data, sent, began = os.urandom(piece), 0, time.monotonic()
    while sent < length:
        writer.write(data[: min(piece, length - sent)])
        await writer.drain()
        sent += min(piece, length - sent)
        await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))
    status, _ = await head_of(reader)
    writer.close()
    if status != 204:
        raise RuntimeError(f"PATCH answered {status}")
    return True


async def measure(pid: int, port: int, args: argparse.Namespace) -> dict[str, object]:
    length, rate, piece = size(args.size), size(args.rate), size(args.piece)
    await asyncio.sleep(1.0)
    idle_rss, cpu0 = proc_stats(pid)
    paths: list[str] = []
    for first in range(0, args.clients, 50):
        batch = min(50, args.clients - first)
        paths += await asyncio.gather(*(create(port, length) for _ in range(batch)))
    peak, done = [idle_rss], asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc_stats(pid)[0])
            await asyncio.sleep(0.25)

    sampler, began = asyncio.create_task(sample()), time.monotonic()
    results = await asyncio.gather(
        *(
            slow_patch(port, p, length, rate, piece, began + i / args.clients)
            for i, p in enumerate(paths)
        ),
        return_exceptions=True,
    )
    done.set()
    await sampler
    cpu = proc_stats(pid)[1] - cpu0
    failures = collections.Counter(
        f"{type(r).__name__}: {r}"[:120] for r in results if isinstance(r, BaseException)
    )
    return {
        "completed": sum(r is True for r in results),
        "failures": dict(failures.most_common(3)),
        "server_cpu_s": round(cpu, 2),
        "idle_rss_mib": round(idle_rss, 1),
        "peak_rss_mib": round(peak[0], 1),
        "rss_per_conn_kib": round((peak[0] - idle_rss) * 1024 / args.clients, 1),
        "wall_s": round(time.monotonic() - began, 1),
    }


def run_once(name: str, command: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    proc, port = start(command, work, CONFIG_NO_MARK if name == NO_MARK else CONFIG)
    try:
        result = asyncio.run(measure(server_pid(proc), port, args))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
    print(json.dumps({"server": name, **result}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--size", default="1MiB")
    parser.add_argument("--rate", default="32KiB")
    parser.add_argument("--piece", default="4KiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", action="append", default=[])
    args = parser.parse_args()
    servers = [s.partition("=")[::2] if "=" in s else (s, THIS_CHECKOUT) for s in args.server]
    servers = servers or [("formforge", THIS_CHECKOUT)]
    raise_open_file_limit(2 * args.clients + 1024)
    runs: dict[str, list[dict[str, object]]] = {name: [] for name, _ in servers}
    # Every run's files are deleted at the end, not after the run: ext4 skips inodes freed in
    # the last minute when it allocates new ones, and 10,000 of them (one run's uploads) put
    # 18 % of the next run's samples (perf) into that search, whichever server it was.
    with tempfile.TemporaryDirectory(prefix="ff-slow-") as tmp:
        for repetition in range(args.repeat):
            for name, command in servers:
                work = Path(tmp) / f"{name}-{repetition}"
                work.mkdir()
                runs[name].append(run_once(name, command, args, work))
    report(runs, args)


def raise_open_file_limit(wanted: int) -> None:
    """For this process and the servers it starts: each slow upload holds a socket and its
    data file open in the server (and a socket here). Past the hard limit only where that may
    be raised (root); elsewhere up to it, and say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"open files limited to {hard} (wanted {wanted}): some uploads may fail", flush=True)


def report(runs: dict[str, list[dict[str, object]]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.clients} clients x {args.size} at {args.rate}/s in {args.piece} writes, "
        f"medians of {args.repeat}:"
    )
    keys = ("completed", "server_cpu_s", "idle_rss_mib", "peak_rss_mib", "rss_per_conn_kib")
    baseline = None
    for name, results in runs.items():
        med = {k: statistics.median(float(r[k]) for r in results) for k in keys}  # type: ignore[arg-type]
        baseline = baseline or med["server_cpu_s"]
        cells = " ".join(f"{k}={med[k]:g}" for k in keys)
        print(f"  {name:12s} {cells} cpu_vs_baseline={med['server_cpu_s'] / baseline:.2f}")


if __name__ == "__main__":
    main()
