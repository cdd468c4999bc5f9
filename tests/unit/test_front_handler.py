"""FrontHandler's `clear` stands in for Tornado's (to format the Date once a second): it must
leave a handler exactly as Tornado's would, on whichever Tornado is installed."""

from __future__ import annotations

import socket
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.iostream import IOStream
from tornado.web import Application, RequestHandler

from formforge.fronts.base import FrontHandler


def state(handler: RequestHandler) -> dict[str, Any]:
    headers = dict(handler._headers.get_all())
    date = parsedate_to_datetime(headers.pop("Date"))
    return {
        "attributes": sorted(vars(handler)),
        "headers": headers,
        "date": date.timestamp(),
        "write_buffer": list(handler._write_buffer),
        "status": (handler.get_status(), handler._reason),
    }


@pytest.mark.gen_test
async def test_clear_leaves_the_handler_as_tornados_clear_does() -> None:
    ours, theirs = socket.socketpair()
    try:
        connection = HTTP1Connection(IOStream(ours), is_client=False)
        request = HTTPServerRequest(
            start_line=RequestStartLine("PATCH", "/files/x", "HTTP/1.1"),
            headers=HTTPHeaders({"Host": "example.test", "Origin": "http://example.test"}),
            connection=connection,
        )
        collaborators: dict[str, Any] = {
            "service": None,
            "throughput": None,
            "public_url": None,
            "prefix": "",
            "cors_origins": ("*",),
        }
        handler = FrontHandler(Application(), request, **collaborators)
        handler.set_status(404)
        handler.set_header("X-Extra", "1")
        handler.write(b"partial")
        handler.clear()
        after_ours = state(handler)
        RequestHandler.clear(handler)
        after_tornados = state(handler)
        assert abs(after_ours.pop("date") - after_tornados.pop("date")) <= 1
        assert after_ours == after_tornados
        assert after_ours["headers"]["Access-Control-Allow-Origin"] == "http://example.test"
        assert "X-Extra" not in after_ours["headers"]
    finally:
        theirs.close()
        ours.close()
