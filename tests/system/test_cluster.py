"""Three nodes behind nginx, on one Redis and one S3 bucket; one node dies mid-upload.

What it specifies: "One writer" across nodes (a lock held by a node that died is free
again within 10 seconds) and Socket.IO events from every node. Everything is real and on
127.0.0.1:

- `redis-server` (tests/redis_server.py) for locks and Socket.IO fan-out;
- SeaweedFS (tests/seaweed.py), with a bucket of this test's own, for the bytes;
- three `formforge serve` nodes, each with a local data dir of its own (locks only) and the
  same config: `storage.backend: s3`, `cluster.redis_url`, and `server.public_url` pointing
  at nginx, so `Location` headers and event URLs name the one public address;
- Debian's nginx in the foreground, rendered from tests/cluster_nginx.conf.template (the
  config docs/deploy.md shows): round-robin, request bodies streamed, dead nodes skipped.

tuspy (2 MiB chunks) and tus-js-client (tests/js/tus-upload.mjs, 1 MiB chunks) each upload
40 MiB through nginx. A Socket.IO watcher is connected straight to node 0 and joins each
upload's room as soon as its id is known. Once both uploads are under way, the node holding
an upload's lock (read from Redis; never node 0) is killed with SIGKILL, in the middle of a
PATCH. Both uploads must finish through the surviving nodes with the right sha256 (downloaded
through nginx), and the watcher on node 0 must have seen progress that other nodes stored and
each `uploadComplete`.

Each node's bandwidth per upload is capped, so that an upload lasts a few seconds and the kill
lands mid-upload; nothing else depends on it.

The figures (bytes re-sent after the kill, time lost to the dead node's lock) are printed as
one JSON line starting with `CLUSTER-RESULT` (`pytest -s` shows it) and attached to the test's
report as the `cluster_result` property. They come from nginx's access log (bytes each PATCH
carried, which node answered, the offsets before and after) and, for tuspy, from the bytes it
read from the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import socketio
from redis.asyncio import Redis
from tusclient.client import TusClient

from formforge.locks.redis import KEY_PREFIX
from tests.conftest import JS_DIR, ServerProcess
from tests.redis_server import free_port, redis_url_fixture  # noqa: F401
from tests.seaweed import Seaweed, create_bucket, seaweed_fixture  # noqa: F401

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
TESTS = Path(__file__).resolve().parents[1]
TEMPLATE = TESTS / "cluster_nginx.conf.template"
DEPLOY_GUIDE = TESTS.parent / "docs" / "deploy.md"

MIB = 1024 * 1024
SIZE = 40 * MIB
NODES = 3
WATCHED = 0  # the node the Socket.IO watcher is connected to: never the victim
TUSPY_CHUNK = 2 * MIB
JS_CHUNK = 1 * MIB
PART_SIZE = 5 * MIB
BANDWIDTH = 8 * MIB  # bytes/s per upload per node: an upload lasts seconds, not a blink
# Clients retry for longer than the dead node's lease (5 s): about 12 s each.
TUSPY_RETRIES, TUSPY_RETRY_DELAY = 48, 0.25
JS_RETRY_DELAYS = "0,250,500,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,1000"

LOCK_FREED_WITHIN = 10.0  # CONTRACT.md: a lock held by a node that died
KILL_AFTER = 0.25  # fraction of both uploads stored before a node is killed
VICTIM_SEARCH = 3.0  # seconds to look for a node holding both uploads' locks
SCENARIO_TIMEOUT = 100.0  # the whole run, start-up excluded
STEP_TIMEOUT = 60.0  # an upload, a download
EVENT_TIMEOUT = 20.0  # uploadComplete after the last byte (sha256 of 40 MiB read from S3)
NGINX_START_TIMEOUT = 10.0


# -- nginx -----------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    """Debian installs it in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render_nginx_conf(listen: str, servers: list[str]) -> str:
    """The template with its two placeholders filled in: nothing else differs."""
    upstreams = "\n".join(f"        server {server};" for server in servers)
    text = TEMPLATE.read_text()
    text = text.replace("{{listen}}", listen).replace("{{upstream_servers}}", upstreams)
    assert "{{" not in text, "an unknown placeholder in the nginx template"
    return text


@dataclass
class Nginx:
    binary: str
    prefix: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def start(self, servers: list[str]) -> Nginx:
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        (self.prefix / "temp").mkdir(exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_nginx_conf(f"{HOST}:{self.port}", servers))
        command = [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.error_log)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, f"nginx -t refused the config:\n{check.stderr}"
        self.proc = subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + NGINX_START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited:\n{self.error_log_tail()}"
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not answer:\n{self.error_log_tail()}")

    def stop(self) -> None:
        """SIGQUIT is nginx's graceful stop; the group is killed if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGQUIT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def access_log(self) -> list[dict[str, Any]]:
        path = self.prefix / "logs" / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def error_log_tail(self, lines: int = 30) -> str:
        if not self.error_log.exists():
            return "(no error log)"
        return "\n".join(self.error_log.read_text().splitlines()[-lines:])


# -- the clients -----------------------------------------------------------------------------


class CountingFile(io.FileIO):
    """The file tuspy reads each chunk from: counts every byte it reads to send."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data or b"")
        return data


@dataclass
class TuspyRun:
    """tuspy in a daemon thread (it blocks; a hung run must not hold up interpreter exit)."""

    endpoint: str
    path: Path
    url: concurrent.futures.Future[str] = field(default_factory=concurrent.futures.Future)
    done: concurrent.futures.Future[str] = field(default_factory=concurrent.futures.Future)
    stream: CountingFile | None = None

    def start(self) -> TuspyRun:
        threading.Thread(target=self._run, name="tuspy", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            self.stream = CountingFile(self.path)
            uploader = TusClient(self.endpoint).uploader(
                file_stream=self.stream,
                chunk_size=TUSPY_CHUNK,
                retries=TUSPY_RETRIES,
                retry_delay=TUSPY_RETRY_DELAY,  # typed int, but handed to time.sleep()
                metadata={"filename": self.path.name},
            )
            uploader.set_url(uploader.create_url())
            self.url.set_result(cast(str, uploader.url))  # tuspy types it as its default, None
            uploader.upload()
            self.done.set_result(cast(str, uploader.url))
        except BaseException as error:
            for future in (self.url, self.done):
                if not future.done():
                    future.set_exception(error)
        finally:
            if self.stream is not None:
                self.stream.close()


@dataclass
class JsRun:
    """tests/js/tus-upload.mjs (the real tus-js-client), its upload URL read from --verbose."""

    process: asyncio.subprocess.Process
    url: asyncio.Future[str]
    stderr: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, node: str, endpoint: str, path: Path) -> JsRun:
        process = await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "tus-upload.mjs"), "--endpoint", endpoint, "--file", str(path),
            "--chunk-size", str(JS_CHUNK), "--retry-delays", JS_RETRY_DELAYS, "--verbose",
            cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        run = cls(process, asyncio.get_running_loop().create_future())
        run.reader = asyncio.create_task(run._read_stderr())
        return run

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode().rstrip()
            self.stderr.append(line)
            if line.startswith("upload-url ") and not self.url.done():
                self.url.set_result(line.split(" ", 1)[1])
        if not self.url.done():
            self.url.set_exception(RuntimeError("tus-upload.mjs ended without an upload URL"))

    async def finished(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        out = await self.process.stdout.read()
        status = await self.process.wait()
        if self.reader is not None:
            await self.reader
        assert status == 0, f"tus-upload.mjs exited {status}:\n" + "\n".join(self.stderr[-20:])
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


@dataclass
class Watcher:
    """A Socket.IO client on one node: every upload event it receives, with its time."""

    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(reconnection=False)
    )
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    disconnected: bool = False

    def __post_init__(self) -> None:
        for name in ("uploadProgress", "uploadComplete", "uploadError"):
            self.sio.on(name, self._recorder(name))
        self.sio.on("disconnect", self._on_disconnect)

    def _recorder(self, name: str) -> Callable[[dict[str, Any]], None]:
        def record(payload: dict[str, Any]) -> None:
            self.events.append((time.time(), name, payload))

        return record

    def _on_disconnect(self, *_: Any) -> None:
        self.disconnected = True

    async def connect(self, url: str) -> None:
        await asyncio.wait_for(self.sio.connect(url, transports=["websocket"]), 10)

    async def join(self, upload_id: str) -> None:
        ack = await self.sio.call("joinUploadRoom", upload_id, timeout=5)
        assert ack == {"ok": True, "room": f"upload:{upload_id}"}, ack

    def of(self, name: str, upload_id: str) -> list[dict[str, Any]]:
        return [p for _, n, p in self.events if n == name and p.get("uploadId") == upload_id]

    def stored(self, upload_id: str) -> int:
        return max((p["offset"] for p in self.of("uploadProgress", upload_id)), default=0)

    async def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)


# -- the cluster -----------------------------------------------------------------------------


@dataclass
class Cluster:
    nodes: list[ServerProcess]
    nginx: Nginx
    redis_url: str
    locker_ids: dict[str, int] = field(default_factory=dict)  # Redis locker id -> node

    def address(self, index: int) -> str:
        return f"{HOST}:{self.nodes[index].port}"

    def node_of(self, upstream: str) -> int | None:
        """The node that answered, from nginx's $upstream_addr (the last one it tried)."""
        last = upstream.split(",")[-1].strip()
        for index in range(len(self.nodes)):
            if last == self.address(index):
                return index
        return None

    def learn_locker_ids(self) -> None:
        """Each node logs its Redis locker's id at start: the lock keys' values name it."""
        for index, node in enumerate(self.nodes):
            found = re.findall(r"redis locker started locker_id=([0-9a-f]+)", "".join(node.output))
            assert found, f"node {index} did not log its locker id:\n{node.log_tail()}"
            self.locker_ids[found[-1]] = index

    async def lock_holders(self, redis: Redis, upload_ids: list[str]) -> list[int | None]:
        values = await redis.mget([KEY_PREFIX + upload_id for upload_id in upload_ids])
        holders: list[int | None] = []
        for value in values:
            text = value.decode() if isinstance(value, bytes) else value
            locker = text.partition(" ")[0] if text else None
            holders.append(self.locker_ids.get(locker) if locker else None)
        return holders


def bytes_received(url: str) -> int:
    """A node's formforge_bytes_received_total: bytes it stored (counted when a write ends)."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    found = re.search(r"^formforge_bytes_received_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, text
    return int(float(found.group(1)))


def make_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(SIZE // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def download_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=STEP_TIMEOUT) as response:
        assert response.status_code == 200, (response.status_code, response.text[:300])
        for block in response.iter_content(MIB):
            digest.update(block)
    return digest.hexdigest()


def cluster_config(seaweed: Seaweed, redis_url: str, public_url: str) -> str:
    s3 = {
        "bucket": seaweed.bucket,
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
        "access_key": seaweed.access_key,
        "secret_key": seaweed.secret_key,
        "part_size": PART_SIZE,
        "prefix": "uploads/",
    }
    config = {
        "server": {"public_url": public_url},
        "storage": {"backend": "s3", "s3": s3},
        "cluster": {"redis_url": redis_url},
        "limits": {"bandwidth_per_upload": BANDWIDTH},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


@pytest.fixture(name="nginx_path")
def nginx_path_fixture() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return binary


@pytest.fixture(name="cluster")
def cluster_fixture(
    nginx_path: str,
    redis_url: str,
    seaweed: Seaweed,
    start_server: Callable[..., ServerProcess],
    tmp_path: Path,
) -> Iterator[Cluster]:
    own_bucket = dataclasses.replace(seaweed, bucket=f"cluster-{secrets.token_hex(4)}")
    create_bucket(own_bucket)
    nginx = Nginx(nginx_path, tmp_path / "nginx", free_port())
    config = tmp_path / "cluster.yaml"
    config.write_text(cluster_config(own_bucket, redis_url, nginx.url))
    nodes: list[ServerProcess] = []
    try:
        for index in range(NODES):
            nodes.append(
                start_server(args=["--config", str(config)], data_dir=tmp_path / f"node{index}")
            )
        nginx.start([f"{HOST}:{node.port}" for node in nodes])
        cluster = Cluster(nodes, nginx, redis_url)
        cluster.learn_locker_ids()
        yield cluster
    finally:
        nginx.stop()
        for index, node in enumerate(nodes):
            node.kill()  # start_server's teardown does it too; a killed node is a no-op
            (tmp_path / f"node{index}.log").write_text("".join(node.output))


# -- the test --------------------------------------------------------------------------------


@dataclass
class Upload:
    client: str
    path: Path
    sha256: str
    url: str = ""

    @property
    def id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def test_uploads_survive_a_node_killed_mid_upload(
    node: str, cluster: Cluster, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    tuspy_up = Upload("tuspy", tmp_path / "tuspy.bin", "")
    js_up = Upload("tus-js-client", tmp_path / "tus-js.bin", "")
    for upload in (tuspy_up, js_up):
        upload.sha256 = make_file(upload.path)
    result = asyncio.run(
        asyncio.wait_for(scenario(cluster, node, tuspy_up, js_up), SCENARIO_TIMEOUT)
    )
    line = json.dumps(result, sort_keys=True)
    print(f"CLUSTER-RESULT {line}")
    record_property("cluster_result", line)


async def scenario(cluster: Cluster, node: str, tuspy_up: Upload, js_up: Upload) -> dict[str, Any]:
    nodes, nginx = cluster.nodes, cluster.nginx
    endpoint = f"{nginx.url}/files/"
    watcher = Watcher()
    redis = Redis.from_url(cluster.redis_url)
    tuspy_run: TuspyRun | None = None
    js_run: JsRun | None = None
    try:
        await watcher.connect(nodes[WATCHED].url)

        # Both clients start; the watcher joins each room as soon as the upload's id is known
        # (the join snapshot covers anything stored before).
        tuspy_run = TuspyRun(endpoint, tuspy_up.path).start()
        tuspy_up.url = await asyncio.wait_for(asyncio.wrap_future(tuspy_run.url), 10)
        js_run = await JsRun.start(node, endpoint, js_up.path)
        js_up.url = await asyncio.wait_for(js_run.url, 10)
        uploads = [tuspy_up, js_up]
        for upload in uploads:
            assert upload.url.startswith(f"{endpoint}"), f"Location is not nginx's: {upload.url}"
            await watcher.join(upload.id)
        await socketio_through_nginx_works(nginx.url, tuspy_up.id)

        # Under way: then kill a node that holds a lock, never the watcher's.
        await watcher.until(
            lambda: all(watcher.stored(u.id) >= KILL_AFTER * SIZE for u in uploads),
            STEP_TIMEOUT,
            "both uploads to get under way",
        )
        victim, held = await choose_victim(cluster, redis, [u.id for u in uploads])
        stored_at_kill = {u.id: watcher.stored(u.id) for u in uploads}
        killed_at = time.time()
        nodes[victim].kill()

        # Both finish through the other nodes.
        await asyncio.wait_for(asyncio.wrap_future(tuspy_run.done), STEP_TIMEOUT)
        js_result = await asyncio.wait_for(js_run.finished(), STEP_TIMEOUT)
        assert js_result == {"url": js_up.url, "bytes": SIZE}

        def completed(upload_id: str) -> Callable[[], bool]:
            return lambda: bool(watcher.of("uploadComplete", upload_id))

        for upload in uploads:
            await watcher.until(
                completed(upload.id),
                EVENT_TIMEOUT,
                f"uploadComplete of the {upload.client} upload on node {WATCHED}",
            )
        for upload in uploads:
            got = await asyncio.to_thread(download_sha256, upload.url)
            assert got == upload.sha256, f"{upload.client}: downloaded bytes differ"
            complete = watcher.of("uploadComplete", upload.id)
            assert len(complete) == 1, complete
            assert complete[0]["sha256"] == upload.sha256
            assert complete[0]["size"] == SIZE
            assert complete[0]["url"] == upload.url
            assert not watcher.of("uploadError", upload.id) or all(
                e["retryable"] for e in watcher.of("uploadError", upload.id)
            ), watcher.of("uploadError", upload.id)
        assert not watcher.disconnected, "the watcher's node went away"

        # What nginx saw: the fan-out, the kill, and the bytes it cost.
        log = nginx.access_log()
        figures = {}
        for upload in uploads:
            figures[upload.client] = account(cluster, log, upload, victim, killed_at, watcher)
        # The metrics count bytes stored, once each: on a surviving node, exactly what the
        # PATCHes it answered 204 carried; the victim's figure died with it (nginx's stands).
        stored = {str(i): sum(f["storedByNode"].get(str(i), 0) for f in figures.values())
                  for i in range(len(nodes))}  # fmt: skip
        assert sum(stored.values()) == len(uploads) * SIZE, stored
        for index in (i for i in range(len(nodes)) if i != victim):
            metric = bytes_received(nodes[index].url)
            assert metric == stored[str(index)], (index, metric, stored)
        assert tuspy_run.stream is not None
        tuspy_read = tuspy_run.stream.bytes_read
        figures["tuspy"]["clientBytesRead"] = tuspy_read
        figures["tuspy"]["clientResent"] = tuspy_read - SIZE
        cut = [f for f in figures.values() if f["cutByKill"]]
        assert cut, f"the kill cut no PATCH of ours: {figures}"
        for one in cut:  # the dead node's lock freed in time (plus a retry's delay)
            assert one.get("secondsToFirstStoredPatchAfterKill", 0) < LOCK_FREED_WITHIN + 2, one
        return {
            "fileSize": SIZE,
            "nodes": NODES,
            "victim": victim,
            "victimHeldLocksOf": [u.client for u, h in zip(uploads, held, strict=True) if h],
            "watchedNode": WATCHED,
            "storedAtKill": {u.client: stored_at_kill[u.id] for u in uploads},
            "bytesStoredByNode": stored,
            "resentTotal": sum(f["resentAttempted"] for f in figures.values()),
            "uploads": figures,
        }
    finally:
        if js_run is not None:
            js_run.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher.sio.disconnect(), 5)
        await redis.aclose()


async def socketio_through_nginx_works(public_url: str, upload_id: str) -> None:
    """The template's /socket.io/ location: a WebSocket through nginx joins a room."""
    through = Watcher()
    try:
        await through.connect(public_url)
        await through.join(upload_id)
        await through.until(
            lambda: bool(through.of("uploadProgress", upload_id)), 5, "the join snapshot"
        )
    finally:
        await asyncio.wait_for(through.sio.disconnect(), 5)


async def choose_victim(
    cluster: Cluster, redis: Redis, upload_ids: list[str]
) -> tuple[int, list[bool]]:
    """A node (not the watcher's) holding an upload's lock right now: one in the middle of
    a PATCH (a lock is taken before a body is read and let go before the answer). One that
    holds both uploads' locks if that happens within `VICTIM_SEARCH`, else any such node."""
    deadline = time.monotonic() + VICTIM_SEARCH
    while True:
        holders = await cluster.lock_holders(redis, upload_ids)
        candidates = sorted({h for h in holders if h is not None and h != WATCHED})
        for candidate in candidates:
            held = [holder == candidate for holder in holders]
            if all(held) or time.monotonic() > deadline:
                return candidate, held
        assert time.monotonic() < deadline + STEP_TIMEOUT, "no node but the watcher's held a lock"
        await asyncio.sleep(0.005)


def account(
    cluster: Cluster,
    log: list[dict[str, Any]],
    upload: Upload,
    victim: int,
    killed_at: float,
    watcher: Watcher,
) -> dict[str, Any]:
    """One upload's PATCHes as nginx logged them: what they carried and what it cost."""
    path = f"/files/{upload.id}"
    patches = [e for e in log if e["method"] == "PATCH" and e["uri"].rstrip("/") == path]
    assert patches, f"nginx logged no PATCH for {upload.client}"
    ok = [e for e in patches if e["status"] == 204]
    failed = [e for e in patches if e["status"] != 204]
    # The request the kill cut (if this upload had one on the victim).
    cut = [
        e
        for e in failed
        if cluster.node_of(e["upstream"]) == victim and e["msec"] >= killed_at - 0.5
    ]
    # Who stored what: every 204 stored its whole body, once; together with what the cut
    # request stored before its node died (it never answered), they are the file, in order.
    by_node: dict[str, int] = {}
    unanswered = 0

    def credit(index: int | None, count: int) -> None:
        by_node[str(index)] = by_node.get(str(index), 0) + count

    def stored_by_cut(start: int, end: int) -> None:
        nonlocal unanswered
        assert any(
            int(c["uploadOffset"]) == start and start + int(c["contentLength"]) >= end for c in cut
        ), f"{upload.client}: bytes {start}-{end} were stored by no request:\n" + "\n".join(
            json.dumps(e) for e in patches
        )
        credit(victim, end - start)
        unanswered += end - start

    position = 0
    for entry in sorted(ok, key=lambda e: int(e["uploadOffset"])):
        start, end = int(entry["uploadOffset"]), int(entry["upstreamUploadOffset"])
        assert start >= position, f"{upload.client}: bytes from {start} stored twice"
        assert end - start == int(entry["contentLength"]), entry
        if start > position:
            stored_by_cut(position, start)
        credit(cluster.node_of(entry["upstream"]), end - start)
        position = end
    if position < SIZE:
        stored_by_cut(position, SIZE)
    # Headers' size, to tell the body bytes a cut request carried: the same on every PATCH
    # of one client, give or take the digits of Upload-Offset.
    header = int(statistics.median(e["requestLength"] - int(e["contentLength"]) for e in ok))

    def body_bytes(entry: dict[str, Any]) -> int:
        return max(0, min(int(entry["contentLength"]), int(entry["requestLength"]) - header))

    attempted = sum(int(e["contentLength"] or 0) for e in patches)
    transmitted = sum(body_bytes(e) for e in patches)

    # The fan-out: the watcher on node WATCHED saw offsets that other nodes stored.
    seen = {p["offset"] for p in watcher.of("uploadProgress", upload.id)}
    elsewhere = {
        int(e["upstreamUploadOffset"])
        for e in ok
        if cluster.node_of(e["upstream"]) not in (WATCHED, None)
    }
    assert seen & elsewhere, f"{upload.client}: no progress from other nodes reached the watcher"
    assert SIZE in seen, f"{upload.client}: the watcher never saw the last byte stored"

    # What followed the kill: the first request started after it carries the offset the
    # client learnt from HEAD, the durable one.
    after = [e for e in patches if e["msec"] - e["requestTime"] >= killed_at and e not in cut]
    stored_after = [e for e in after if e["status"] == 204]
    figures: dict[str, Any] = {
        "patches": len(patches),
        "failedStatuses": sorted(e["status"] for e in failed),
        "attemptedBytes": attempted,
        "resentAttempted": attempted - SIZE,
        "resentTransmittedEstimate": max(0, transmitted - SIZE),
        "storedByNode": by_node,
        "watcherProgressEvents": len(watcher.of("uploadProgress", upload.id)),
        "cutByKill": bool(cut),
    }
    if cut:
        figures["cutRequestOffset"] = int(cut[0]["uploadOffset"])
        figures["cutRequestBodyBytesEstimate"] = body_bytes(cut[0])
        figures["cutRequestStoredBytes"] = unanswered
    if cut and after:
        first = min(after, key=lambda e: e["msec"] - e["requestTime"])
        durable = int(first["uploadOffset"])
        reached = int(cut[0]["uploadOffset"]) + body_bytes(cut[0])
        figures["durableOffsetAfterKill"] = durable
        figures["lostInFlightEstimate"] = max(0, reached - durable)
        figures["statusesAfterKill"] = [e["status"] for e in sorted(after, key=lambda e: e["msec"])]
    if cut and stored_after:
        first_stored = min(stored_after, key=lambda e: e["msec"] - e["requestTime"])
        figures["secondsToFirstStoredPatchAfterKill"] = round(
            first_stored["msec"] - first_stored["requestTime"] - killed_at, 3
        )
    return figures


def test_deploy_guide_quotes_the_nginx_template_in_full() -> None:
    """docs/deploy.md shows the config this test runs: the template, verbatim."""
    guide = DEPLOY_GUIDE.read_text()
    assert TEMPLATE.read_text().strip() in guide
