"""Running bounded asyncio scenarios from plain (sync) tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run(scenario: Awaitable[None], deadline: float) -> None:
    """Run one scenario in a fresh event loop; it fails if it takes longer than `deadline`."""

    async def bounded() -> None:
        await asyncio.wait_for(scenario, deadline)

    asyncio.run(bounded())


async def off_loop(function: Callable[..., T], *args: Any, timeout: float = 20.0) -> T:
    """A blocking call in a worker thread: the event loop keeps receiving meanwhile."""
    return await asyncio.wait_for(asyncio.to_thread(function, *args), timeout)
