"""What the configuration allows an upload: sizes, metadata, rates, concurrency, expiry."""

from __future__ import annotations

from dataclasses import dataclass

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.metadata import check_key, encode_metadata, is_storable


@dataclass(frozen=True)
class Limits:
    max_size: int
    max_metadata_bytes: int
    unfinished_ttl_seconds: float
    checksum_algorithms: tuple[str, ...]
    progress_interval_seconds: float
    bandwidth_per_upload: int | None = None
    bandwidth_total: int | None = None
    max_concurrent_uploads: int | None = None

    def check_size(self, size: int | None) -> None:
        if size is not None and size > self.max_size:
            raise UploadError(
                ErrorKind.SIZE_EXCEEDED, f"the upload is larger than {self.max_size} bytes"
            )

    def check_metadata(self, metadata: dict[str, str]) -> None:
        for key, value in metadata.items():
            check_key(key)
            if not is_storable(value):  # a lone surrogate no bytes made (JSON "\\ud800")
                message = f"metadata value of {key!r} is not text"
                raise UploadError(ErrorKind.INVALID_METADATA, message)
        if len(encode_metadata(metadata).encode()) > self.max_metadata_bytes:
            raise UploadError(
                ErrorKind.INVALID_METADATA,
                f"metadata is longer than {self.max_metadata_bytes} bytes",
            )
