"""The info record: an upload's description as JSON, kept by every store beside its bytes.

One record per upload, with the fields `new_record` sets; a store may add its own (the S3
store's `multipart`). The offset is never one of them: each store derives it from the bytes
it holds, and passes it to `info_from_record`.

Two forms: a whole record (`dump_record`; the S3 store replaces its object whole), and a
record file (`load_record_file`): the whole record as first line, then one line of changes
per update, appended. Appending needs no new file and no rename: replacing a local record
at each of an upload's four updates cost four new inodes, and ext4's inode allocator
(`find_inode_bit` / `recently_deleted`) was ~27 % of the server's CPU over whole upload
lives (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from formforge.core.errors import ErrorKind, UploadError
from formforge.core.model import GONE_STATES, ConcatRole, NewUpload, UploadInfo, UploadState

Record = dict[str, Any]

UPDATABLE_FIELDS = frozenset({"size", "state", "sha256", "error", "metadata", "intended_length"})


def new_record(new: NewUpload) -> Record:
    """The record of an upload just created: no bytes, state `uploading`."""
    return {
        "size": new.size,
        "metadata": dict(new.metadata),
        "created_at": datetime.now(UTC).isoformat(),
        "state": str(UploadState.UPLOADING),
        "concat": str(new.concat) if new.concat else None,
        "parts": list(new.parts),
        "sha256": None,
        "error": None,
        "intended_length": new.intended_length,
    }


def info_from_record(upload_id: str, record: Record, offset: int, mtime: float) -> UploadInfo:
    """The upload's info: the record's fields, plus the offset and time the store measured."""
    concat = record.get("concat")
    return UploadInfo(
        id=upload_id,
        size=record["size"],
        offset=offset,
        metadata=record.get("metadata") or {},
        created_at=datetime.fromisoformat(record["created_at"]),
        updated_at=datetime.fromtimestamp(mtime, UTC),
        state=UploadState(record.get("state", "uploading")),
        concat=ConcatRole(concat) if concat else None,
        parts=tuple(record.get("parts") or ()),
        sha256=record.get("sha256"),
        error=record.get("error"),
        intended_length=record.get("intended_length"),  # absent from older records
    )


def check_changes(changes: Mapping[str, object]) -> None:
    """Raise `ValueError` unless every field changed is one `Store.update` may change."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")


def stored_changes(changes: Mapping[str, object]) -> Record:
    """The changes as a record holds them: states as their strings."""
    return {k: str(v) if isinstance(v, UploadState) else v for k, v in changes.items()}


def apply_changes(record: Record, changes: Mapping[str, object]) -> None:
    """Change the record's fields in place, states stored as their strings.

    A deleted or expired upload's record is final: background work (processing) that
    finishes late must not bring it back, whichever store keeps it.
    """
    if is_gone(record):
        raise UploadError(ErrorKind.TERMINATED, "the upload is gone")
    record.update(stored_changes(changes))


def is_gone(record: Record) -> bool:
    return record.get("state") in GONE_STATES


def dump_record(record: Record) -> bytes:
    return json.dumps(record).encode()


def load_record(raw: bytes) -> Record:
    record: Record = json.loads(raw)
    return record


def dump_change(changes: Mapping[str, object]) -> bytes:
    """One line of changes to append to a record file. It starts with the line break: an
    append cut short by a power cut (never acknowledged) then stays a line of its own,
    which readers skip, and the next append is read whole."""
    return b"\n" + json.dumps(stored_changes(changes)).encode()


def load_record_file(raw: bytes) -> Record:
    """The record a record file holds: its first line, then each later line's changes.

    Raises `ValueError` if the first line is not a record (a creation cut short). A later
    line that is not one is skipped (see `dump_change`). Once the state is gone, later
    lines change nothing: gone is final, also against a late writer in another process.
    """
    first, *changes = raw.split(b"\n")
    record = load_record(first)
    if not isinstance(record, dict):
        raise ValueError("not a record")
    for line in changes:
        if is_gone(record):
            break
        try:
            change = json.loads(line)
        except ValueError:
            continue
        if isinstance(change, dict):
            record.update(change)
    return record
