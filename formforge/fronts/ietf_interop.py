"""The interop versions of the IETF draft "Resumable Uploads for HTTP": one row each.

Clients name the draft revision they speak in `Upload-Draft-Interop-Version`; everything that
differs between the revisions is one row of `INTEROP`, read by the handler (`ietf.py`), never
tested by number. A version we do not know is `PLAIN`: a plain, non-resumable upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from tornado.httputil import HTTPHeaders

# RFC 9457 problem types the draft defines, and their titles.
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
COMPLETED_UPLOAD = "completed-upload"
INCONSISTENT_LENGTH = "inconsistent-upload-length"
PROBLEM_TITLES = {
    MISMATCHING_OFFSET: "offset from request does not match offset of resource",
    COMPLETED_UPLOAD: "upload is already completed",
    INCONSISTENT_LENGTH: "inconsistent length values for upload",
}


@dataclass(frozen=True)
class Completeness:
    """How a version says "this request ends the upload", in requests and responses."""

    header: str | None  # None: no such field, the request body is the whole upload
    complete_value: bool = True  # the field's value that means complete
    if_absent: bool = False  # what a request without the field means

    def requested(self, headers: HTTPHeaders) -> bool:
        if self.header is None:
            return True
        value = sf_boolean(headers.get(self.header))
        return self.if_absent if value is None else value == self.complete_value

    def field(self, complete: bool) -> tuple[str, str] | None:
        if self.header is None:
            return None
        return self.header, "?1" if complete == self.complete_value else "?0"


UPLOAD_INCOMPLETE = Completeness("Upload-Incomplete", complete_value=False, if_absent=True)
UPLOAD_COMPLETE = Completeness("Upload-Complete")


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One interop version: where the draft revisions using it differ from the others."""

    version: int | None  # None: a version we do not speak (plain upload, no 104)
    drafts: str  # the draft revisions that use this interop version
    completeness: Completeness
    progress_interim: bool  # 104 with Upload-Offset while a body streams
    partial_upload_type: bool  # appends are application/partial-upload; Accept-Patch
    problem_types: frozenset[str]  # the RFC 9457 types this revision defines
    lifetime_limit: str | None  # Upload-Limit's lifetime key; None: no Upload-Limit at all
    append_status: int  # the success status of an append
    strict_state_fields: bool  # HEAD/DELETE with Upload-Offset, -Complete, -Length: 400


def _by_version(*variants: Variant) -> dict[int, Variant]:
    return {variant.version: variant for variant in variants if variant.version is not None}


_OFFSET_PROBLEMS = frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD})
_ALL_PROBLEMS = _OFFSET_PROBLEMS | {INCONSISTENT_LENGTH}
_NONE: frozenset[str] = frozenset()

# One row per interop version; iOS 17 speaks 3, iOS 18.0 speaks 5, iOS 18.1 and later 6.
INTEROP = _by_version(
    Variant(version=3, drafts="-01", completeness=UPLOAD_INCOMPLETE, progress_interim=False,
            partial_upload_type=False, problem_types=_NONE, lifetime_limit=None,
            append_status=201, strict_state_fields=True),
    Variant(version=4, drafts="-02", completeness=UPLOAD_COMPLETE, progress_interim=False,
            partial_upload_type=False, problem_types=_NONE, lifetime_limit=None,
            append_status=201, strict_state_fields=True),
    Variant(version=5, drafts="-03", completeness=UPLOAD_COMPLETE, progress_interim=True,
            partial_upload_type=False, problem_types=_NONE, lifetime_limit=None,
            append_status=201, strict_state_fields=True),
    Variant(version=6, drafts="-04, -05", completeness=UPLOAD_COMPLETE, progress_interim=True,
            partial_upload_type=True, problem_types=_OFFSET_PROBLEMS, lifetime_limit="expires",
            append_status=201, strict_state_fields=True),
    Variant(version=7, drafts="-06 to -08", completeness=UPLOAD_COMPLETE, progress_interim=True,
            partial_upload_type=True, problem_types=_ALL_PROBLEMS, lifetime_limit="max-age",
            append_status=204, strict_state_fields=True),
    Variant(version=8, drafts="-09 on", completeness=UPLOAD_COMPLETE, progress_interim=True,
            partial_upload_type=True, problem_types=_ALL_PROBLEMS, lifetime_limit="max-age",
            append_status=204, strict_state_fields=False),
)  # fmt: skip
LATEST = INTEROP[max(INTEROP)]
# A version we do not speak: the creation is a plain upload, and nothing of the draft is used.
PLAIN = Variant(version=None, drafts="none", completeness=Completeness(None),
                progress_interim=False, partial_upload_type=False, problem_types=_NONE,
                lifetime_limit=None, append_status=204, strict_state_fields=False)  # fmt: skip


def variant_for(header: str | None) -> Variant:
    version = sf_integer(header)
    return PLAIN if version is None else INTEROP.get(version, PLAIN)


def sf_integer(raw: str | None) -> int | None:
    """A non-negative structured-field Integer; anything else is ignored, as the draft says."""
    text = (raw or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else None


def sf_boolean(raw: str | None) -> bool | None:
    return {"?1": True, "?0": False}.get((raw or "").strip())
