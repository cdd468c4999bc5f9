"""What a server process imports: python-socketio without the client libraries it never runs.

python-socketio's package imports all its classes at once, and with them, where they are
installed, the libraries of its clients (aiohttp, requests, websocket-client) and of its
Redis manager: in a venv with FormForge's extras an idle `formforge serve` was 67.6 MiB,
47.4 without them (docs/benchmarks.md). Each of those imports is optional in python-socketio (a
missing library only disables the class that needs it), so a server that runs none of those
classes imports python-socketio with them marked missing, then unmarks them: anything else
that needs one later (the S3 store's aiobotocore needs aiohttp) imports it as usual.
"""

from __future__ import annotations

import importlib
import sys

# engineio.Client, engineio.AsyncClient and socketio's clients built on them.
CLIENT_LIBRARIES = ("aiohttp", "requests", "websocket")


def import_socketio_for_a_server(*, redis: bool) -> None:
    """Import python-socketio for `formforge serve`, leaving out its clients' libraries,
    and Redis unless `redis` (cluster.redis_url: its AsyncRedisManager fans events out).
    Does nothing if python-socketio is imported already."""
    if "socketio" in sys.modules:
        return
    left_out = [*CLIENT_LIBRARIES, *(() if redis else ("redis",))]
    marked = [name for name in left_out if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        importlib.import_module("socketio")
    finally:
        for name in marked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
