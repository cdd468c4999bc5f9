"""Upload locks shared by the processes of one host, without Redis (`serve --workers N`).

The take-over algorithm of `locks/base.py`, across processes, all inside `<data dir>/.locks/`:

- A lock is an exclusive `flock` on `<upload id>.lock`. The kernel drops it the moment
  its holder process dies, so a crashed worker's locks are free at once.
- The holder writes `NAME TOKEN` into the file: NAME is the control socket its locker
  listens on, `<pid>-<random>.sock` beside the lock files (the random part keeps two
  lockers in one process, or equal pids from two PID namespaces sharing a volume, apart),
  TOKEN names the acquisition.
- An asker whose flock fails connects to that socket and sends one JSON line
  `{"upload", "token", "force"}`; the holder's locker answers `{"answer": ...}` with the
  stall policy (`locks/base.py`). If it agreed, the connection stays open until the
  holder lets go, then says `{"released": true}` (or just closes, if the holder process
  dies); the asker then tries flock again. The deadline, the in-process table and the
  rest of the algorithm are `locks/base.py`'s.

Lock files are removed by their holder when it lets go, while it still holds the flock;
whoever locks a file checks that it is still the one at the path (and retries if not),
so a removed file can never be held by two. A socket is bound under a temporary name and
renamed once it listens, so a `.sock` file that refuses connections is dead: `start()`
removes those, and lock files nobody holds (what a killed process leaves behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from formforge.core.ids import is_valid_upload_id
from formforge.core.locker import TAKEOVER_WAIT_SECONDS
from formforge.locks.base import Answer, BaseLocker, Held

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"
REQUEST_TIMEOUT_SECONDS = 1.0  # how long a holder waits for an asker's request line
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; longer paths go through /proc


class FileLocker(BaseLocker[int]):
    """Locks for every process of one host sharing `data_dir`.

    `start()` creates `<data_dir>/.locks/`, sweeps what dead processes left there and
    listens on this locker's socket (`acquire` calls it when needed); `close()` lets go of
    what is still held and removes the socket. Create one per process, after any fork.
    """

    def __init__(self, data_dir: Path, *, wait_seconds: float = TAKEOVER_WAIT_SECONDS) -> None:
        super().__init__(wait_seconds)
        self.directory = Path(data_dir) / LOCKS_DIR
        self.socket_name = f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        self._server: asyncio.Server | None = None
        self._starting = asyncio.Lock()
        self._dir_fd: int | None = None  # reaches sockets whose full path is too long

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return  # every acquire calls this
        async with self._starting:
            if self._server is None:
                await self._start()

    async def _start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._sweep()
            self._server = await self._listen()
        except BaseException:
            os.close(self._dir_fd)
            self._dir_fd = None
            raise
        log.info("file locker started socket=%s", self.socket_name)

    async def _listen(self) -> asyncio.Server:
        """Bind under a temporary name, listen, then rename: a `.sock` file is always live."""
        temporary = self.socket_name + ".tmp"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self._address(temporary))
            listener.listen(64)
            os.replace(self.directory / temporary, self.directory / self.socket_name)
            return await asyncio.start_unix_server(self._serve, sock=listener)
        except BaseException:
            listener.close()
            with contextlib.suppress(OSError):
                (self.directory / temporary).unlink()
            raise

    async def close(self) -> None:
        """Let go of every lock still held, stop listening, remove the socket."""
        await super().close()
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                (self.directory / self.socket_name).unlink()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _sweep(self) -> None:
        """Remove the sockets of dead lockers and the lock files nobody holds."""
        for path in self.directory.iterdir():
            if path.suffix == ".sock" and not self._listening(path.name):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            elif path.suffix == ".lock":
                fd = self._lock_file(path, create=False)
                if fd is not None:
                    self._unlinklocked(fd, path)
                    os.close(fd)

    def _listening(self, name: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(REQUEST_TIMEOUT_SECONDS)
            try:
                probe.connect(self._address(name))
            except OSError:
                return False
            return True

    def _address(self, name: str) -> str:
        full = str(self.directory / name)
        if len(full.encode()) <= _SUN_PATH_MAX or self._dir_fd is None:
            return full
        return f"/proc/self/fd/{self._dir_fd}/{name}"  # Linux: the same file, a short name

    # -- taking and asking ----------------------------------------------------------------

    async def _take(self, upload_id: str, token: str) -> int | None:
        """flock the upload's lock file if no one holds it, and name this acquisition in it.

        Plain blocking file calls: each is a quick local operation on a tiny file."""
        fd = self._lock_file(self._lock_path(upload_id), create=True)
        if fd is None:
            return None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.socket_name} {token}".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def _owner(self, upload_id: str) -> str | None:
        try:
            owner = self._lock_path(upload_id).read_text()
        except (OSError, ValueError):
            return None  # gone meanwhile
        return owner if len(owner.split(" ")) == 2 else None  # or still being written

    async def _ask(self, upload_id: str, owner: str, force: bool, deadline: float) -> Answer:
        """Ask the holder named in the lock file; if it agrees, wait (until the deadline)
        to hear that it let go."""
        socket_name, token = owner.split(" ")
        request = {"upload": upload_id, "token": token, "force": force}
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_unix_connection(self._address(socket_name))
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    answer = Answer(json.loads(await reader.readline())["answer"])
                    if answer is Answer.AGREED:
                        await reader.readline()  # "released", or the end if the holder died
                    return answer
                finally:
                    writer.close()
        except (OSError, ValueError, KeyError, TypeError, TimeoutError):
            return Answer.AGREED  # gone, or slow: whether it let go, flock will tell

    def _lock_file(self, path: Path, *, create: bool) -> int | None:
        """An fd holding the flock of the file now at `path`, or None if someone holds it."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        for _ in range(10):  # each retry means a holder just removed the file
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            if _is_at(fd, path):
                return fd
            os.close(fd)  # we locked a file its holder removed meanwhile
        return None

    def _lock_path(self, upload_id: str) -> Path:
        # Ids are checked before they reach a locker; anything else still stays in here.
        if is_valid_upload_id(upload_id):
            return self.directory / f"{upload_id}.lock"
        return self.directory / f"~{hashlib.sha256(upload_id.encode()).hexdigest()}.lock"

    # -- holding ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One release request from another process."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                line = await reader.readline()
            if not line:
                return  # a probe from a starting locker's sweep
            request: dict[str, Any] = json.loads(line)
            answer, held = self._answer(
                str(request["upload"]), str(request["token"]), bool(request["force"])
            )
            writer.write(json.dumps({"answer": answer.value}).encode() + b"\n")
            await writer.drain()
            if held is not None:
                await self._tell_when_released(held, writer)
        except (OSError, ValueError, KeyError, TypeError, TimeoutError) as error:
            log.warning("bad lock request dropped error=%r", error)
        finally:
            writer.close()

    async def _tell_when_released(self, held: Held[int], writer: asyncio.StreamWriter) -> None:
        """The asker waits at most `wait_seconds` for this; so do we."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held.released.wait(), self._wait_seconds)
            writer.write(b'{"released": true}\n')
            await writer.drain()

    async def _let_go(self, held: Held[int]) -> None:
        self._unlinklocked(held.grip, self._lock_path(held.upload_id))
        os.close(held.grip)  # the flock goes with the last fd of the open file

    @staticmethod
    def _unlinklocked(fd: int, path: Path) -> None:
        """Remove the lock file while still holding it: no one can be holding it then."""
        try:
            if _is_at(fd, path):
                path.unlink()
        except OSError as error:
            log.warning("lock file not removed path=%s error=%s", path, error)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path`."""
    try:
        here = path.stat()
    except FileNotFoundError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
