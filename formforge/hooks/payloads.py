"""The `upload` object of a hook's JSON (camelCase, like every JSON edge)."""

from __future__ import annotations

from typing import Any

from formforge.core.metadata import filename_of
from formforge.core.model import UploadInfo
from formforge.wire import metadata_fields


def hook_upload(info: UploadInfo) -> dict[str, Any]:
    """`upload` in a hook's JSON object (CONTRACT.md, Hooks)."""
    payload: dict[str, Any] = {
        "uploadId": info.id,
        "size": info.size,
        "offset": info.offset,
        "filename": info.filename,
        **metadata_fields(info.metadata),
    }
    if info.sha256:
        payload["sha256"] = info.sha256
    return payload


def hook_new_upload(size: int | None, metadata: dict[str, str]) -> dict[str, Any]:
    """`upload` for pre-create: the upload does not exist yet, so it has no id."""
    return {
        "size": size,
        "offset": 0,
        "filename": filename_of(metadata),
        **metadata_fields(metadata),
    }
