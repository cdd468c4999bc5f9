"""A FormForge mounted under a prefix in a host Tornado application gives its HTTP hooks a
progress URL under that prefix, on the host's own port, and their reports are heard there
(README, "Reporting progress from a hook"). In process, with pytest-tornado's server; the
hook is a real HTTP receiver on 127.0.0.1 (tests/hook_reporters.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from tests.hook_reporters import HttpEnd


@pytest.fixture
def end(tmp_path: Path) -> Iterator[HttpEnd]:
    hook_end = HttpEnd(tmp_path)
    yield hook_end
    hook_end.close()


@pytest.fixture
def mounted(tmp_path: Path, end: HttpEnd, io_loop: Any) -> Iterator[Any]:
    from formforge import FormForge, Settings

    settings = Settings.from_mapping(
        {
            "storage": {"path": str(tmp_path / "data"), "fsync": False},
            "events": {"progress_interval_ms": 0},
            "hooks": {"timeout_seconds": 30, "post_finish": [end.target()]},
        }
    )
    uploads = FormForge(settings, prefix="/uploads", socketio=False)
    yield uploads
    end.close()  # let the hook return before the server goes
    io_loop.run_sync(uploads.stop)


@pytest.fixture
def app(mounted: Any) -> tornado.web.Application:
    return tornado.web.Application([mounted.rule()])


@pytest.mark.gen_test(timeout=30)
async def test_a_mounted_formforges_hooks_report_under_its_prefix(
    http_client: Any, base_url: str, mounted: Any, end: HttpEnd
) -> None:
    await mounted.start(base_url)
    created = await http_client.fetch(
        f"{base_url}/uploads/api/files/upload",
        method="POST",
        body=json.dumps({"filename": "a.txt", "size": 3}),
    )
    upload_url = json.loads(created.body)["uploadUrl"]
    await http_client.fetch(
        upload_url, method="PUT", body=b"abc", headers={"Content-Range": "bytes 0-2/3"}
    )
    while not end.report_statuses:  # bounded by the test's timeout
        await asyncio.sleep(0.02)
    [progress_url] = end.progress_urls
    assert progress_url.startswith(f"{base_url}/uploads/hooks/progress/"), progress_url
    assert end.report_statuses == [204]
    status = json.loads((await http_client.fetch(upload_url)).body)
    assert (status["state"], status["processing"]) == (
        "processing",
        {"percent": 25, "message": "indexing"},
    )
