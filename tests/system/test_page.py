"""The uploader page at `GET /`, in a real browser: Debian's chromium driven by Playwright.

Two files uploaded through the file input finish although the server is killed and
restarted mid-upload: the stored files' sha256 match, and the server-confirmed mark moved
during the upload (a screenshot is saved under the test's tmp dir). Also: keyboard use, a
phone-sized viewport, pause, resume, cancel, resuming after a reload, and no inline script or
style (the page's Content-Security-Policy forbids them). Without `?chunkSize=`, the page's
chunks follow the link (smaller under a cap).

The page reads `?chunkSize=BYTES` (see static/index.html): small chunks make an upload of a
few tens of MiB take seconds on loopback, long enough to watch it and to kill the server
under it. Every wait has a deadline; the browser never leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INDEX_HTML = ROOT / "static" / "index.html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Written out, not imported: this is the header the page's safety rests on.
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'"
)
KiB = 1024
MiB = 1024 * KiB
FINISH_TIMEOUT = 60.0  # seconds for uploads of tens of MiB, a server restart included
STEP_TIMEOUT = 15.0  # seconds for any one thing the page should show
SAMPLE_EVERY_MS = 50

# What the page shows of each file, read from the DOM (data-state and the two <progress>).
SNAPSHOT_JS = """() => [...document.querySelectorAll('#uploads > li')].map((li) => {
  const part = (name) => li.querySelector('.' + name);
  return {
    name: part('upload-name').textContent,
    id: li.dataset.uploadId || null,
    state: li.dataset.state,
    sent: part('sent').value,
    confirmed: part('confirmed').value,
    max: part('confirmed').max,
    sha256: part('upload-sha256').textContent,
    url: part('upload-link').href,
    error: part('upload-error').hidden ? '' : part('upload-error').textContent,
  };
})"""

Rows = list[dict[str, Any]]


# ============================================================ helpers


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def by_name(rows: Rows) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in rows}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class PageUnderTest:
    """A page of the uploader, with what went wrong inside it (CSP refusals, uncaught errors)."""

    def __init__(self, browser: Any, url: str, width: int = 1000, height: int = 800) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("console", self._on_console)
        # Listening from the start turns on file-chooser interception before any click.
        self.page.on("filechooser", lambda chooser: None)
        self.open(url)

    def _on_console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.problems.append(f"CSP: {message.text}")

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector(
            '#connection[data-connected="true"]', timeout=STEP_TIMEOUT * 1000
        )

    def rows(self) -> Rows:
        rows: Rows = self.page.evaluate(SNAPSHOT_JS)
        return rows

    def sample_until(
        self, done: Callable[[Rows], bool], timeout: float, log: Callable[[], str]
    ) -> list[Rows]:
        """Snapshots every SAMPLE_EVERY_MS until `done` holds for one; all of them, in order."""
        samples: list[Rows] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            samples.append(self.rows())
            if done(samples[-1]):
                return samples
            self.page.wait_for_timeout(SAMPLE_EVERY_MS)
        raise AssertionError(f"page never got there; it shows {samples[-1:]}\n{log()}")

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path), full_page=True)
        shutil.copyfile(path, Path("/tmp") / f"formforge-{path.name}")


# ============================================================ the page as a file, and GET /


class InlineCodeFinder(HTMLParser):
    """Collects everything a `script-src 'self'; style-src 'self'` policy would refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style":
            self.refused.append("<style> element")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.refused.append("<script> without src")
            else:
                self.scripts.append(str(names["src"]))
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.refused.append(f"<{tag} {name}=...>")
            if (value or "").strip().lower().startswith("javascript:"):
                self.refused.append(f"<{tag} {name}=javascript:...>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.refused.append("inline script text")


def test_page_has_no_inline_script_or_style() -> None:
    finder = InlineCodeFinder()
    finder.feed(INDEX_HTML.read_text())
    assert finder.refused == []
    assert finder.scripts, "the page loads its scripts from static/"
    # Relative to the page, so the page works wherever FormForge is mounted.
    assert all(src.startswith("static/") for src in finder.scripts)


def test_index_is_the_page_under_its_csp(start_server: Callable[..., Any]) -> None:
    server = start_server()
    answer = requests.get(server.url + "/", timeout=10, allow_redirects=False)
    assert answer.status_code == 200
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.content == INDEX_HTML.read_bytes()
    finder = InlineCodeFinder()
    finder.feed(answer.text)
    for src in [*finder.scripts, "static/style.css", "static/chunking.js"]:
        asset = requests.get(f"{server.url}/{src}", timeout=10)
        assert asset.status_code == 200, src
    head = requests.head(server.url + "/", timeout=10)
    assert head.status_code == 200
    assert head.headers["Content-Security-Policy"] == CSP


# ============================================================ a server restart mid-upload


def test_two_files_finish_across_a_server_restart(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    config = tmp_path / "formforge.yaml"
    config.write_text("events:\n  progress_interval_ms: 100\n")
    server = start_server(args=["--config", str(config)])
    sources = {
        "first.bin": random_file(tmp_path / "first.bin", 24 * MiB),
        "second.bin": random_file(tmp_path / "second.bin", 16 * MiB),
    }
    ui = PageUnderTest(browser, f"{server.url}/?chunkSize={256 * KiB}")
    ui.page.set_input_files("#file-input", [str(path) for path in sources.values()])

    # Let a quarter of a file reach the server, then kill the server under the uploads.
    def a_quarter_confirmed(rows: Rows) -> bool:
        return len(rows) == 2 and any(row["confirmed"] >= row["max"] / 4 for row in rows)

    before = ui.sample_until(a_quarter_confirmed, STEP_TIMEOUT, server.log_tail)
    server.kill()
    ui.page.wait_for_selector('#connection[data-connected="false"]', timeout=STEP_TIMEOUT * 1000)
    at_kill = by_name(ui.rows())
    assert all(row["state"] != "complete" for row in at_kill.values()), at_kill
    ui.screenshot(tmp_path / "page-server-down.png")
    server.restart()

    def all_complete(rows: Rows) -> bool:
        return all(row["state"] == "complete" for row in rows)

    after = ui.sample_until(all_complete, FINISH_TIMEOUT, server.log_tail)
    final = by_name(after[-1])

    for name, source in sources.items():
        data = source.read_bytes()
        row = final[name]
        # The page shows the sha256 the server computed, and it is the source's.
        assert row["sha256"] == sha256_of(data), name
        download = requests.get(row["url"], timeout=30)
        assert download.status_code == 200
        assert sha256_of(download.content) == sha256_of(data), name
        assert (server.data_dir / f"{row['id']}.bin").read_bytes() == data

        # The server-confirmed mark moved while the upload ran, not only at its end.
        confirmed = [by_name(rows)[name]["confirmed"] for rows in before + after]
        moving = {value for value in confirmed if 0 < value < len(data)}
        assert len(moving) >= 2, (name, sorted(moving))

        # Resumed, not restarted: the same upload, and nothing confirmed was lost.
        assert row["id"] == at_kill[name]["id"]
        later = [by_name(rows)[name]["confirmed"] for rows in after]
        assert min(later) >= at_kill[name]["confirmed"], (name, at_kill[name], later[:5])

    assert len(list(server.data_dir.glob("*.bin"))) == 2, "a resume created no new upload"
    assert ui.problems == []
    ui.screenshot(tmp_path / "page.png")


# ============================================================ keyboard, phone, pause, reload


def test_keyboard_pause_cancel_and_resume_after_reload_on_a_phone(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    server = start_server()
    keep = random_file(tmp_path / "keep.bin", 12 * MiB)
    drop = random_file(tmp_path / "drop.bin", 12 * MiB)
    url = f"{server.url}/?chunkSize={64 * KiB}"
    ui = PageUnderTest(browser, url, width=390, height=844)
    page = ui.page

    # The drop zone is the first stop of the Tab key, and Enter opens the file picker.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files([str(keep), str(drop)])

    def both_started(rows: Rows) -> bool:
        return len(rows) == 2 and all(row["id"] and row["confirmed"] > 0 for row in rows)

    ui.sample_until(both_started, STEP_TIMEOUT, server.log_tail)

    # Pause one with the keyboard: the same button, still focused, now offers Resume.
    page.get_by_role("button", name="Pause keep.bin").focus()
    page.keyboard.press("Space")
    page.wait_for_selector('#uploads > li[data-state="paused"]', timeout=STEP_TIMEOUT * 1000)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Resume keep.bin"

    # Cancel the other: the upload is terminated on the server.
    page.get_by_role("button", name="Cancel drop.bin").click()
    page.wait_for_selector('#uploads > li[data-state="cancelled"]', timeout=STEP_TIMEOUT * 1000)
    dropped = by_name(ui.rows())["drop.bin"]
    gone = 0
    deadline = time.monotonic() + STEP_TIMEOUT
    while gone not in (404, 410) and time.monotonic() < deadline:
        head = requests.head(
            f"{server.files_url}{dropped['id']}", headers={"Tus-Resumable": "1.0.0"}, timeout=10
        )
        gone = head.status_code
    assert gone in (404, 410)

    # Nothing may be wider than a phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    ui.screenshot(tmp_path / "page-phone.png")

    # A reload forgets the File; adding it again resumes the same upload where it stopped.
    paused = by_name(ui.rows())["keep.bin"]
    assert 0 < paused["confirmed"] < keep.stat().st_size
    ui.open(url)
    assert "keep.bin" in page.locator("#earlier-list").inner_text()
    page.set_input_files("#file-input", [str(keep)])

    def finished(rows: Rows) -> bool:
        return len(rows) == 1 and rows[0]["state"] == "complete"

    samples = ui.sample_until(finished, FINISH_TIMEOUT, server.log_tail)
    resumed = samples[-1][0]
    assert resumed["id"] == paused["id"]
    # 0 until the room's first uploadProgress; never less than what was confirmed before.
    lost = [
        rows[0]["confirmed"] for rows in samples if 0 < rows[0]["confirmed"] < paused["confirmed"]
    ]
    assert lost == []
    assert resumed["sha256"] == sha256_of(keep.read_bytes())
    assert ui.problems == []


# ============================================================ uploadError


def test_an_upload_deleted_elsewhere_shows_the_servers_error(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    server = start_server()
    source = random_file(tmp_path / "doomed.bin", 16 * MiB)
    ui = PageUnderTest(browser, f"{server.url}/?chunkSize={64 * KiB}")
    ui.page.set_input_files("#file-input", [str(source)])

    def started(rows: Rows) -> bool:
        return len(rows) == 1 and rows[0]["confirmed"] > 0

    ui.sample_until(started, STEP_TIMEOUT, server.log_tail)
    ui.page.get_by_role("button", name="Pause doomed.bin").click()
    upload_id = ui.rows()[0]["id"]
    deleted = requests.delete(
        f"{server.files_url}{upload_id}", headers={"Tus-Resumable": "1.0.0"}, timeout=10
    )
    assert deleted.status_code == 204

    # The room's uploadError: its message, and that it will not retry.
    def told(rows: Rows) -> bool:
        return "It will not retry." in rows[0]["error"]

    row = ui.sample_until(told, STEP_TIMEOUT, server.log_tail)[-1][0]
    assert "terminated" in row["error"], row
    assert row["state"] == "paused"

    # Resume: tus-js-client finds the upload gone (410) and starts a new one.
    ui.page.get_by_role("button", name="Resume doomed.bin").click()

    def complete(rows: Rows) -> bool:
        return bool(rows[0]["state"] == "complete")

    row = ui.sample_until(complete, FINISH_TIMEOUT, server.log_tail)[-1][0]
    assert row["id"] != upload_id
    assert row["sha256"] == sha256_of(source.read_bytes())
    assert row["error"] == ""
    assert ui.problems == []


# ============================================================ chunks that follow the link


def test_under_a_bandwidth_cap_the_pages_chunks_get_smaller(
    start_server: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    config = tmp_path / "formforge.yaml"
    config.write_text(f"limits:\n  bandwidth_per_upload: {3 * MiB}\n")
    server = start_server(args=["--config", str(config)])
    source = random_file(tmp_path / "thin.bin", 14 * MiB)
    # No `?chunkSize=` (which fixes the size): the page starts at its data-chunk-size.
    ui = PageUnderTest(browser, server.url + "/")
    offsets: list[int] = []  # where each PATCH started: the chunk sizes, as sent

    def record_patch(request: Any) -> None:
        if request.method == "PATCH":
            offsets.append(int(request.headers["upload-offset"]))

    ui.page.on("request", record_patch)
    ui.page.set_input_files("#file-input", [str(source)])

    def complete(rows: Rows) -> bool:
        return len(rows) == 1 and rows[0]["state"] == "complete"

    row = ui.sample_until(complete, FINISH_TIMEOUT, server.log_tail)[-1][0]
    assert row["sha256"] == sha256_of(source.read_bytes())
    ends = [*offsets[1:], source.stat().st_size]
    sizes = [end - start for start, end in zip(offsets, ends, strict=True)]
    # 8 MiB took about 2.7 s at 3 MiB/s; two seconds of that rate is 6 MiB, rounded down to
    # 4 MiB, which is again what 4 MiB in 1.3 s advises; the last 2 MiB follow. With a fixed
    # chunk size the second chunk would be the last 6 MiB.
    assert sizes == [8 * MiB, 4 * MiB, 2 * MiB], sizes
    assert ui.problems == []
