"""The uploader page in front of a server with `auth.bearer_tokens`, in Debian's chromium.

CONTRACT.md, Authentication: "The uploader page itself (`GET /`, `/static/`, the favicon) is
public: a browser loads it without a token. The page takes its token from the URL fragment
(`/#token=...`, never sent to the server in the URL) or asks for one in a labelled field,
keeps it for the tab's session, and sends it on every tus/REST request and in the Socket.IO
`auth` payload. A wrong or missing token shows a clear message on the page, not a silent
failure."

The browser and its helpers are those of test_page.py; every wait has a deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system import test_page
from tests.system.test_page import (
    FINISH_TIMEOUT,
    STEP_TIMEOUT,
    KiB,
    MiB,
    PageUnderTest,
    Rows,
    random_file,
    sha256_of,
)

pytestmark = pytest.mark.slow

browser = test_page.browser  # the same chromium fixture
TOKEN = "page-token-7f3a"
WRONG = "not-the-token"
BLANK = "about:blank"
SESSION_KEY_JS = "sessionStorage.getItem('formforge.token')"


class PageBehindAuth(PageUnderTest):
    """A page that may not get its live updates: it is ready once its drop zone shows."""

    def open(self, url: str) -> None:
        self.answer = self.page.goto(url)
        if url == BLANK:  # a page to attach listeners to before the real one loads
            return
        self.page.wait_for_selector("#drop-zone", timeout=STEP_TIMEOUT * 1000)

    def access_problem(self, problem: str) -> str:
        """Waits until the access panel shows `problem`; its message."""
        panel = f'#access[data-problem="{problem}"]:not([hidden])'
        self.page.wait_for_selector(panel, timeout=STEP_TIMEOUT * 1000)
        return str(self.page.inner_text("#access-message"))

    def wait_connected(self) -> None:
        self.page.wait_for_selector(
            '#connection[data-connected="true"]', timeout=STEP_TIMEOUT * 1000
        )


def serve_with_a_token(start_server: Callable[..., Any], tmp_path: Path) -> Any:
    config = tmp_path / "auth.yaml"
    settings = {"auth": {"bearer_tokens": [TOKEN]}, "events": {"progress_interval_ms": 100}}
    config.write_text(yaml.safe_dump(settings))
    return start_server(args=["--config", str(config)])


def one_row_in(state: str) -> Callable[[Rows], bool]:
    return lambda rows: len(rows) == 1 and rows[0]["state"] == state


def test_without_a_token_the_page_loads_and_asks_for_one(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    server = serve_with_a_token(start_server, tmp_path)
    statuses: dict[str, int] = {}
    ui = PageBehindAuth(browser, BLANK, width=390, height=844)  # a phone
    ui.page.on("response", lambda answer: statuses.setdefault(answer.url, answer.status))
    ui.open(server.url + "/")

    assert ui.answer.status == 200
    files = {url: status for url, status in statuses.items() if "/static/" in url}
    assert files, files
    assert all(status == 200 for status in files.values()), files
    message = ui.access_problem("missing")
    assert "needs an access token" in message
    assert ui.page.get_by_label("Access token").is_visible()
    # The socket's refusal comes on its own connection, maybe after the page's answers.
    ui.page.wait_for_function(
        "document.querySelector('#connection').innerText.includes('refused')",
        timeout=STEP_TIMEOUT * 1000,
    )
    assert ui.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # A file added anyway stops with the reason on its row, not silently.
    source = random_file(tmp_path / "early.bin", 64 * KiB)
    ui.page.set_input_files("#file-input", [str(source)])
    row = ui.sample_until(one_row_in("failed"), STEP_TIMEOUT, server.log_tail)[-1][0]
    assert "needs an access token" in row["error"], row
    ui.screenshot(tmp_path / "page-auth-missing-phone.png")
    assert ui.problems == []


def test_a_wrong_token_is_a_clear_message_and_a_right_one_uploads(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    server = serve_with_a_token(start_server, tmp_path)
    addresses: list[str] = []
    ui = PageBehindAuth(browser, BLANK)
    ui.page.on("request", lambda request: addresses.append(request.url))
    ui.open(f"{server.url}/?chunkSize={256 * KiB}#token={WRONG}")

    # The fragment is read, then gone from the address bar.
    assert WRONG not in ui.page.url
    assert ui.page.url.endswith(f"?chunkSize={256 * KiB}")
    assert "refused this access token" in ui.access_problem("refused")
    source = random_file(tmp_path / "report.bin", 3 * MiB)
    ui.page.set_input_files("#file-input", [str(source)])
    row = ui.sample_until(one_row_in("failed"), STEP_TIMEOUT, server.log_tail)[-1][0]
    assert "refused the access token" in row["error"], row
    ui.screenshot(tmp_path / "page-auth-refused.png")

    # The right token, typed into the labelled field: the same row carries on and completes.
    ui.page.get_by_label("Access token").fill(TOKEN)
    ui.page.get_by_role("button", name="Use this token").click()
    ui.wait_connected()
    assert ui.page.is_hidden("#access")
    row = ui.sample_until(one_row_in("complete"), FINISH_TIMEOUT, server.log_tail)[-1][0]
    assert row["sha256"] == sha256_of(source.read_bytes())
    assert row["error"] == ""
    assert (server.data_dir / f"{row['id']}.bin").read_bytes() == source.read_bytes()
    ui.screenshot(tmp_path / "page-auth-complete.png")

    # Its download link fetches with the token (a plain link would get 401).
    with ui.page.expect_download(timeout=STEP_TIMEOUT * 1000) as download:
        ui.page.get_by_role("link", name="report.bin").click()
    assert download.value.suggested_filename == "report.bin"
    assert Path(download.value.path()).read_bytes() == source.read_bytes()

    # Neither token ever travelled in an address.
    assert not [url for url in addresses if TOKEN in url or WRONG in url]
    assert ui.problems == []


def test_a_token_in_the_fragment_lasts_for_the_tabs_session(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    server = serve_with_a_token(start_server, tmp_path)
    ui = PageBehindAuth(browser, f"{server.url}/#token={TOKEN}")
    ui.wait_connected()
    assert ui.page.url == server.url + "/"
    assert ui.page.is_hidden("#access")
    assert ui.page.evaluate(SESSION_KEY_JS) == TOKEN

    # A reload has no fragment: the tab's session still holds the token.
    ui.open(server.url + "/")
    ui.wait_connected()
    source = random_file(tmp_path / "kept.bin", 512 * KiB)
    ui.page.set_input_files("#file-input", [str(source)])
    row = ui.sample_until(one_row_in("complete"), FINISH_TIMEOUT, server.log_tail)[-1][0]
    assert row["sha256"] == sha256_of(source.read_bytes())

    # Another tab (a new browser context) has its own session: no token there.
    other = PageBehindAuth(browser, server.url + "/")
    other.access_problem("missing")
    assert other.page.evaluate(SESSION_KEY_JS) is None
    assert ui.problems == []
    assert other.problems == []
