"""Uploads through a lossy network finish, every byte stored exactly once:

    Two unmodified tus clients (tuspy and tus-js-client), with their own retries, each
    upload 50 MiB to a real `formforge serve` over a link that drops 10 % of the client's
    packets and delays the rest by 150 ms, while their connections are reset every few
    seconds (`ss -K`, alternately on the client's and on the server's side). Both finish;
    the download's sha256 is the source's; the server stored every byte exactly once.

The network is built by `tools/lossy_upload.py` (the same code runs there as a script, for
the heavy variants): two fresh network namespaces, the server bound to its own namespace's
address only, joined by a user-space wire with the loss and delay of
`tc qdisc add ... netem loss 10% delay 150ms` (a kernel without `sch_netem` cannot run that
line; the wire also counts TCP's retransmissions). Everything is removed afterwards, also on
failure. Skipped, with the reason, where network namespaces cannot be made (not root, no
`/dev/net/tun`, no iproute2).

The client's congestion control is BBR where the kernel allows it (a loss-based one, such as
CUBIC or Reno, manages ~30 KiB/s at 10 % loss, so 50 MiB would take ~25 minutes per client);
without BBR the test uploads FALLBACK_SIZE instead, and says so. Measured per client and
printed (`-s`): wall time, resets, bytes stored, bytes re-sent, TCP retransmissions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
SIZE = 50 * MiB
FALLBACK_SIZE = 1 * MiB  # when the client's TCP must be loss-based (no BBR)
LOSS = 0.10
DELAY = 0.150
SEED = 20240601
CHUNK_SIZE = 8 * MiB
RESET_EVERY = 3.0
MAX_RESETS = 6  # per upload
TEST_DEADLINE = 240.0  # both uploads, the whole module
CLIENT_TIMEOUT = 110.0  # one upload


def _load_tool() -> ModuleType:
    path = ROOT / "tools" / "lossy_upload.py"
    spec = importlib.util.spec_from_file_location("lossy_upload", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


lossy = _load_tool()


def _congestion_control() -> tuple[str, int]:
    """BBR if a namespace may choose it (it is then the size of the issue: 50 MiB)."""
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
    if allowed.exists() and "bbr" in allowed.read_text().split():
        return "bbr", SIZE
    return "default", FALLBACK_SIZE


@pytest.fixture(scope="module")
def started() -> float:
    return time.monotonic()


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, started: float
) -> Iterator[tuple[Any, Path, str]]:
    """The lab (namespaces, wire, server) and the source file; torn down however it ends."""
    reason = lossy.netns_unavailable()
    if reason:
        pytest.skip(f"no lossy network here: {reason}")
    cc, size = _congestion_control()
    workdir = tmp_path_factory.mktemp("lossy")
    workdir.chmod(0o755)
    source, sha256 = lossy.make_source(workdir, size, SEED)
    if size != SIZE:
        print(f"\nno BBR for the client namespace: uploading {size} bytes, not {SIZE}")
    with lossy.lossy_lab(workdir, LOSS, DELAY, SEED, cc) as server:
        yield server, source, sha256
        log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]


@pytest.mark.slow
@pytest.mark.parametrize("client", ["tuspy", "tus-js-client"])
def test_upload_survives_loss_delay_and_resets(
    setup: tuple[Any, Path, str], started: float, client: str, record_property: Any
) -> None:
    server, source, sha256 = setup
    if client == "tus-js-client" and (
        shutil.which("node") is None or not lossy.JS_MODULES.exists()
    ):
        pytest.skip("tus-js-client needs node and `npm ci --prefix tests/js`")
    remaining = TEST_DEADLINE - (time.monotonic() - started)
    assert remaining > 20, "no time left in the module's deadline for this upload"

    result = lossy.upload_through(
        server,
        client,
        source,
        sha256,
        CHUNK_SIZE,
        RESET_EVERY,
        MAX_RESETS,
        min(CLIENT_TIMEOUT, remaining),
    )
    summary = {**result.summary(), "congestion_control": server.lab.congestion_control}
    print("\n" + json.dumps(summary))
    record_property("lossy_network", summary)
    server_log = "".join(server.log[-40:])

    assert result.ok, (
        f"{client} did not finish in {result.seconds:.0f} s:\n{result.output}\n"
        f"--- server log ---\n{server_log}"
    )
    size = source.stat().st_size
    assert result.sha256_match, "the download is not the source"
    assert result.status["state"] == "complete", result.status
    assert result.status["sha256"] == sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    # Every byte that reached the server was kept, and none was stored twice.
    assert result.stored_bytes == size, (result.stored_bytes, size)
    # The faults really happened: connections were reset, and the wire lost ~10 %.
    assert result.resets >= 1, "the upload ended before any connection was reset"
    assert 0.05 < result.dropped_packets / result.client_packets < 0.15, summary
    health = server.fetch("")
    assert health["healthz"] == 200
    assert "Traceback" not in "".join(server.log), server_log
