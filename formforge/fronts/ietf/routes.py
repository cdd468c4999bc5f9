"""Which requests to /files/ the draft serves: those that carry the interop version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches, Rule

from formforge.core.events import EventBus
from formforge.fronts.ietf.handler import IetfHandler
from formforge.fronts.ietf.interim import VERSION_FIELD, ProgressRelay
from formforge.fronts.ietf.interop import variant_for


class DraftRequests(PathMatches):
    """A /files/ path, for requests of the draft. GET stays with tus (a download), except in
    the versions where GET retrieves the offset."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        version = request.headers.get(VERSION_FIELD)
        if version is None:
            return None
        if request.method == "GET" and not variant_for(version).get_retrieves_offset:
            return None
        return super().match(request)


def ietf_routes(patterns: Sequence[str], kwargs: dict[str, Any], bus: EventBus) -> list[Rule]:
    """Rules for the route table, placed before the tus routes of the same patterns; their
    progress 104s follow `bus`."""
    relay = ProgressRelay()
    bus.subscribe(relay.on_event)
    handler_kwargs = {**kwargs, "progress": relay}
    return [Rule(DraftRequests(pattern), IetfHandler, handler_kwargs) for pattern in patterns]
