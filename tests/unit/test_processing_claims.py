"""Processing claims: of several processes or nodes resuming at once, exactly one processes
each upload, and an upload whose processor died is picked up by the next `resume`.

Each "node" here is a Processor with its own disk-store object over one shared data
directory and one shared locker (in a cluster: Redis; under --workers: the file locker).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from formforge.core.events import Event, EventBus, UploadFinished
from formforge.core.ids import is_valid_upload_id, new_upload_id
from formforge.core.locker import BRIEF, Locker
from formforge.core.model import NewUpload, UploadState
from formforge.core.processing import Processor, claim_name
from formforge.hooks.runner import HookRunner
from formforge.locks.memory import MemoryLocker
from formforge.stores.file import FileStore

BODY = b"processed once" * 1000


class SlowHashing(FileStore):
    """Processing that lasts long enough for another node to try it meanwhile."""

    async def sha256(self, upload_id: str, size: int, progress: Any = None) -> str:
        await asyncio.sleep(0.3)
        return await super().sha256(upload_id, size, progress)


class Node:
    def __init__(self, data: Path, locker: Locker) -> None:
        self.store = SlowHashing(data, fsync=False)
        self.finished: list[str] = []
        bus = EventBus()
        bus.subscribe(self._on_event)
        self.processor = Processor(self.store, bus, HookRunner({}, 1.0), locker)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, UploadFinished):
            self.finished.append(event.info.id)


async def body() -> AsyncIterator[bytes]:
    yield BODY


async def interrupted_upload(node: Node) -> str:
    """An upload whose processing a crash cut short: every byte, state `processing`."""
    await node.store.recover()
    upload_id = new_upload_id()
    await node.store.create(NewUpload(upload_id, len(BODY), {"filename": "a.bin"}))
    await node.store.write(upload_id, 0, body())
    await node.store.update(upload_id, state=UploadState.PROCESSING)
    return upload_id


async def settle(*nodes: Node) -> None:
    for node in nodes:
        await node.processor.stop()  # waits (briefly) for what they process to end
        await asyncio.sleep(0)


@pytest.mark.gen_test(timeout=20)
async def test_nodes_resuming_together_process_each_upload_once(tmp_path: Path) -> None:
    locker = MemoryLocker()
    nodes = [Node(tmp_path, locker) for _ in range(3)]
    upload_id = await interrupted_upload(nodes[0])
    took_on = await asyncio.gather(*(node.processor.resume() for node in nodes))
    assert sorted(took_on) == [0, 0, 1]
    await asyncio.sleep(0.6)
    assert [node.finished for node in nodes if node.finished] == [[upload_id]]
    info = await nodes[1].store.get_info(upload_id)
    assert (info.state, info.sha256) == (UploadState.COMPLETE, hashlib.sha256(BODY).hexdigest())
    await settle(*nodes)


@pytest.mark.gen_test(timeout=20)
async def test_an_upload_being_processed_is_left_to_its_processor(tmp_path: Path) -> None:
    locker = MemoryLocker()
    first, second = Node(tmp_path, locker), Node(tmp_path, locker)
    upload_id = await interrupted_upload(first)
    assert await first.processor.resume() == 1
    assert await second.processor.resume() == 0  # first is hashing it right now
    await asyncio.sleep(0.6)
    assert await second.processor.resume() == 0  # and now it is complete
    assert (first.finished, second.finished) == ([upload_id], [])
    await settle(first, second)


@pytest.mark.gen_test(timeout=20)
async def test_a_dead_processors_upload_is_taken_on_by_the_next_resume(tmp_path: Path) -> None:
    locker = MemoryLocker()
    dying, survivor = Node(tmp_path, locker), Node(tmp_path, locker)
    upload_id = await interrupted_upload(dying)
    assert await dying.processor.resume() == 1
    await dying.processor.stop()  # dies mid-hash: its claim goes with it, the state stays
    assert (await survivor.store.get_info(upload_id)).state is UploadState.PROCESSING
    assert await survivor.processor.resume() == 1
    await asyncio.sleep(0.6)
    assert (dying.finished, survivor.finished) == ([], [upload_id])
    await settle(survivor)


def test_a_claim_is_named_like_no_upload_but_every_locker_takes_the_name() -> None:
    upload_id = new_upload_id()
    assert is_valid_upload_id(claim_name(upload_id))
    assert len(claim_name(upload_id)) != len(new_upload_id())


@pytest.mark.gen_test(timeout=20)
async def test_a_delete_is_not_held_up_by_processing(tmp_path: Path) -> None:
    locker = MemoryLocker()
    node = Node(tmp_path, locker)
    upload_id = await interrupted_upload(node)
    assert await node.processor.resume() == 1
    started = asyncio.get_running_loop().time()
    lock = await locker.acquire(upload_id, BRIEF, force=True)  # what a DELETE holds
    assert asyncio.get_running_loop().time() - started < 0.25  # not after the hashing
    await node.store.terminate(upload_id, UploadState.TERMINATED)
    await lock.release()
    await asyncio.sleep(0.6)
    assert node.finished == []  # gone is final: processing ended without an event
    assert (await node.store.get_info(upload_id)).state is UploadState.TERMINATED
    await settle(node)
