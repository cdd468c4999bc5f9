"""C library calls Python's `os` lacks (glibc's malloc knobs, Linux's sync_file_range)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any


def libc_function(name: str, argtypes: tuple[Any, ...], restype: Any = ctypes.c_int) -> Any:
    """The C library's `name`, typed; None off Linux or where the library has no such
    function (musl has no mallopt): callers then do without, which only costs speed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function
