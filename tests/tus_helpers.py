"""Helpers for in-process tests: an app on tmp_path, and a terse tus request function."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from formforge.app import FormForge
from formforge.config import Settings

OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}
Tus = Callable[..., Awaitable[HTTPResponse]]


def make_app(data_dir: Path, **sections: dict[str, Any]) -> FormForge:
    storage = {"path": str(data_dir), "fsync": False, **sections.pop("storage", {})}
    return FormForge(Settings.from_mapping({"storage": storage, **sections}))


def tus_client(http_client: AsyncHTTPClient, base_url: str) -> Tus:
    async def call(
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        tus: bool = True,
    ) -> HTTPResponse:
        sent = {"Tus-Resumable": "1.0.0"} if tus else {}
        sent.update(headers or {})
        url = path if path.startswith("http") else base_url + path
        if body is None and method in ("POST", "PATCH", "PUT"):
            body = b""
        return await http_client.fetch(
            url,
            method=method,
            headers=sent,
            body=body,
            raise_error=False,
            allow_nonstandard_methods=True,
        )

    return call


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def digest(algorithm: str, data: bytes) -> str:
    return b64(hashlib.new(algorithm, data).digest())


def path_of(response: HTTPResponse) -> str:
    """The path part of a Location header: `/files/<id>`."""
    location = response.headers["Location"]
    return "/files/" + location.rstrip("/").rsplit("/", 1)[-1]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `check` until it holds (background processing), failing after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
