"""The uploader page shows the processing stage in each row, in Debian's chromium.

A real post-finish Python hook (tests/hook_reporters.py) reports (25, "indexing") and waits;
the row must say so, then finish once the hook is let go. Every wait has a deadline; the
browser stays on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.hook_reporters import PythonEnd
from tests.system.test_page import (  # noqa: F401 -- `browser` is the fixture
    STEP_TIMEOUT,
    PageUnderTest,
    browser,
    random_file,
)

pytestmark = pytest.mark.slow

FIGURES_JS = """(name) => {
  const row = [...document.querySelectorAll('#uploads > li')]
    .find((li) => li.querySelector('.upload-name').textContent === name);
  return row ? {state: row.dataset.state,
                figures: row.querySelector('.upload-figures').textContent} : null;
}"""


def test_a_row_shows_the_processing_stage_and_what_the_hook_reports(
    start_server: Callable[..., Any],
    browser: Any,  # noqa: F811 -- the fixture imported from test_page
    tmp_path: Path,
) -> None:
    end = PythonEnd(tmp_path)
    config = tmp_path / "formforge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "events": {"progress_interval_ms": 100},
                "hooks": {"timeout_seconds": 60, "post_finish": [end.target()]},
            }
        )
    )
    server = start_server(args=["--config", str(config)], env=end.env)
    source = random_file(tmp_path / "report.pdf", 300 * 1024)
    ui = PageUnderTest(browser, server.url + "/")
    try:
        ui.page.set_input_files("#file-input", [str(source)])
        ui.page.wait_for_function(
            f"() => ({FIGURES_JS})('report.pdf')?.figures.includes('25 % — indexing')",
            timeout=STEP_TIMEOUT * 1000,
        )
        row = ui.page.evaluate(FIGURES_JS, "report.pdf")
        assert row["state"] == "processing", row
        assert "Processing" in row["figures"], row
        ui.screenshot(tmp_path / "page-processing.png")
    finally:
        end.close()  # the hook goes on and returns
    ui.page.wait_for_function(
        f"() => ({FIGURES_JS})('report.pdf')?.state === 'complete'",
        timeout=STEP_TIMEOUT * 1000,
    )
    assert ui.problems == []
