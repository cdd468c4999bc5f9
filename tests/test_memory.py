"""The memory settings `formforge serve` applies."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from formforge.memory import tune_allocator

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
        "import gc; from formforge.memory import tune_collector; tune_collector(); "
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
