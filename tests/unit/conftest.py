"""The unit tier's service: UploadService over the in-memory store, the memory locker and a
recording bus, with limits small enough to reach in a test (service_kit.LIMITS)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from formforge.core.hooks import Hooks
from formforge.core.service import UploadService
from tests.unit.memory_store import MemoryStore
from tests.unit.service_kit import NewService, RecordingBus, make_service


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def new_service(store: MemoryStore, bus: RecordingBus, io_loop: IOLoop) -> Iterator[NewService]:
    """Factory: `new_service(hooks, **limits)`; each service is shut down after the test, so
    no background processing outlives it."""
    made: list[UploadService] = []

    def new(hooks: Hooks | None = None, **limits: Any) -> UploadService:
        made.append(make_service(store, bus, hooks, **limits))
        return made[-1]

    yield new
    for service in made:
        io_loop.run_sync(service.shutdown)


@pytest.fixture
def service(new_service: NewService) -> UploadService:
    return new_service()
