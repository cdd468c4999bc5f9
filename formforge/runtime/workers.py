"""`formforge serve --workers N`: N processes sharing one listening socket, to use every core.

The supervisor binds the socket and recovers the store once, then forks the workers and waits.
SIGTERM or SIGINT to the supervisor becomes SIGTERM to each worker, which stops cleanly
(persisting what its requests received); a worker that dies otherwise is replaced; one
still running `STOP_GRACE_SECONDS` after the stop is killed.
Workers coordinate through the cross-process locker and Socket.IO fan-out that `FormForge`
picks for `Role.workers > 1` (files and Unix sockets in the data dir, or Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

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
# What the supervisor waits for: a stop, the end of the stop's grace, a worker's exit.
SUPERVISOR_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD})


def supervise(
    settings: Settings, workers: int, run_worker: RunWorker, announce: Callable[[str], None]
) -> int:
    """Serve with `workers` processes; returns the supervisor's exit status. `announce`
    prints the start-up line once every worker is forked."""
    server = settings.server
    sockets = bind_sockets(server.port, server.host, backlog=backlog_for(server.backlog))
    asyncio.run(recover_store(settings))
    # The supervisor takes its signals with sigwaitinfo, never in a handler: a handler runs
    # between two bytecodes, and a SIGTERM that came after the last of them and before
    # `os.wait()` blocked stayed unhandled while the idle workers lived on (CI saw it once
    # in a few hundred starts). Blocked, a signal waits until the loop below asks for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
    supervisor = Supervisor(settings, sockets, workers, run_worker)
    for index in range(workers):
        supervisor.spawn(index)
    announce(listening_url(settings.server.host, sockets))
    return supervisor.run()


class Supervisor:
    def __init__(
        self, settings: Settings, sockets: list[socket.socket], workers: int, run: RunWorker
    ) -> None:
        self._settings, self._sockets, self._workers, self._run = settings, sockets, workers, run
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self._restarts = 0

    def run(self) -> int:
        """Until every worker has exited; 1 if they kept dying."""
        while self.children:
            signum = signal.sigwaitinfo(SUPERVISOR_SIGNALS).si_signo
            if signum == signal.SIGCHLD:
                if not self._reap():
                    return 1
            elif signum == signal.SIGALRM:
                self._kill_stragglers()
            else:
                self._stop(signal.Signals(signum).name)
        return 0

    def spawn(self, index: int) -> None:
        role = Role(workers=self._workers, leader=index == 0, recover_store=False)
        pid = os.fork()
        if pid == 0:  # the worker: SIGTERM is its loop's to handle, SIGINT its supervisor's
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # Still blocked: the worker unblocks SIGTERM once its loop handles it, so one
            # that comes while it starts is delivered then, not lost or fatal half-started.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM, signal.SIGCHLD})
            os._exit(self._run(Server(self._settings, self._sockets, role)))
        self.children[pid] = index

    def _reap(self) -> bool:
        """Every worker that exited (one SIGCHLD may stand for several); a worker that died
        is replaced unless the server is stopping. False once they keep dying."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # none left at all
                self.children.clear()
                return True
            if pid == 0:
                return True
            index = self.children.pop(pid, -1)
            if index < 0 or self.stopping:
                continue
            log.warning("worker died index=%d status=%d", index, status)
            self._restarts += 1
            if self._restarts > MAX_RESTARTS:
                print("error: workers keep dying; stopping", file=sys.stderr)
                self._stop("SIGTERM")
                return False
            self.spawn(index)
        return True

    def _stop(self, reason: str) -> None:
        self.stopping = True
        log.info("stopping workers=%d signal=%s", len(self.children), reason)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        signal.alarm(STOP_GRACE_SECONDS)

    def _kill_stragglers(self) -> None:
        for pid in self.children:
            log.warning("worker did not stop in time; killed pid=%d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
