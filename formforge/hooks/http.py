"""HTTP hooks: the JSON object POSTed to a URL; a 2xx answer's JSON body is the reply.

A non-2xx answer, a time-out or a refused connection is retried: 3 attempts in all, with
backoff, before the hook counts as failed.

A post-finish call's JSON carries `progressUrl`: FormForge's own address with a token that
stands for this one call (unguessable, void once the call ends). The target may POST
`{"percent": 40, "message": "indexing"}` there while it works (`fronts/hook_progress.py`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from formforge.core.hooks import HookFailed, HookProgress

ATTEMPTS = 3
BACKOFF_SECONDS = (0.2, 0.8)


class HttpCaller:
    def __init__(self, progress_url: Callable[[], str] | None) -> None:
        self.progress_url = progress_url  # the base; each call's token is appended

    async def __call__(
        self, url: str, payload: dict[str, Any], timeout: float, report: HookProgress | None
    ) -> Any:
        if report is not None and self.progress_url is not None:
            payload = {**payload, "progressUrl": self.progress_url() + report.token()}
        return await call_http(url, payload, timeout)


async def call_http(url: str, payload: dict[str, Any], timeout: float) -> Any:
    last_error = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(BACKOFF_SECONDS[attempt - 1])
        try:
            response = await AsyncHTTPClient().fetch(
                url,
                method="POST",
                body=json.dumps(payload),
                headers={"Content-Type": "application/json"},
                request_timeout=timeout,
                connect_timeout=timeout,
                follow_redirects=False,
            )
        except HTTPClientError as error:
            last_error = f"status {error.code}"
            continue
        except (OSError, TimeoutError) as error:
            last_error = str(error) or type(error).__name__
            continue
        return _parse(response.body)
    raise HookFailed(f"{url}: {last_error} after {ATTEMPTS} attempts")


def _parse(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise HookFailed("the answer is not JSON") from None
