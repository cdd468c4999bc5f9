"""The disk store's records as last read, so a request that finds its upload's record
unchanged stats the file instead of reading it.

Every PATCH reads its upload's record before it writes (is it there, not gone, at this
offset?): open, fstat, read, close and a JSON parse were ~6 % of the server's CPU for a
64 KiB PATCH. A stat that shows the version the cached read saw (`info_file.version`) means
the same content; any writer, this process or another, changes that version.
"""

from __future__ import annotations

import os

from formforge.stores import info_file

CACHED_RECORDS_MAX = 1024  # about a KiB each; uploads being written at once, mostly


class RecordCache:
    """Reads of record files; what it returns is shared, so callers must not change it
    (read with `info_file.read` to change a record)."""

    def __init__(self, size: int = CACHED_RECORDS_MAX) -> None:
        self._size = size
        self._entries: dict[str, info_file.Stored] = {}

    def read(self, path: str) -> info_file.Stored:
        """Like `info_file.read`, and as fresh: the same errors for the same files."""
        cached = self._entries.get(path)
        if cached is not None:
            try:
                if info_file.version(os.stat(path)) == cached.version:
                    return cached
            except FileNotFoundError:
                del self._entries[path]
                raise
        stored = info_file.read(path)
        if cached is None and len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]  # the oldest read
        self._entries[path] = stored
        return stored

    def forget(self, path: str) -> None:
        self._entries.pop(path, None)

    def __len__(self) -> int:
        return len(self._entries)
