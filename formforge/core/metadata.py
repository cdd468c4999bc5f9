"""Upload metadata in the tus `Upload-Metadata` form: `key base64(value),key2,...`."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from formforge.core.errors import ErrorKind, UploadError

# tus: keys MUST NOT contain spaces and commas and MUST NOT be empty; we also refuse
# control characters so keys are safe to log and to echo in headers.
_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII but space and comma


def parse_metadata(header: str, max_bytes: int) -> dict[str, str]:
    if len(header.encode()) > max_bytes:
        raise UploadError(
            ErrorKind.INVALID_METADATA, f"Upload-Metadata is longer than {max_bytes} bytes"
        )
    metadata: dict[str, str] = {}
    if not header.strip():
        return metadata
    for pair in header.split(","):
        key, value = _parse_pair(pair.strip())
        if key in metadata:
            raise UploadError(ErrorKind.INVALID_METADATA, f"metadata key {key!r} is repeated")
        metadata[key] = value
    return metadata


def _parse_pair(pair: str) -> tuple[str, str]:
    key, _, encoded = pair.partition(" ")
    check_key(key)
    try:
        return key, base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise UploadError(
            ErrorKind.INVALID_METADATA, f"metadata value of {key!r} is not base64 of UTF-8 text"
        ) from None


def check_key(key: str) -> None:
    """Keys from any front must survive the tus encoding, so both fronts share this rule."""
    if not _KEY.fullmatch(key):
        raise UploadError(ErrorKind.INVALID_METADATA, "a metadata key is empty or malformed")


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in metadata.items()
    )
