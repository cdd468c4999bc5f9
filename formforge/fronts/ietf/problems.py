"""RFC 9457 problem details, as the draft's error answers carry them."""

from __future__ import annotations

from http.client import responses
from typing import Any

from formforge.core.errors import ErrorKind, UploadError

# The problem types the draft defines, and their titles.
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
COMPLETED_UPLOAD = "completed-upload"
INCONSISTENT_LENGTH = "inconsistent-upload-length"
PROBLEM_TITLES = {
    MISMATCHING_OFFSET: "offset from request does not match offset of resource",
    COMPLETED_UPLOAD: "upload is already completed",
    INCONSISTENT_LENGTH: "inconsistent length values for upload",
}


def problem_document(
    error: UploadError, status: int, defined: frozenset[str], provided_offset: int | None
) -> dict[str, Any]:
    """The problem details of an error: the draft's type where the client's version defines
    one (`defined`), else `about:blank` with the status's title."""
    name = error.details.get("problem") or problem_name(error)
    problem: dict[str, Any] = {"type": "about:blank", "title": responses.get(status, "")}
    if name in defined:
        problem = {"type": PROBLEM_BASE + name, "title": PROBLEM_TITLES[name]}
    problem.update(status=status, detail=error.message, code=error.kind.code)
    if error.kind is ErrorKind.OFFSET_MISMATCH:
        # Draft: "A response using this problem type SHOULD populate both members".
        problem["expected-offset"] = error.details.get("offset")
        problem["provided-offset"] = provided_offset
    return problem


def problem_name(error: UploadError) -> str | None:
    """The draft's problem type for an error the service raised."""
    if error.kind is ErrorKind.OFFSET_MISMATCH:
        return MISMATCHING_OFFSET
    return INCONSISTENT_LENGTH if "intended_length" in error.details else None


def inconsistent(message: str) -> UploadError:
    """Lengths that do not agree: a client bug, final (400)."""
    return UploadError(ErrorKind.BAD_REQUEST, message, problem=INCONSISTENT_LENGTH)
