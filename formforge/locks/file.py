"""Upload locks shared by the processes of one host, without Redis (`serve --workers N`).

The same rules as `MemoryLocker`, across processes, all inside `<data dir>/.locks/`:

- A lock is an exclusive `flock` on `<upload id>.lock`. The kernel drops it the moment
  its holder process dies, so a crashed worker's locks are free at once.
- The holder writes `{"socket": NAME, "token": T}` into the file: NAME is the control
  socket its locker listens on, `<pid>-<random>.sock` beside the lock files (the random
  part keeps two lockers in one process, or equal pids from two PID namespaces sharing
  a volume, apart).
- An asker whose flock fails connects to that socket and sends one JSON line
  `{"upload", "token", "force"}`; the holder's locker calls the holder's
  `release_request(force)` and answers `{"agreed": bool}`. If it agreed, the connection
  stays open until the holder lets go, then says `{"released": true}` (or just closes, if
  the holder process dies); the asker then tries flock again. All of it bounded by
  `wait_seconds`, as in `MemoryLocker`.
- flock excludes open files, not processes, so acquires within one process first meet
  in an in-process table, as in `MemoryLocker`.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from formforge.core.ids import is_valid_upload_id
from formforge.core.locker import TAKEOVER_WAIT_SECONDS, Lock, Locker, ReleaseRequest, locked

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"
POLL_SECONDS = 0.02  # between flock attempts while a holder is letting go
REQUEST_TIMEOUT_SECONDS = 1.0  # how long a holder waits for an asker's request line
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; longer paths go through /proc


@dataclass(eq=False)
class _Held:
    upload_id: str
    token: str
    fd: int
    release_request: ReleaseRequest
    released: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: list[asyncio.StreamWriter] = field(default_factory=list)  # agreed askers


@dataclass(frozen=True)
class _Owner:
    socket: str
    token: str


class _FileLock(Lock):
    def __init__(self, locker: FileLocker, held: _Held) -> None:
        self._locker, self._held = locker, held

    async def release(self) -> None:
        self._locker._release(self._held)


class FileLocker(Locker):
    """Locks for every process of one host sharing `data_dir`.

    `start()` creates `<data_dir>/.locks/`, sweeps what dead processes left there and
    listens on this locker's socket (`acquire` calls it when needed); `close()` lets go of
    what is still held and removes the socket. Create one per process, after any fork.
    """

    def __init__(self, data_dir: Path, *, wait_seconds: float = TAKEOVER_WAIT_SECONDS) -> None:
        self.directory = Path(data_dir) / LOCKS_DIR
        self.socket_name = f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        self._wait_seconds = wait_seconds
        self._held: dict[str, _Held] = {}
        self._server: asyncio.Server | None = None
        self._starting = asyncio.Lock()
        self._dir_fd: int | None = None  # reaches sockets whose full path is too long

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
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
        for held in list(self._held.values()):
            self._release(held)
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

    # -- acquiring -------------------------------------------------------------------------

    async def acquire(
        self, upload_id: str, release_request: ReleaseRequest, *, force: bool = False
    ) -> Lock:
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_seconds
        asked: str | None = None  # the token of the holder that agreed to let go
        while True:
            local = self._held.get(upload_id)
            if local is not None:
                await self._take_from_local(local, force, deadline)
                continue
            held = self._try_lock(upload_id, release_request)
            if held is not None:
                return _FileLock(self, held)
            if loop.time() >= deadline:
                raise locked("the previous request did not let go in time")
            owner = self._read_owner(upload_id)
            if owner is None or owner.token == asked:
                # Not named yet, or letting go already: look again in a moment.
                await asyncio.sleep(max(0.0, min(POLL_SECONDS, deadline - loop.time())))
                continue
            if not await self._ask(owner, upload_id, force, deadline):
                raise locked("another request is still writing to this upload")
            asked = owner.token

    async def _take_from_local(self, held: _Held, force: bool, deadline: float) -> None:
        """A request of this process holds it: ask directly and wait, as MemoryLocker does."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0 or not held.release_request(force):
            raise locked("another request is still writing to this upload")
        try:
            await asyncio.wait_for(held.released.wait(), remaining)
        except TimeoutError:
            raise locked("the previous request did not let go in time") from None

    async def _ask(self, owner: _Owner, upload_id: str, force: bool, deadline: float) -> bool:
        """Ask the holder named in the lock file to let go; if it agrees, wait (until the
        deadline) to hear that it did. True unless it refused."""
        request = {"upload": upload_id, "token": owner.token, "force": force}
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_unix_connection(self._address(owner.socket))
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    answer = json.loads(await reader.readline())
                    if not answer.get("agreed"):
                        return False
                    await reader.readline()  # "released", or the end when the holder died
                finally:
                    writer.close()
        except (OSError, ValueError, TimeoutError):
            pass  # gone, not named yet, or slow: whether it let go, flock will tell
        return True

    def _try_lock(self, upload_id: str, release_request: ReleaseRequest) -> _Held | None:
        """flock the upload's lock file if no one holds it, and name this locker in it.

        Plain blocking file calls: each is a quick local operation on a tiny file."""
        path = self._lock_path(upload_id)
        fd = self._lock_file(path, create=True)
        if fd is None:
            return None
        held = _Held(upload_id, secrets.token_hex(16), fd, release_request)
        owner = json.dumps({"socket": self.socket_name, "token": held.token}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner, 0)
        except BaseException:
            os.close(fd)
            raise
        self._held[upload_id] = held
        return held

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

    def _read_owner(self, upload_id: str) -> _Owner | None:
        try:
            owner: dict[str, Any] = json.loads(self._lock_path(upload_id).read_bytes())
            return _Owner(str(owner["socket"]), str(owner["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # gone, or its holder is still writing it

    def _lock_path(self, upload_id: str) -> Path:
        # Ids are checked before they reach a locker; anything else still stays in here.
        if is_valid_upload_id(upload_id):
            return self.directory / f"{upload_id}.lock"
        return self.directory / f"~{hashlib.sha256(upload_id.encode()).hexdigest()}.lock"

    # -- holding ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One release request from another process."""
        keep_open = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                line = await reader.readline()
            if not line:
                return  # a probe from a starting locker's sweep
            keep_open = self._answer(json.loads(line), writer)
            await writer.drain()
        except (OSError, ValueError, KeyError, TypeError, TimeoutError) as error:
            log.warning("bad lock request dropped error=%r", error)
        finally:
            if not keep_open:
                writer.close()

    def _answer(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        """Pass the request to the holder's callback; True if the asker waits for the end."""
        upload_id, force = str(request["upload"]), bool(request["force"])
        held = self._held.get(upload_id)
        if held is None or held.token != request["token"]:
            writer.write(b'{"agreed": true, "held": false}\n')  # not ours any more
            return False
        agreed = held.release_request(force)
        log.info("release requested upload_id=%s force=%s agreed=%s", upload_id, force, agreed)
        writer.write(json.dumps({"agreed": agreed}).encode() + b"\n")
        if agreed:
            held.watchers.append(writer)
        return agreed

    def _release(self, held: _Held) -> None:
        if held.released.is_set():
            return
        if self._held.get(held.upload_id) is held:
            del self._held[held.upload_id]
        self._unlinklocked(held.fd, self._lock_path(held.upload_id))
        os.close(held.fd)  # the flock goes with the last fd of the open file
        held.released.set()
        for writer in held.watchers:
            with contextlib.suppress(OSError):
                writer.write(b'{"released": true}\n')
            writer.close()

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
