"""Serving a finished upload: Range, a safe Content-Type and Content-Disposition."""

from __future__ import annotations

import re
from urllib.parse import quote

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.model import UploadInfo

# Types a browser may show inline without running anything of the uploader's.
INLINE_SAFE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/webm",
        "audio/flac",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "application/pdf",
        "text/plain",
    }
)
# A finished upload's bytes never change and its id is never reused, so a cache may keep a
# download and check it with the ETag below. It must check every time (`no-cache`): an upload
# can be deleted or expire at any moment, and a cache must then stop serving it, which only
# asking us first guarantees. `private`: the files are the uploaders' own, and with
# `auth.bearer_tokens` each reader's access is checked; shared caches (proxies) keep none.
DOWNLOAD_CACHE_CONTROL = "private, no-cache"
_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def content_type(info: UploadInfo) -> str:
    claimed = (info.metadata.get("filetype") or info.metadata.get("type") or "").lower()
    return claimed if _TYPE.fullmatch(claimed) else "application/octet-stream"


def content_disposition(info: UploadInfo, mime: str) -> str:
    disposition = "inline" if mime in INLINE_SAFE_TYPES else "attachment"
    # As text: a name whose bytes are not UTF-8 (tus allows any) shows them as U+FFFD.
    name = info.filename or info.id
    name = name.replace("/", "_").replace("\\", "_")
    # An ASCII fallback without quotes or controls, and the exact name per RFC 6266/5987.
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"%' else "_" for c in name)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def entity_tag(info: UploadInfo) -> str:
    """A strong validator of a finished upload: its id and size say all (it never changes)."""
    return f'"{info.id}-{info.size}"'


def is_fresh(if_none_match: str | None, etag: str) -> bool:
    """Whether the client's copy (RFC 9110 If-None-Match, weak comparison) is this one."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range -> [start, end); None means the whole file.

    Several ranges, or a unit other than bytes, are answered with the whole file, as
    RFC 9110 allows. An unsatisfiable range raises 416.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if first and last and int(last) < int(first):
        return None  # not a valid range: RFC 9110 lets us ignore it
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if start >= size or end <= start:
            raise _unsatisfiable(size)
        return start, end
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise _unsatisfiable(size)
    return max(size - suffix, 0), size


def _unsatisfiable(size: int) -> UploadError:
    return UploadError(ErrorKind.RANGE_NOT_SATISFIABLE, "the range is outside the file", size=size)
