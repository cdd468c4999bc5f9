"""Python hooks: `module:function`, called with the JSON object; its return value is the reply.

A coroutine function is awaited; a plain function runs in a thread pool of its own, so a
slow hook never blocks the event loop, and hooks that hang past their time-out (a thread
cannot be stopped) tie up only that pool, never the one the store's disk work runs in.
Either is cut off at the time-out.

A callable with a parameter named `report` (or `**kwargs`) gets a `report(percent,
message=None)` it may call, from its coroutine or its thread, while it works; only
post-finish reports are heard (as processing progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from formforge.core.hooks import HookFailed, HookProgress

POOL_THREADS = 64  # hung hooks hold a thread each until they return; keep room for live ones


class PythonCaller:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="formforge-hook")

    async def __call__(
        self,
        address: str,
        payload: dict[str, Any],
        timeout: float,
        report: HookProgress | None = None,
    ) -> Any:
        target = _load(address)
        loop = asyncio.get_running_loop()
        function = target
        if _takes_report(target):  # at other points than post-finish, reports go nowhere
            reporter = _from_any_thread(report, loop) if report else _nowhere
            function = functools.partial(target, report=reporter)
        try:
            if inspect.iscoroutinefunction(target):
                return await asyncio.wait_for(function(payload), timeout)
            call = loop.run_in_executor(self._pool, function, payload)
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise HookFailed(f"{address} timed out after {timeout} s") from None
        except HookFailed:
            raise
        except Exception as error:  # the hook's own failure, whatever it is
            raise HookFailed(f"{address} raised {type(error).__name__}: {error}") from error


def _from_any_thread(report: HookProgress, loop: asyncio.AbstractEventLoop) -> Callable[..., None]:
    """`report(percent, message=None)` for a hook: safe from its thread, never raises."""

    def call(percent: object = None, message: object = None) -> None:
        with contextlib.suppress(RuntimeError):  # the server's loop is gone: nobody listens
            loop.call_soon_threadsafe(report.report, percent, message)

    return call


def _nowhere(percent: object = None, message: object = None) -> None:
    """`report` for a hook point whose progress nobody hears (pre-create, post-terminate)."""


@cache
def _takes_report(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some built-ins have no signature to read
        return False
    return any(p.name == "report" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@cache
def _load(address: str) -> Callable[..., Any]:
    module_name, _, attribute = address.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise HookFailed(f"cannot load {address}: {error}") from None
    if not callable(target):
        raise HookFailed(f"{address} is not callable")
    return target  # type: ignore[no-any-return]
