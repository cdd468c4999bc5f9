"""`formforge serve --workers N`: N processes sharing one listening socket, to use every core.

The supervisor binds the socket and recovers the store once, then forks the workers and waits.
SIGTERM or SIGINT to the supervisor becomes SIGTERM to each worker, which stops cleanly
(persisting what its requests received); a worker that dies otherwise is replaced.
Workers coordinate through the cross-process locker and Socket.IO fan-out that `FormForge`
picks for `Role.workers > 1` (files and Unix sockets in the data dir, or Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from tornado.netutil import bind_sockets

from formforge.app import Role, recover_store
from formforge.config import Settings
from formforge.runtime.listening import backlog_for
from formforge.server import Server, listening_url

log = logging.getLogger(__name__)

MAX_RESTARTS = 10
# A worker's clean stop takes at most ~8 s (5 s for writes in flight, 3 s to close
# connections); one still running after this is killed, so SIGTERM always ends the server.
STOP_GRACE_SECONDS = 9
RunWorker = Callable[[Server], int]  # runs one worker's server until SIGTERM; exit status


def supervise(
    settings: Settings, workers: int, run_worker: RunWorker, announce: Callable[[str], None]
) -> int:
    """Serve with `workers` processes; returns the supervisor's exit status. `announce`
    prints the start-up line once every worker is forked."""
    server = settings.server
    sockets = bind_sockets(server.port, server.host, backlog=backlog_for(server.backlog))
    asyncio.run(recover_store(settings))
    children: dict[int, int] = {}  # pid -> worker index

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        log.info("stopping workers=%d signal=%s", len(children), signal.Signals(signum).name)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        signal.alarm(STOP_GRACE_SECONDS)

    def kill_stragglers(signum: int, frame: FrameType | None) -> None:
        for pid in children:
            log.warning("worker did not stop in time; killed pid=%d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def spawn(index: int) -> None:
        role = Role(workers=workers, leader=index == 0, recover_store=False)
        # Blocked across the fork: a SIGTERM then would run the supervisor's handler inside
        # the new worker (which then never stops), or reach the supervisor before it knows
        # the worker's pid. The worker unblocks them once its loop handles SIGTERM.
        relayed = {signal.SIGTERM, signal.SIGINT}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, relayed)
        pid = os.fork()
        if pid == 0:  # the worker: not the supervisor's handlers, and SIGINT is its to relay
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            os._exit(run_worker(Server(settings, sockets, role)))
        children[pid] = index
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    # Handlers first: a stop that comes while workers start must still reach every one.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, kill_stragglers)
    for index in range(workers):
        if not stopping:
            spawn(index)
    announce(listening_url(settings.server.host, sockets))
    restarts = 0
    while children:
        pid, status = os.wait()
        index = children.pop(pid, -1)
        if index < 0 or stopping:
            continue
        log.warning("worker died index=%d status=%d", index, status)
        restarts += 1
        if restarts > MAX_RESTARTS:
            print("error: workers keep dying; stopping", file=sys.stderr)
            stop(signal.SIGTERM, None)
            return 1
        spawn(index)
    return 0
