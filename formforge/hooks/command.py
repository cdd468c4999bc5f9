"""Command hooks: the JSON object on standard input, the reply on standard output.

The command line is split as a shell would split it, but no shell runs it. A non-zero exit
is a failure; a command still running at the time-out is killed.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from typing import Any

from formforge.core.hooks import HookFailed

MAX_OUTPUT_BYTES = 1024 * 1024


async def call_command(command: str, payload: dict[str, Any], timeout: float) -> Any:
    argv = shlex.split(command)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise HookFailed(f"{argv[0]}: {error.strerror}") from None
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(json.dumps(payload).encode()), timeout
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise HookFailed(f"{argv[0]} timed out after {timeout} s") from None
    if process.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise HookFailed(f"{argv[0]} exited {process.returncode}: {detail[0][:200]}")
    if len(stdout) > MAX_OUTPUT_BYTES:
        raise HookFailed(f"{argv[0]} wrote more than {MAX_OUTPUT_BYTES} bytes")
    if not stdout.strip():
        return {}
    try:
        return json.loads(stdout)
    except ValueError:
        raise HookFailed(f"{argv[0]} did not print JSON") from None
