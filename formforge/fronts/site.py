"""Health, metrics and the page."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.web import RequestHandler

from formforge.metrics import Metrics


class HealthHandler(RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok"})


class MetricsHandler(RequestHandler):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.metrics.render())
