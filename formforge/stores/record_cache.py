"""The disk store's records as last read, so a request that finds its upload's record
unchanged stats the file instead of reading it.

Every PATCH reads its upload's record before it writes (is it there, not gone, at this
offset?): open, fstat, read, close and a JSON parse were ~6 % of the server's CPU for a
64 KiB PATCH. A stat that shows the version the cached read saw (`info_file.version`) means
the same content; any writer, this process or another, changes that version.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from formforge.stores import info_file

# About 2 KiB each. Uploads that take many PATCHes at once are what it is for; thousands
# of slow ones read their record once per (long) PATCH and gain little from it.
CACHED_RECORDS_MAX = 256


class RecordCache:
    """Reads of record files; what it returns is shared, so callers must not change it
    (read with `info_file.read` to change a record). The store's threads use it too (creation
    and termination, with fsync on): each step is one OrderedDict operation, and two adds at
    once can at worst drop one record more than needed."""

    def __init__(self, size: int = CACHED_RECORDS_MAX) -> None:
        self._size = size
        self._entries: OrderedDict[str, info_file.Stored] = OrderedDict()

    def read(self, path: str) -> info_file.Stored:
        """Like `info_file.read`, and as fresh: the same errors for the same files."""
        cached = self._entries.get(path)
        if cached is not None:
            try:
                if info_file.version(os.stat(path)) == cached.version:
                    return cached
            except FileNotFoundError:
                self.forget(path)
                raise
        stored = info_file.read(path)
        self.add(path, stored)
        return stored

    def add(self, path: str, stored: info_file.Stored) -> None:
        """A record as it is on disk now (one just written, or read)."""
        if path not in self._entries and len(self._entries) >= self._size:
            self._entries.popitem(last=False)  # the one added longest ago
        self._entries[path] = stored

    def forget(self, path: str) -> None:
        self._entries.pop(path, None)

    def __len__(self) -> int:
        return len(self._entries)
