"""Starting write-back early (fsync on): the kernel takes the request; data is unchanged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from formforge.stores.writeback import start_writeback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_kernel_takes_a_writeback_request_for_bytes_just_written(tmp_path: Path) -> None:
    body = os.urandom(4 * 1024 * 1024)
    fd = os.open(tmp_path / "data.bin", os.O_WRONLY | os.O_CREAT)
    try:
        os.pwrite(fd, body, 0)
        assert start_writeback(fd, 0, len(body))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert (tmp_path / "data.bin").read_bytes() == body


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_a_refused_request_is_false_not_an_error() -> None:
    assert not start_writeback(-1, 0, 1)
