"""The data file under a write in progress: open from the body's first piece to its end, or,
while more bodies stream at once than the process should hold files for, open only while a
piece is written.

Each slow upload holds a socket and, while its body streams, its data file: 10,000 phones
on thin links took 20,000 descriptors, the machine's hard limit, and the last few uploads
failed (`Too many open files`, and connections reset at accept). Past `held_max` streaming
writes, each closes its file after a piece and opens it again for the next: two syscalls
per piece instead of a descriptor per upload.
"""

from __future__ import annotations

import os
import resource

from formforge.core.errors import ErrorKind, UploadError
from formforge.stores.writeback import start_writeback

# Data files held open between pieces, as a share of the process's open-file limit: the
# rest is for the uploads' sockets, record reads and everything else.
HELD_SHARE_OF_LIMIT = 4


def held_max() -> int:
    """How many streaming writes may keep their data file open between pieces."""
    return max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // HELD_SHARE_OF_LIMIT)


class DataFile:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def open_at_end(cls, path: str, offset: int) -> DataFile:
        """The data file, open for writing, after checking that `offset` is where it ends."""
        fd = _open(path)
        end = os.fstat(fd).st_size
        if end != offset:
            os.close(fd)
            raise UploadError(
                ErrorKind.OFFSET_MISMATCH, f"offset is {end}, not {offset}", offset=end
            )
        return cls(path, fd)

    def descriptor(self) -> int:
        """Open again if parked (the write holds the upload's lock: its end has not moved)."""
        if self._fd is None:
            self._fd = _open(self.path)
        return self._fd

    def close(self) -> None:
        """Until the next piece (`descriptor` opens it again), or for good; every piece
        written so far is in the page cache."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def write_chunk(fd: int, chunk: bytes, position: int, durable: bool) -> None:
    pwrite_all(fd, chunk, position)
    if durable:  # the fdatasync at the end of the request then has less left to wait for
        start_writeback(fd, position, len(chunk))


def pwrite_all(fd: int, chunk: bytes, position: int) -> None:
    view = memoryview(chunk)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UploadError(ErrorKind.NOT_FOUND, "no such upload") from None
