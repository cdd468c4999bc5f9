"""Prometheus metrics, fed by the event bus and by Tornado's request log hook."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from tornado.web import RequestHandler

from formforge.core.events import (
    BytesWritten,
    Event,
    UploadCreated,
    UploadFailed,
    UploadFinished,
    UploadTerminated,
)


class Metrics:
    """One registry per app (no module globals), so tests and several apps stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "formforge_http_requests",
            "HTTP requests answered",
            ["method", "status"],
            registry=self.registry,
        )
        self._request_counters: dict[tuple[str, int], Any] = {}
        self.bytes_received = Counter(
            "formforge_bytes_received", "Upload bytes stored", registry=self.registry
        )
        self.created = Counter(
            "formforge_uploads_created", "Uploads created", registry=self.registry
        )
        self.finished = Counter(
            "formforge_uploads_finished", "Uploads finished", registry=self.registry
        )
        self.terminated = Counter(
            "formforge_uploads_terminated", "Uploads terminated", registry=self.registry
        )
        self.hook_calls = Counter(
            "formforge_hook_calls",
            "Hook calls by point and transport",
            ["point", "transport"],
            registry=self.registry,
        )
        self.hook_failures = Counter(
            "formforge_hook_failures",
            "Failed hook calls",
            ["point", "transport"],
            registry=self.registry,
        )
        self.hook_seconds = Histogram(
            "formforge_hook_seconds",
            "Hook call durations",
            ["point", "transport"],
            registry=self.registry,
        )
        self.errors = Counter(
            "formforge_upload_errors", "Upload errors by code", ["code"], registry=self.registry
        )

    def on_event(self, event: Event) -> None:
        match event:
            case BytesWritten(count=count):
                self.bytes_received.inc(count)
            case UploadCreated():
                self.created.inc()
            case UploadFinished():
                self.finished.inc()
            case UploadTerminated():
                self.terminated.inc()
            case UploadFailed(kind=kind):
                self.errors.labels(kind.code).inc()

    def on_hook(self, point: str, transport: str, seconds: float, ok: bool) -> None:
        self.hook_calls.labels(point, transport).inc()
        self.hook_seconds.labels(point, transport).observe(seconds)
        if not ok:
            self.hook_failures.labels(point, transport).inc()

    def on_request(self, handler: RequestHandler) -> None:
        key = (handler.request.method or "", handler.get_status())
        counter = self._request_counters.get(key)
        if counter is None:  # `labels` checks and locks each time: once per method and status
            counter = self._request_counters[key] = self.requests.labels(key[0], str(key[1]))
        counter.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
