"""The IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload) at /files/.

A request that carries `Upload-Draft-Interop-Version` is routed here (`routes`, placed before
the tus routes); every other request to /files/ stays with the tus front, and so do downloads.
Both fronts call the same upload service: a draft upload has the same store, lock, events,
hooks and expiry as a tus one, and the same URL.

- `interop`: one row per interop version, everything that differs between draft revisions;
- `handler`: the requests (creation, offset retrieval, append, cancellation, OPTIONS);
- `interim`: the raw `104` writer, and progress 104s driven by the event bus;
- `problems`: RFC 9457 problem details;
- `routes`: which requests the draft serves.
"""

from formforge.fronts.ietf.routes import ietf_routes

__all__ = ["ietf_routes"]
