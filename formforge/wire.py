"""The JSON edge: snake_case values inside become the camelCase payloads clients see.

Socket.IO events and REST answers are built here and nowhere else, so the two fronts
cannot drift apart on a key's name or meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from formforge.core.errors import ErrorKind
from formforge.core.metadata import split_binary
from formforge.core.model import UploadInfo, UploadState
from formforge.core.processing_progress import ProcessingStatus

UPLOADING, PROCESSING = "uploading", "processing"  # `stage` of uploadProgress
UNKNOWN = ProcessingStatus(None, None)  # processing, but not in this process: no details


def percent(offset: int, size: int | None) -> float | None:
    if size is None:
        return None
    return 100.0 if size == 0 else round(offset * 100 / size, 2)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def progress_payload(
    upload_id: str,
    offset: int,
    size: int | None,
    bytes_per_second: float,
    processing: ProcessingStatus | None = None,
) -> dict[str, Any]:
    """`uploadProgress`: bytes arriving (stage `uploading`), or, with `processing`, all
    bytes there and the processing step's own progress (stage `processing`)."""
    return {
        "uploadId": upload_id,
        "offset": offset,
        "size": size,
        "percent": percent(offset, size),
        "bytesPerSecond": round(bytes_per_second, 1),
        "stage": UPLOADING if processing is None else PROCESSING,
        "processing": processing_json(processing),
    }


def snapshot_payload(info: UploadInfo, processing: ProcessingStatus | None) -> dict[str, Any]:
    """The `uploadProgress` a client joining the room gets at once."""
    if info.state is UploadState.PROCESSING:
        return progress_payload(info.id, info.offset, info.size, 0.0, processing or UNKNOWN)
    return progress_payload(info.id, info.offset, info.size, 0.0)


def processing_json(status: ProcessingStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {"percent": status.percent, "message": status.message}


def complete_payload(info: UploadInfo, url: str) -> dict[str, Any]:
    return {
        "uploadId": info.id,
        "size": info.size,
        "filename": info.filename,
        **metadata_fields(info.metadata),
        "sha256": info.sha256,
        "url": url,
    }


def error_payload(upload_id: str, kind: ErrorKind, message: str, offset: int) -> dict[str, Any]:
    return {
        "uploadId": upload_id,
        "code": kind.code,
        "message": message,
        "offset": offset,
        "retryable": kind.retryable,
    }


def error_body(kind: ErrorKind, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": kind.code, "message": message}, **extra}


def status_payload(
    info: UploadInfo, expires_at: datetime | None, processing: ProcessingStatus | None = None
) -> dict[str, Any]:
    """REST's status; `processing` is null unless the state is `processing`."""
    processing = (processing or UNKNOWN) if info.state is UploadState.PROCESSING else None
    return {
        "uploadId": info.id,
        "filename": info.filename,
        "size": info.size,
        "offset": info.offset,
        "state": str(info.state),
        "percent": percent(info.offset, info.size),
        **metadata_fields(info.metadata),
        "createdAt": iso(info.created_at),
        "expiresAt": iso(expires_at),
        "sha256": info.sha256,
        "processing": processing_json(processing),
    }


def metadata_fields(metadata: Mapping[str, str]) -> dict[str, Any]:
    """`metadata` as JSON carries it: every value as text, and for values that are not UTF-8
    text (tus allows any bytes) `metadataBinary` with the base64 of their exact bytes."""
    text, binary = split_binary(metadata)
    return {"metadata": text, "metadataBinary": binary} if binary else {"metadata": text}
