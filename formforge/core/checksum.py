"""Per-request checksums (tus `checksum` extension): hash the body as it streams."""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

from formforge.core.errors import ErrorKind, UploadError


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


HASHERS: dict[str, Callable[[], _Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "crc32": _Crc32,
}


class Checksum:
    """What the client says the body hashes to, and the running hash of what arrived."""

    def __init__(self, algorithm: str, expected: bytes) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self._hasher = HASHERS[algorithm]()

    def update(self, chunk: bytes) -> None:
        self._hasher.update(chunk)

    def matches(self) -> bool:
        return self._hasher.digest() == self.expected


def parse_upload_checksum(header: str, allowed: tuple[str, ...]) -> Checksum:
    """`Upload-Checksum: <algorithm> <base64 digest>` -> Checksum, or a 400."""
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in allowed:
        raise UploadError(
            ErrorKind.CHECKSUM_UNSUPPORTED,
            f"checksum algorithm {algorithm[:32]!r} is not supported",
        )
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(ErrorKind.BAD_REQUEST, "Upload-Checksum is not valid base64") from None
    if not expected:
        raise UploadError(ErrorKind.BAD_REQUEST, "Upload-Checksum has no digest")
    return Checksum(algorithm, expected)
