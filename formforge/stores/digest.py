"""The whole-file sha256 of a local file, in a worker thread, telling the event loop how far
it got (processing turns that into `stage: processing` progress)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable

from formforge.core.errors import ErrorKind, UploadError

BUFFER_BYTES = 1024 * 1024
# Hashing 128 KiB takes ~80 us here (sha256 at ~1,700 MiB/s), less than a thread hop.
INLINE_MAX = 128 * 1024


async def sha256_of_file(
    path: str, size: int, progress: Callable[[int], None] | None = None
) -> str:
    """The hex sha256 of the file's first `size` bytes; `progress` (on the event loop)
    hears how many bytes are hashed after each buffer."""
    if size <= INLINE_MAX:  # a small file: on the loop
        return _sha256_of(path, size, progress)
    from_thread = _on_loop(progress) if progress else None
    return await asyncio.to_thread(_sha256_of, path, size, from_thread)


def _sha256_of(path: str, size: int, progress: Callable[[int], None] | None) -> str:
    """One thread reads and hashes the file through one buffer (hashlib lets go of the GIL)."""
    hasher = hashlib.sha256()
    view = memoryview(bytearray(min(size, BUFFER_BYTES)))  # a small file, a small buffer
    hashed = 0
    with open(path, "rb", buffering=0) as source:
        while hashed < size:
            count = source.readinto(view[: min(size - hashed, BUFFER_BYTES)])
            if not count:
                raise UploadError(ErrorKind.INTERNAL, "the upload is shorter than recorded")
            hasher.update(view[:count])
            hashed += count
            if progress is not None:
                progress(hashed)
    return hasher.hexdigest()


def _on_loop(progress: Callable[[int], None]) -> Callable[[int], None]:
    """`progress`, called from a worker thread, runs on the event loop running now."""
    loop = asyncio.get_running_loop()

    def report(hashed: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while a cancelled hash ran on
            loop.call_soon_threadsafe(progress, hashed)

    return report
