"""Request header parsing that every front shares, and the one place the upload URL is built.

Fronts differ in what they accept; how a media type, a body or a file name is read from the
headers does not, so it is written once here.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from email.message import Message
from email.utils import collapse_rfc2231_value, format_datetime

from tornado.httputil import HTTPHeaders

from formforge.core.errors import ErrorKind, UploadError

# The path of the upload endpoint (tus and the IETF draft), relative to the base URL.
FILES_PATH = "/files/"


def upload_url(base_url: str, upload_id: str) -> str:
    """The URL of one upload (`Location`, `tusUrl`, events): `{base}/files/{id}`."""
    return f"{base_url.rstrip('/')}{FILES_PATH}{upload_id}"


def media_type(header: str | None) -> str:
    """`Content-Type: Application/Partial-Upload; x=y` -> `application/partial-upload`."""
    return (header or "").split(";", 1)[0].strip().lower()


def require_id(upload_id: str | None) -> str:
    """The upload id of a path that must name an upload (405 at the creation URL)."""
    if not upload_id:
        raise UploadError(ErrorKind.METHOD_NOT_ALLOWED, "this method needs an upload URL")
    return upload_id


def is_chunked(headers: HTTPHeaders) -> bool:
    return "chunked" in headers.get("Transfer-Encoding", "").lower()


def has_body(headers: HTTPHeaders, content_length: int | None) -> bool:
    """Whether the request carries content: chunked, or a positive `Content-Length` (which
    the caller parsed, each front with its own strictness)."""
    return is_chunked(headers) or (content_length or 0) > 0


def disposition_filename(header: str | None) -> str | None:
    """The file name of a Content-Disposition: `filename*` (RFC 6266 prefers it), else
    `filename`."""
    if not header:
        return None
    message = Message()
    message["Content-Disposition"] = header
    params = message.get_params(header="content-disposition") or []
    names = [value for key, value in params if key == "filename" and value]
    names.sort(key=lambda value: not isinstance(value, tuple))  # the RFC 2231 form first
    if not names:
        return None
    return collapse_rfc2231_value(names[0]) or None


def http_date(moment: datetime | float) -> str:
    """An IMF-fixdate (`Date`, `Upload-Expires`) of a datetime or a `time.time()`: the same
    few seconds are formatted for every answer of a busy second, so once each (formatting
    them anew took ~4 % of small PATCHes' CPU)."""
    seconds = moment if isinstance(moment, float | int) else moment.timestamp()
    return _http_date_of_second(int(seconds))


@functools.lru_cache(maxsize=64)
def _http_date_of_second(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, UTC), usegmt=True)
