"""create_app(settings): the one route table, and the wiring of every collaborator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio

from formforge.auth import TokenCheck
from formforge.config import HookTarget, Settings
from formforge.core.events import EventBus
from formforge.core.hooks import POST_FINISH, POST_TERMINATE, PRE_CREATE
from formforge.core.limits import Limits
from formforge.core.locker import Locker
from formforge.core.service import UploadService
from formforge.core.store import Store
from formforge.fronts.guard import GuardedApplication
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


@dataclass
class FormForgeApp:
    """The Tornado application and what runs beside it."""

    settings: Settings
    application: GuardedApplication
    service: UploadService
    metrics: Metrics
    sio: socketio.AsyncServer
    role: Role
    _sweeper: asyncio.Task[None] | None = field(default=None)

    async def start(self) -> None:
        await self.service.locker.start()
        if self.role.recover_store:
            await self.service.store.recover()
        if self.role.leader:
            resumed = await self.service.processor.resume()
            if resumed:
                log.info("processing resumed uploads=%d", resumed)
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        await self.service.shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.service.locker.close()
        await self.service.store.close()

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


def create_app(
    settings: Settings, self_url: str | None = None, role: Role | None = None
) -> FormForgeApp:
    """Wire everything. `self_url` is where the server listens, for absolute URLs in events
    when no `server.public_url` is configured."""
    role = role or Role()
    bus = EventBus()
    metrics = Metrics()
    bus.subscribe(metrics.on_event)
    store = _store(settings)
    hooks = HookRunner(_hook_targets(settings), settings.hooks.timeout_seconds, metrics.on_hook)
    service = UploadService(store, _locker(settings, role), bus, _limits(settings), hooks)
    tokens = TokenCheck.from_setting(settings.auth.bearer_tokens)
    public_url = str(settings.server.public_url).rstrip("/") if settings.server.public_url else None
    cors_origins = tuple(settings.server.cors_origins)
    sio = create_socketio(cors_origins, _client_manager(settings, role))
    sio.register_namespace(UploadNamespace(service, tokens))
    base = public_url or self_url or f"http://{settings.server.host}:{settings.server.port}"
    bus.subscribe(RealtimeBridge(sio, lambda upload_id: f"{base}/files/{upload_id}").on_event)
    front: dict[str, Any] = {
        "service": service,
        "throughput": Throughput(),  # what each client's bodies took: REST's chunkSize
        "public_url": public_url,
        "cors_origins": cors_origins,
    }
    routes: list[Any] = [
        # The IETF draft (requests with Upload-Draft-Interop-Version) first, then tus.
        *ietf_routes((r"/files/?", rf"/files/{ID_PATTERN}/?"), front),
        (r"/files/?", TusHandler, front),
        (rf"/files/{ID_PATTERN}/?", TusHandler, front),
        (r"/api/files/upload/?", RestCreateHandler, front),
        (rf"/api/files/upload/{ID_PATTERN}/?", RestUploadHandler, front),
        (r"/socket.io/", socketio.get_tornado_handler(sio)),
        (r"/healthz", HealthHandler),
        (r"/metrics", MetricsHandler, {"metrics": metrics}),
        (r"/", IndexHandler, {"path": STATIC_DIR / "index.html"}),
    ]
    application = GuardedApplication(
        routes,
        tokens,
        static_path=str(STATIC_DIR),
        static_handler_class=SafeStaticFileHandler,
        log_function=metrics.on_request,
        idle_timeout_seconds=settings.server.idle_timeout_seconds,
    )
    return FormForgeApp(settings, application, service, metrics, sio, role)


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
