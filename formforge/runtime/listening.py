"""The listening sockets, with a listen queue long enough for a burst of reconnects.

When a cell or a server comes back, thousands of phones connect within a second. Tornado's
default backlog (128) made the kernel drop what did not fit: 774 of 5,000 slow clients that
started within one second were reset (issue 13), where tusd, which asks for the kernel's
limit, lost none. So the default here is the kernel's own ceiling, `net.core.somaxconn`.
"""

from __future__ import annotations

import socket

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def kernel_backlog_limit(path: str = SOMAXCONN_PATH) -> int:
    """The kernel's ceiling for a listen queue; Python's compile-time guess where /proc is
    not readable (another OS, a sandbox)."""
    try:
        with open(path, "rb") as file:
            return max(1, int(file.read().strip()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


def backlog_for(configured: int | None) -> int:
    """`server.backlog`, or the kernel's ceiling when unset (the kernel caps a larger one)."""
    return configured if configured is not None else kernel_backlog_limit()
