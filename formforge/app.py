"""`FormForge`: the one route table and the wiring of every collaborator, for `formforge
serve` and for any Tornado application that mounts FormForge under a prefix."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import socketio
from tornado.routing import PathMatches, Rule
from tornado.web import RedirectHandler

from formforge.auth import TokenCheck
from formforge.config import HookTarget, Settings
from formforge.core.events import EventBus
from formforge.core.hooks import POST_FINISH, POST_TERMINATE, PRE_CREATE
from formforge.core.limits import Limits
from formforge.core.locker import Locker
from formforge.core.service import UploadService
from formforge.core.store import Store
from formforge.fronts import oversized
from formforge.fronts.guard import GuardedApplication
from formforge.fronts.headers import upload_url
from formforge.fronts.hook_progress import HOOK_PROGRESS_PATH, HookProgressHandler
from formforge.fronts.ietf import ietf_routes
from formforge.fronts.rest import RestCreateHandler, RestUploadHandler
from formforge.fronts.site import HealthHandler, IndexHandler, MetricsHandler, SafeStaticFileHandler
from formforge.fronts.throughput import Throughput
from formforge.fronts.tus import TusHandler
from formforge.hooks.runner import HookRunner, Target
from formforge.locks.file import FileLocker
from formforge.locks.memory import MemoryLocker
from formforge.metrics import Metrics
from formforge.realtime.bridge import RealtimeBridge
from formforge.realtime.fanout import LocalFanoutManager
from formforge.realtime.namespace import UploadNamespace, create_socketio
from formforge.stores.file import FileStore

log = logging.getLogger(__name__)

# Tornado hands the body over in pieces of this size: ~1 MiB measured fastest here
# (64 KiB cost 3x the CPU), and it bounds the memory one upload holds.
CHUNK_SIZE = 1024 * 1024

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ID_PATTERN = r"(?P<upload_id>.+?)"  # invalid ids get a tus-style 404 from the handler


@dataclass(frozen=True)
class Role:
    """Which of several worker processes this is. Store recovery runs once, before any worker
    starts (it would cut back another worker's write); resuming processing and sweeping run in
    the leader only, so no upload is processed or expired twice."""

    workers: int = 1
    leader: bool = True
    recover_store: bool = True


class FormForge:
    """FormForge in a Tornado application: its routes under `prefix`, the upload service, and
    the background work beside them (store recovery, the sweeper, resumed processing).

    `application` is a Tornado `Application` holding every route under the prefix (tus and the
    IETF draft at `{prefix}/files/`, REST at `{prefix}/api/files/upload`, Socket.IO at
    `{prefix}/socket.io/`, the page at `{prefix}/`, `{prefix}/healthz`, `{prefix}/metrics`).
    A host application mounts it with `rule()`; `formforge serve` serves it directly. Call
    `start()` once the IOLoop runs and before the first request, `stop()` on the way out.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        prefix: str = "",
        socketio: bool = True,
        role: Role | None = None,
    ) -> None:
        self.settings = settings = settings or Settings()
        self.prefix = _normal_prefix(prefix)
        self.role = role or Role()
        self.bus = EventBus()
        self.metrics = Metrics()
        self.bus.subscribe(self.metrics.on_event)
        hooks = HookRunner(
            _hook_targets(settings),
            settings.hooks.timeout_seconds,
            self.metrics.on_hook,
            progress_url=lambda: f"{self.self_url}{self.prefix}{HOOK_PROGRESS_PATH}",
        )
        self.service = UploadService(
            _store(settings), _locker(settings, self.role), self.bus, _limits(settings), hooks
        )
        self.tokens = TokenCheck.from_setting(settings.auth.bearer_tokens, self.prefix)
        public_url = (
            str(settings.server.public_url).rstrip("/") if settings.server.public_url else None
        )
        self.public_url = public_url
        self.self_url = f"http://{settings.server.host}:{settings.server.port}"
        self.sio = self._socketio() if socketio else None
        front: dict[str, Any] = {
            "service": self.service,
            "throughput": Throughput(),  # what each client's bodies took: REST's chunkSize
            "public_url": public_url,
            "prefix": self.prefix,
            "cors_origins": tuple(settings.server.cors_origins),
        }
        self.application = GuardedApplication(
            self._routes(front),
            self.tokens,
            static_path=str(STATIC_DIR),
            static_url_prefix=f"{self.prefix}/static/",
            static_handler_class=SafeStaticFileHandler,
            log_function=self.metrics.on_request,
            idle_timeout_seconds=settings.server.idle_timeout_seconds,
            receive_low_water=settings.server.receive_low_water,
        )
        self._sweeper: asyncio.Task[None] | None = None

    def rule(self) -> Rule:
        """The one rule that mounts every FormForge route into a host application's table."""
        return Rule(PathMatches(rf"{re.escape(self.prefix)}(/.*)?$"), self.application)

    @property
    def http_options(self) -> dict[str, Any]:
        """Keyword arguments for the host's `HTTPServer` (or `Application.listen`): bodies in
        1 MiB pieces, and header blocks read up to a bound well past FormForge's header limit,
        so one over the limit gets a 431 (`fronts/oversized.py`) instead of Tornado closing
        the connection. Uploads work without them, only slower (Tornado's 64 KiB pieces cost
        ~3x the CPU per byte here) and with Tornado's 64 KiB header limit."""
        limit = oversized.header_limit(self.settings.limits.max_metadata_bytes)
        return {"chunk_size": CHUNK_SIZE, "max_header_size": oversized.header_read_bound(limit)}

    async def start(self, self_url: str | None = None) -> None:
        """Start the background work. `self_url` is where the server listens (for example
        `http://127.0.0.1:8000`), for the absolute URLs in events when `server.public_url`
        is not set; without either, `server.host` and `server.port` make it."""
        if self_url:
            self.self_url = self_url.rstrip("/")
        await self.service.locker.start()
        if self.role.recover_store:
            await self.service.store.recover()
        if self.role.leader:
            resumed = await self.service.processor.resume()
            if resumed:
                log.info("processing resumed uploads=%d", resumed)
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop every write in flight (each keeps what it received), then the background
        work, then let go of locks and the store."""
        await self.service.shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.service.locker.close()
        await self.service.store.close()

    def download_url(self, upload_id: str) -> str:
        """The absolute URL of an upload, as events carry it."""
        return upload_url(f"{self.public_url or self.self_url}{self.prefix}", upload_id)

    def _socketio(self) -> socketio.AsyncServer:
        settings = self.settings
        sio = create_socketio(
            tuple(settings.server.cors_origins), _client_manager(settings, self.role)
        )
        sio.register_namespace(UploadNamespace(self.service, self.tokens))
        self.bus.subscribe(RealtimeBridge(sio, self.download_url).on_event)
        return sio

    def _routes(self, front: dict[str, Any]) -> list[Any]:
        p = re.escape(self.prefix)
        header_limit = oversized.header_limit(self.settings.limits.max_metadata_bytes)
        routes: list[Any] = [
            # Before any front: a header block over the limit is answered 431 (see oversized).
            oversized.oversized_headers_rule(header_limit),
            # The IETF draft (requests with Upload-Draft-Interop-Version) first, then tus.
            *ietf_routes((rf"{p}/files/?", rf"{p}/files/{ID_PATTERN}/?"), front, self.bus),
            (rf"{p}/files/?", TusHandler, front),
            (rf"{p}/files/{ID_PATTERN}/?", TusHandler, front),
            (rf"{p}/api/files/upload/?", RestCreateHandler, front),
            (rf"{p}/api/files/upload/{ID_PATTERN}/?", RestUploadHandler, front),
            (rf"{p}{HOOK_PROGRESS_PATH}(?P<token>[A-Za-z0-9_-]+)", HookProgressHandler, front),
            (rf"{p}/healthz", HealthHandler),
            (rf"{p}/metrics", MetricsHandler, {"metrics": self.metrics}),
            (rf"{p}/", IndexHandler, {"path": STATIC_DIR / "index.html"}),
        ]
        if self.sio is not None:
            routes.append((rf"{p}/socket.io/", socketio.get_tornado_handler(self.sio)))
        if self.prefix:
            # The page's links are relative: it must be seen at `{prefix}/`, with the slash.
            routes.append((p, RedirectHandler, {"url": f"{self.prefix}/"}))
        return routes

    async def _sweep_forever(self) -> None:
        interval = self.settings.expiration.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.service.sweep()
                if removed:
                    log.info("sweep removed=%d", removed)
                # Uploads a dead node or worker was processing: their claims died with it.
                resumed = await self.service.processor.resume()
                if resumed:
                    log.info("processing resumed uploads=%d", resumed)
            except Exception:
                log.exception("sweep failed")


def _normal_prefix(prefix: str) -> str:
    """'' or '/a/b': a leading slash, no trailing one."""
    prefix = prefix.strip("/")
    if not re.fullmatch(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*", prefix) or "//" in prefix:
        raise ValueError(f"not a URL path prefix: {prefix!r}")
    return f"/{prefix}" if prefix else ""


def _store(settings: Settings) -> Store:
    s3 = settings.storage.s3
    if settings.storage.backend == "s3" and s3 is not None:
        # Imported only here: aiobotocore adds ~8 MiB to every process that imports it.
        from formforge.stores.s3.store import S3Store

        return S3Store(
            s3.bucket,
            endpoint=s3.endpoint,
            region=s3.region,
            prefix=s3.prefix,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            part_size=s3.part_size,
        )
    return FileStore(Path(settings.storage.path), fsync=settings.storage.fsync)


async def recover_store(settings: Settings) -> None:
    """What a crash left half-done in the store, made whole; once, before any worker runs."""
    store = _store(settings)
    try:
        await store.recover()
    finally:
        await store.close()


def _locker(settings: Settings, role: Role) -> Locker:
    """One writer per upload: across hosts through Redis, across workers through files."""
    if settings.cluster.redis_url:
        # Imported only here: redis is the `redis` extra, which one server does not need.
        from formforge.locks.redis import RedisLocker

        return RedisLocker(settings.cluster.redis_url)
    if role.workers > 1:
        return FileLocker(Path(settings.storage.path))
    return MemoryLocker()


def _client_manager(settings: Settings, role: Role) -> socketio.AsyncManager | None:
    """Socket.IO events reach clients on any node (Redis) or any worker (local fan-out)."""
    if settings.cluster.redis_url:
        return socketio.AsyncRedisManager(settings.cluster.redis_url)
    if role.workers > 1:
        return LocalFanoutManager(Path(settings.storage.path) / ".fanout")
    return None


def _hook_targets(settings: Settings) -> dict[str, list[Target]]:
    points = {
        PRE_CREATE: settings.hooks.pre_create,
        POST_FINISH: settings.hooks.post_finish,
        POST_TERMINATE: settings.hooks.post_terminate,
    }
    return {point: [_target(entry) for entry in entries] for point, entries in points.items()}


def _target(entry: HookTarget) -> Target:
    for transport in ("http", "command", "python"):
        address = getattr(entry, transport)
        if address is not None:
            return Target(transport, address)
    raise ValueError("a hook target without a transport")  # config validation prevents it


def _limits(settings: Settings) -> Limits:
    return Limits(
        max_size=settings.limits.max_size,
        max_metadata_bytes=settings.limits.max_metadata_bytes,
        bandwidth_per_upload=settings.limits.bandwidth_per_upload,
        bandwidth_total=settings.limits.bandwidth_total,
        max_concurrent_uploads=settings.limits.max_concurrent_uploads,
        unfinished_ttl_seconds=settings.expiration.unfinished_ttl_seconds,
        checksum_algorithms=tuple(settings.checksum.algorithms),
        progress_interval_seconds=settings.events.progress_interval_ms / 1000,
    )
