"""The memory settings `formforge serve` applies."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import weakref
from typing import Any

import pytest

from formforge.runtime import memory

PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from formforge.runtime.memory import tune_allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert tune_allocator()
    before = libc.mallinfo2().hblks
    chunk = bytearray(1024 * 1024)  # what Tornado allocates per chunk read
    print(libc.mallinfo2().hblks - before)
    """
)


def maps_made_for_a_chunk(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_chunk_sized_buffer_comes_from_the_heap_once_tuned() -> None:
    assert maps_made_for_a_chunk("default") == 1  # glibc's default: a map of its own
    assert maps_made_for_a_chunk("tuned") == 0


def test_the_collector_leaves_start_up_objects_alone_and_runs_less_often() -> None:
    probe = (
        "import gc; from formforge.runtime.memory import tune_collector; tune_collector(); "
        "print(gc.get_freeze_count() > 1000, gc.get_threshold()[0])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "10000"]


def test_a_local_disk_server_does_not_load_the_s3_client() -> None:
    # aiobotocore and botocore add ~8 MiB to the resident size of a process that never
    # talks to S3.
    probe = (
        "import sys; from formforge import cli, server; "
        "print(sorted(m for m in ('aiobotocore', 'botocore') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


SOCKETIO_PROBE = """
import sys
from formforge.runtime.imports import import_socketio_for_a_server
import_socketio_for_a_server(redis={redis})
from formforge import app, server
import aiohttp  # what the S3 store's aiobotocore needs still imports
print(sorted(m for m in ("requests", "websocket", "redis") if m in sys.modules))
"""


@pytest.mark.parametrize(("redis", "loaded"), [(False, "[]"), (True, "['redis']")])
def test_a_server_leaves_out_the_socketio_client_libraries(redis: bool, loaded: str) -> None:
    # With the extras installed they were ~20 MiB of an idle server's 68 (docs/benchmarks.md).
    probe = SOCKETIO_PROBE.format(redis=redis)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == loaded


RELEASE_PROBE = textwrap.dedent(
    """
    from pathlib import Path
    from formforge.runtime.memory import release_free_memory, tune_allocator

    def rss_mib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    tune_allocator()
    burst, survivors = [], []
    for _ in range(200):  # 200 uploads' chunks at once, and small things that outlive them
        burst.append(bytearray(1024 * 1024))
        survivors.append(bytearray(4096))
    del burst  # freed, but pinned in the heap between the survivors
    before = rss_mib()
    assert release_free_memory()
    print(before, rss_mib())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_heap_is_handed_back_on_request() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True
    )
    before, after = map(int, done.stdout.split())
    assert before - after >= 100, (before, after)


@pytest.mark.gen_test
async def test_memory_is_released_once_per_burst_after_a_quiet_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    releases: list[int] = []
    work: dict[str, Any] = {"started": 0, "busy": False}

    def release() -> bool:
        releases.append(1)
        return True

    monkeypatch.setattr(memory, "release_free_memory", release)
    task = asyncio.create_task(
        memory.release_memory_when_idle(lambda: work["started"], lambda: work["busy"], 0.05)
    )
    try:
        await asyncio.sleep(0.2)
        assert releases == []  # nothing happened: nothing to give back
        work.update(started=1, busy=True)
        await asyncio.sleep(0.2)
        assert releases == []  # still writing
        work["busy"] = False
        await asyncio.sleep(0.2)
        assert releases == [1]
        await asyncio.sleep(0.2)
        assert releases == [1]  # once per burst
    finally:
        task.cancel()


class Cyclic:
    def __init__(self) -> None:
        self.me = self  # a connection's objects refer to each other like this
        self.payload = bytearray(1024)


def test_releasing_memory_collects_the_cycles_a_burst_left() -> None:
    """Closed connections' objects wait for a full collection; an idle server would keep
    them for good, and malloc_trim could not give their pages back."""
    gc.disable()  # no automatic collection may do it for us meanwhile
    try:
        left = Cyclic()
        alive = weakref.ref(left)
        del left
        assert alive() is not None  # unreachable, still there
        memory.release_free_memory()
        assert alive() is None
    finally:
        gc.enable()
