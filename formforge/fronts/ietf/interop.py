"""The interop versions of the IETF draft "Resumable Uploads for HTTP": one row each.

Clients name the draft revision they speak in `Upload-Draft-Interop-Version`; everything that
differs between the revisions is one row of `INTEROP`, read by the handler, never tested by
number. A version we do not know is `PLAIN`: a plain, non-resumable upload. The README's draft
section has the same table in prose, with the sources each row was checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tornado.httputil import HTTPHeaders

from formforge.fronts.ietf.problems import COMPLETED_UPLOAD, INCONSISTENT_LENGTH, MISMATCHING_OFFSET


@dataclass(frozen=True)
class Completeness:
    """How a version says "this request ends the upload", in requests and responses."""

    header: str | None  # None: no such field, the request body is the whole upload
    complete_value: bool = True  # the field's value that means complete
    if_absent: bool = False  # what a request without the field means

    def value(self, headers: HTTPHeaders) -> bool | None:
        """The field's value in a request; None when absent or not a Boolean (ignored)."""
        return None if self.header is None else sf_boolean(headers.get(self.header))

    def requested(self, headers: HTTPHeaders) -> bool:
        if self.header is None:
            return True
        value = self.value(headers)
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
    incomplete_on_refusal: bool  # every answer not completing the upload says so (409 too)
    get_retrieves_offset: bool  # GET on an upload is an offset retrieval, like HEAD
    append_needs_completeness: bool  # an append without the completeness field: 400


def _by_version(*variants: Variant) -> dict[int, Variant]:
    return {variant.version: variant for variant in variants if variant.version is not None}


_OFFSET_PROBLEMS = frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD})
_ALL_PROBLEMS = _OFFSET_PROBLEMS | {INCONSISTENT_LENGTH}
_NONE: frozenset[str] = frozenset()

# Interop 3 (draft -01, iOS 17): each later row says only what its drafts changed.
_V3 = Variant(version=3, drafts="-01", completeness=UPLOAD_INCOMPLETE, progress_interim=False,
              partial_upload_type=False, problem_types=_NONE, lifetime_limit=None,
              append_status=201, strict_state_fields=True, incomplete_on_refusal=False,
              get_retrieves_offset=False, append_needs_completeness=False)  # fmt: skip
_V4 = replace(_V3, version=4, drafts="-02", completeness=UPLOAD_COMPLETE)
_V5 = replace(_V4, version=5, drafts="-03", progress_interim=True)  # iOS 18.0
_V6 = replace(  # iOS 18.1 and later
    _V5, version=6, drafts="-04, -05", partial_upload_type=True,
    problem_types=_OFFSET_PROBLEMS, lifetime_limit="expires",
)  # fmt: skip
# -06: `max-age`, 204 appends, the inconsistent-length problem; -08: "Upload-Complete" on
# every response to a creation or append (the general rule, lifted again in -10).
_V7 = replace(
    _V6, version=7, drafts="-06 to -08", problem_types=_ALL_PROBLEMS, lifetime_limit="max-age",
    append_status=204, incomplete_on_refusal=True,
)  # fmt: skip
_V8 = replace(_V7, version=8, drafts="-09 to -11", strict_state_fields=False)
# -12: the 409 for a wrong offset "MUST" carry "Upload-Complete: ?0"; offset retrieval by
# HEAD or GET; Upload-Limit required on OPTIONS, offset retrieval and creation.
_V9 = replace(_V8, version=9, drafts="-12", get_retrieves_offset=True)
# -13 on: an append "MUST include" Upload-Complete, and a server refuses one without it.
_V10 = replace(_V9, version=10, drafts="-13 to -15", append_needs_completeness=True)
INTEROP = _by_version(_V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10)
LATEST = INTEROP[max(INTEROP)]
# A version we do not speak: the creation is a plain upload, and nothing of the draft is used.
PLAIN = replace(_V3, version=None, drafts="none", completeness=Completeness(None),
                append_status=204, strict_state_fields=False)  # fmt: skip


def variant_for(header: str | None) -> Variant:
    version = sf_integer(header)
    return PLAIN if version is None else INTEROP.get(version, PLAIN)


def sf_integer(raw: str | None) -> int | None:
    """A non-negative structured-field Integer; anything else is ignored, as the draft says."""
    text = (raw or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else None


def sf_boolean(raw: str | None) -> bool | None:
    return {"?1": True, "?0": False}.get((raw or "").strip())
