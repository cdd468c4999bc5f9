"""The disk store's record files: `<id>.info` written once when an upload is created, each
later change appended to it as a line (the form `records.load_record_file` reads).

Whole upload lives (creation + one 64 KiB PATCH + DELETE, fsync off) made four new files
and four renames per upload when every change replaced the record: ~27 % of the server's
CPU went to ext4's inode allocator, ~5 % to renames and ~6 % to the thread hand-offs the
updates took. Appending keeps one inode per record and no rename (docs/benchmarks.md).

What survives which crash:

- A process killed (kill -9): every `write` that returned is in the page cache, so whole.
  A record file is created and written in two calls; a kill between them leaves it empty,
  which `FileStore.recover` removes (the client was never answered).
- A power cut, with fsync on: a new record file is written to a temporary name, synced and
  renamed, so it is whole or absent; an append is synced before it is acknowledged, and one
  torn by the cut (never acknowledged) is a line readers skip.
"""

from __future__ import annotations

import os
import secrets
from typing import NamedTuple

from formforge.stores.records import Record, dump_change, dump_record, load_record_file

# Appended lines before the record is written whole again: an upload has about four
# changes in its life (state, sha256, state; size once when it was deferred), so this
# only bounds a record that something updates far more often.
MAX_APPENDED = 32

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


Version = tuple[int, int, int, int]


class Stored(NamedTuple):
    record: Record
    mtime: float  # when the record last changed
    appended: int  # lines of changes after the whole record
    version: Version  # of the file read (`version`)


def read(path: str) -> Stored:
    """The record as stored. Raises `FileNotFoundError`, or `ValueError` for a record file
    whose creation was cut short."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat = os.fstat(fd)
        raw = read_all(fd, stat.st_size)
    finally:
        os.close(fd)
    return Stored(load_record_file(raw), stat.st_mtime, raw.count(b"\n"), version(stat))


def version(stat: os.stat_result) -> Version:
    """What names one content of a record file. A record file only grows (each change is
    appended) until it is written anew, and a new one is made while the old still holds its
    inode, so it gets another: a path's inode could come back only after two rewrites (64
    changes), and then also with the same size and times to the nanosecond."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def read_small(path: str) -> bytes:
    """A whole small file, without the buffered file object `open` would build."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def read_all(fd: int, size_hint: int = 0) -> bytes:
    """Everything from a regular file's position on, in one read when `size_hint` is about
    right: a read of a regular file that returns less than asked has reached its end."""
    asked = max(size_hint + 4096, 4096)  # room for lines appended since the size was taken
    first = os.read(fd, asked)
    if len(first) < asked:
        return first
    parts = [first]
    while parts[-1]:
        parts.append(os.read(fd, 65536))
    return b"".join(parts)


def create(path: str, record: Record, *, durable: bool) -> Stored:
    """Write a new record file (it must not exist); returns it as `read` would."""
    payload = dump_record(record)
    if durable:
        replace(path, payload, durable=True)
        return _written(record, os.stat(path))
    fd = os.open(path, _NEW, 0o644)
    try:
        write_all(fd, payload)
        return _written(record, os.fstat(fd))
    finally:
        os.close(fd)


def _written(record: Record, stat: os.stat_result) -> Stored:
    return Stored(record, stat.st_mtime, 0, version(stat))


def append(path: str, stored: Stored, changes: dict[str, object], *, durable: bool) -> float:
    """Record `changes` in the file `stored` was read from (`stored.record` has them
    applied already); returns the file's modification time. Raises `FileNotFoundError` if
    the file is gone."""
    if stored.appended >= MAX_APPENDED:
        os.stat(path)  # gone stays gone: never written anew by a late update
        replace(path, dump_record(stored.record), durable=durable)
        return os.stat(path).st_mtime
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        write_all(fd, dump_change(changes))  # one write: whole after a kill
        if durable:
            os.fdatasync(fd)
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def replace(path: str, payload: bytes, *, durable: bool) -> None:
    """Write `path` whole and atomically: a temporary file renamed over it."""
    # A name of its own per write: two threads replacing one file never share a tmp.
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, _NEW, 0o644)
    try:
        write_all(fd, payload)
        if durable:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:  # the rename itself must survive a power cut
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
