"""C library calls Python's `os` lacks (glibc's malloc knobs, Linux's sync_file_range)."""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any


@functools.cache
def libc_function(name: str, argtypes: tuple[Any, ...], restype: Any = ctypes.c_int) -> Any:
    """The C library's `name`, typed; None off Linux or where the library has no such
    function (musl has no mallopt): callers then do without, which only costs speed.

    Looked up once per name: the process's own symbols (`dlopen(NULL)`) hold the C library
    it runs on, so no `ctypes.util.find_library`, which ran `ldconfig -p` in a subprocess
    at each `malloc_trim` (two forks and execs a burst, seen in `strace -f`)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function
