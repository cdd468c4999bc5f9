"""Upload metadata in the tus `Upload-Metadata` form: `key base64(value),key2,...`.

tus: values are base64 of any bytes, not only of text. Inside, a value is a `str`; bytes that
are not UTF-8 are kept as lone surrogates (Python's "surrogateescape", as `os.fsdecode`
does), so every value survives the store's JSON record and comes back byte for byte in
`encode_metadata`. Such a value is "binary"; JSON surfaces show its `text_view` (invalid bytes
as U+FFFD) and carry the exact bytes in base64 beside it (`split_binary`).
"""

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
        return key, from_bytes(base64.b64decode(encoded.strip(), validate=True))
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise UploadError(
            ErrorKind.INVALID_METADATA, f"metadata value of {key!r} is not base64"
        ) from None


def check_key(key: str) -> None:
    """Keys from any front must survive the tus encoding, so both fronts share this rule."""
    if not _KEY.fullmatch(key):
        raise UploadError(ErrorKind.INVALID_METADATA, "a metadata key is empty or malformed")


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(to_bytes(value)).decode()}" if value else key
        for key, value in metadata.items()
    )


def from_bytes(raw: bytes) -> str:
    """A value's bytes as the `str` kept inside: UTF-8, other bytes as lone surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def to_bytes(value: str) -> bytes:
    """The exact bytes of a value (UnicodeEncodeError for a surrogate no bytes made)."""
    return value.encode("utf-8", "surrogateescape")


def is_text(value: str) -> bool:
    """Whether a value is Unicode text (no lone surrogates: what JSON strings should hold)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_storable(value: str) -> bool:
    """Text, or the bytes of a tus value that is not UTF-8."""
    try:
        to_bytes(value)
    except UnicodeEncodeError:
        return False
    return True


def text_view(value: str) -> str:
    """The value as text: bytes that are not UTF-8 become U+FFFD."""
    return value if is_text(value) else to_bytes(value).decode("utf-8", "replace")


def split_binary(metadata: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(every value as text, the base64 of the exact bytes of each value that is not text)."""
    text = {key: text_view(value) for key, value in metadata.items()}
    binary = {
        key: base64.b64encode(to_bytes(value)).decode()
        for key, value in metadata.items()
        if not is_text(value)
    }
    return text, binary


def binary_values(encoded: Mapping[str, str]) -> dict[str, str]:
    """Values given as base64 of their bytes (a JSON `metadataBinary` map), as kept inside."""
    try:
        return {
            key: from_bytes(base64.b64decode(value, validate=True))
            for key, value in encoded.items()
        }
    except (binascii.Error, ValueError, TypeError):
        raise UploadError(
            ErrorKind.INVALID_METADATA, "a binary metadata value is not base64"
        ) from None


def filename_of(metadata: Mapping[str, str]) -> str | None:
    """What clients named the file (tus-js-client and Uppy send `filename`, some `name`), as
    text: bytes that are not UTF-8 show as U+FFFD."""
    name = metadata.get("filename") or metadata.get("name")
    return None if name is None else text_view(name)
