"""Command hooks: the JSON object on standard input, the reply on standard output.

The command line is split as a shell would split it, but no shell runs it. A non-zero exit
is a failure; a command still running at the time-out is killed.

Standard error is read line by line while the command runs. A line that is a JSON object
with `progress` (0-100) and/or `message` is a progress report of a post-finish call, for
example `{"progress": 40, "message": "indexing"}`; every other line is the command's own,
and the last of those explains a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
from typing import Any

from formforge.core.hooks import HookFailed, HookProgress

MAX_OUTPUT_BYTES = 1024 * 1024
REPORT_KEYS = ("progress", "message")


async def call_command(
    command: str, payload: dict[str, Any], timeout: float, report: HookProgress | None = None
) -> Any:
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
        stdout, last_line = await asyncio.wait_for(
            _exchange(process, json.dumps(payload).encode(), report), timeout
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise HookFailed(f"{argv[0]} timed out after {timeout} s") from None
    if process.returncode != 0:
        raise HookFailed(f"{argv[0]} exited {process.returncode}: {last_line[:200]}")
    return _answer(argv[0], stdout)


async def _exchange(
    process: asyncio.subprocess.Process, data: bytes, report: HookProgress | None
) -> tuple[bytes, str]:
    """Write standard input while reading both outputs (a command may write before it
    reads); returns standard output and the last line of standard error."""
    assert process.stdin
    assert process.stdout
    assert process.stderr
    errors = asyncio.create_task(_read_errors(process.stderr, report))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it need not read it
        process.stdin.write(data)
        await process.stdin.drain()
    process.stdin.close()
    try:
        stdout = await process.stdout.read()
        last_line = await errors
    finally:
        errors.cancel()
    await process.wait()
    return stdout, last_line


async def _read_errors(stream: asyncio.StreamReader, report: HookProgress | None) -> str:
    """Report the progress lines; return the last other line."""
    last = ""
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line past the reader's limit: skipped, not a report
            continue
        if not line:
            return last
        text = line.decode(errors="replace").strip()
        fields = _report_fields(text)
        if fields is None:
            last = text or last
        elif report is not None:
            report.report(fields.get("progress"), fields.get("message"))


def _report_fields(text: str) -> dict[str, Any] | None:
    """The fields of a progress line, or None for any other line."""
    if not text.startswith("{"):
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if isinstance(fields, dict) and any(key in fields for key in REPORT_KEYS):
        return fields
    return None


def _answer(program: str, stdout: bytes) -> Any:
    if len(stdout) > MAX_OUTPUT_BYTES:
        raise HookFailed(f"{program} wrote more than {MAX_OUTPUT_BYTES} bytes")
    if not stdout.strip():
        return {}
    try:
        return json.loads(stdout)
    except ValueError:
        raise HookFailed(f"{program} did not print JSON") from None
