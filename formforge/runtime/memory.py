"""How the server process allocates and collects memory: tuned for 1 MiB buffers all day.

The allocator (glibc malloc):

By default glibc serves each allocation above 128 KiB with a fresh `mmap` (raising that
threshold only after such a block is freed) and hands the top of its heap back to the
system as soon as 128 KiB or more are free there. Tornado reads a streamed body into a new
1 MiB buffer per chunk, so each chunk was new memory, faulted in page by page and then
returned. Fixed thresholds keep those buffers in the heap and reuse their pages: a 1 GiB
PATCH went from ~1,100 to ~1,500 MiB/s and 1 GiB in 8 MiB PATCHes from ~900 to ~1,300
MiB/s, with the same peak RSS (docs/benchmarks.md).

The collector (Python's cyclic gc): a request allocates a few hundred tracked objects
(handler, futures, headers), so the default threshold (700) ran a collection every few
requests, each walking every object the server made at start-up too: 249 collections and
0.23 s in small + concurrent. Objects from start-up are frozen out of the walks, and the
youngest generation is collected every 10,000 allocations: 16 collections, 0.07 s.

After a burst: what a burst of uploads allocated stays in the heap once freed (200
concurrent uploads left ~290 MiB resident), so once no upload has been writing for a
second the free heap is handed back (`malloc_trim`). First the cycles are collected: a
connection's objects (handler, streams, futures, tasks) refer to each other, outlive the
young collections while it is open, and so wait for a full collection once it is closed,
which an idle server never reaches. After 5,000 slow uploads that was 295,000 objects and
~45 MiB kept for good; the collection took 0.47 s, once, in the first quiet second.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Callable

from formforge.runtime.libc import libc_function

log = logging.getLogger(__name__)

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # above a chunk, below anything worth its own map
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024  # free heap kept for the next burst of chunks
YOUNG_COLLECTION_EVERY = 10_000  # allocations of tracked objects; Python's default is 700
IDLE_BEFORE_TRIM_SECONDS = 1.0


def tune_allocator() -> bool:
    """Apply the thresholds (once, at start-up, before serving); False where the C library
    has no `mallopt` (not glibc), which changes nothing but speed."""
    mallopt = libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    log.debug("allocator tuned=%s", applied)
    return applied


def tune_collector() -> None:
    """Once the server is up: what exists now lives as long as the process."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


def release_free_memory() -> bool:
    """Collect garbage cycles, then hand the heap's free pages back to the system; False
    where that is not glibc (the cycles are collected all the same)."""
    unreachable = gc.collect()
    log.debug("collected before release unreachable=%d", unreachable)
    malloc_trim = libc_function("malloc_trim", (ctypes.c_size_t,))
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


async def release_memory_when_idle(
    work_done: Callable[[], int],
    busy: Callable[[], bool],
    idle_seconds: float = IDLE_BEFORE_TRIM_SECONDS,
) -> None:
    """Runs until cancelled: once work was done (`work_done()`, a count that only grows,
    moved) and nothing is `busy()` for `idle_seconds`, release the free heap; an idle
    server does nothing."""
    released_at = work_done()
    while True:
        await asyncio.sleep(idle_seconds)
        done = work_done()
        if done != released_at and not busy():
            released_at = done
            release_free_memory()
