"""The asyncio event loop `formforge serve` runs on: asyncio's own, or uvloop.

uvloop (the optional extra `formforge[fast]`) runs the same code with less overhead per
socket event: tusbench big ~1,150-1,270 vs ~900-930 MiB/s and concurrent ~400-435 vs
~350-375 MiB/s in alternating runs here (docs/benchmarks.md). `auto` takes it when it is
installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: EventLoopChoice) -> LoopFactory | None:
    """The factory for `asyncio.Runner`; None means asyncio's default loop.

    `uvloop` when it is not installed is the config loader's error to report, not ours.
    """
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return None
    import uvloop

    return uvloop.new_event_loop


def loop_name() -> str:
    """What the running loop is, for the start-up log line."""
    return (
        "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    )
