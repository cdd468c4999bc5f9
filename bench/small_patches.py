"""Small PATCHes on one connection (a phone sending 64 KiB chunks): server CPU per PATCH.

One upload receives `--patches` PATCHes of `--size` bytes in order on one kept-alive
connection, after `--warm` that are not measured. FormForge (this tree) and a baseline are
each started fresh for every round, fsync off, data on tmpfs when there is one (so the
disk's allocator does not decide), and the rounds alternate them so the machine's noise
falls on both. The upload never completes, so the whole-file sha256 is not in the figure.
Prints each round, then the medians and FormForge's CPU per PATCH over the baseline's.

    python bench/small_patches.py [--patches 3000] [--size 65536] [--rounds 5]
        [--baseline-rev HEAD~1 | --baseline-cmd "CMD {port} {dir}" | --no-baseline]

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
import statistics
import tempfile
import time
from pathlib import Path

from soak import HOST, cpu_seconds, exchange, formforge_command, start, worktree

TMPFS = "/dev/shm"


async def patches(port: int, args: argparse.Namespace, pid: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        total = (args.warm + args.patches) * args.size
        created = await exchange(
            reader,
            writer,
            f"POST /files/ HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Length: {total}\r\nContent-Length: 0\r\n\r\n".encode(),
            201,
        )
        path = "/files/" + created["location"].rsplit("/files/", 1)[1]
        body = os.urandom(args.size)

        def patch(number: int) -> bytes:
            return (
                f"PATCH {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
                f"Upload-Offset: {number * args.size}\r\n"
                "Content-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {args.size}\r\n\r\n"
            ).encode() + body

        for number in range(args.warm):
            await exchange(reader, writer, patch(number), 204)
        cpu, began = cpu_seconds(pid), time.perf_counter()
        for number in range(args.warm, args.warm + args.patches):
            await exchange(reader, writer, patch(number), 204)
        seconds, cpu = time.perf_counter() - began, cpu_seconds(pid) - cpu
    finally:
        writer.close()
    return {
        "cpu_us_per_patch": round(cpu / args.patches * 1e6, 1),
        "req_per_s": round(args.patches / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=3000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--rounds", type=int, default=5)
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline-rev", help="FormForge at this git revision")
    baseline.add_argument("--baseline-cmd", help="any tus server; {port} and {dir} filled in")
    baseline.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    root = TMPFS if os.path.isdir(TMPFS) else None
    with (
        tempfile.TemporaryDirectory(prefix="small-", dir=root) as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        command = formforge_command(work, "auto")
        servers: list[tuple[str, list[str], dict[str, str] | None]] = [("formforge", command, None)]
        if args.baseline_rev:
            tree = stack.enter_context(worktree(args.baseline_rev))
            env = dict(os.environ, PYTHONPATH=str(tree))
            servers.append((f"ff@{args.baseline_rev}", command, env))
        elif args.baseline_cmd:
            servers.append(("baseline", shlex.split(args.baseline_cmd), None))
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in servers}
        for round_number in range(args.rounds):
            order = servers if round_number % 2 == 0 else servers[::-1]
            for name, server_command, server_env in order:
                server = start(f"{name}-{round_number}", server_command, work, server_env)
                try:
                    row = asyncio.run(patches(server.port, args, server.proc.pid))
                finally:
                    server.proc.terminate()
                    server.proc.wait(10)
                results[name].append(row)
                print(json.dumps({"server": name, "round": round_number, **row}), flush=True)
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    print(f"\n{args.patches} PATCHes of {args.size} bytes, medians of {args.rounds}:")
    medians = {
        name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        for name, rows in results.items()
    }
    names = list(medians)
    for name in names:
        cells = " ".join(f"{key}={value:g}" for key, value in medians[name].items())
        print(f"  {name:16s} {cells}")
    if len(names) > 1:
        ratio = medians[names[0]]["cpu_us_per_patch"] / medians[names[1]]["cpu_us_per_patch"]
        print(f"  CPU per PATCH, {names[0]} / {names[1]}: {ratio:.2f}")


if __name__ == "__main__":
    main()
