"""One chunk request as the fronts hand it to the service, and the lengths it may declare:
tus's Upload-Length (once, for a deferred length) and the IETF draft's intended length
(said once, the same ever after)."""

from __future__ import annotations

from dataclasses import dataclass

from formforge.core.checksum import Checksum
from formforge.core.errors import ErrorKind, UploadError
from formforge.core.limits import Limits
from formforge.core.model import UploadInfo


@dataclass(frozen=True)
class WriteRequest:
    """One chunk request, parsed and validated for form by a front."""

    upload_id: str
    offset: int
    length: int | None = None  # declares a deferred length
    content_length: int | None = None  # None: not known in advance (chunked)
    checksum: Checksum | None = None
    intended_length: int | None = None  # declares `UploadInfo.intended_length`
    # Stop a request still writing to the upload even while it receives bytes (a protocol
    # whose clients send anew only after giving up on the earlier request); without it, only
    # a stalled one is stopped and an active one means 423.
    take_over: bool = False


def valid_length(info: UploadInfo, length: int, limits: Limits) -> int:
    """A length a request declares: once only, within limits, not below the offset, and
    the intended length if one was said."""
    if info.size is not None:
        if length != info.size:
            raise UploadError(ErrorKind.BAD_REQUEST, "the upload's length cannot be changed")
        return length
    if info.intended_length not in (None, length):
        raise inconsistent_length(
            f"the upload is {info.intended_length} bytes, not {length}", info.intended_length
        )
    limits.check_size(length)
    if length < info.offset:
        raise UploadError(ErrorKind.BAD_REQUEST, "the declared length is below the offset")
    return length


def valid_intended_length(info: UploadInfo, length: int | None, limits: Limits) -> int | None:
    """The upload's intended length after a request that may say one: said once, every
    later request that says one must say the same."""
    if length is None or length == info.intended_length:
        return info.intended_length
    if info.intended_length is not None:
        raise inconsistent_length(
            f"the upload is {info.intended_length} bytes, not {length}", info.intended_length
        )
    limits.check_size(length)
    return length


def inconsistent_length(message: str, intended_length: int) -> UploadError:
    """A request at odds with the length the client said before (a client bug: final)."""
    return UploadError(ErrorKind.BAD_REQUEST, message, intended_length=intended_length)
