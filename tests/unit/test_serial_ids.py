"""Request ids and lock tokens (`core/ids.new_serial_id`): unique without a random draw
each, across the processes of `serve --workers N` too."""

from __future__ import annotations

import multiprocessing
import re

from formforge.core.ids import new_serial_id


def test_serial_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [new_serial_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in ids)
    assert len(set(ids)) == len(ids)


def in_a_forked_worker(queue: multiprocessing.Queue[str]) -> None:
    queue.put(new_serial_id())


def test_a_forked_worker_draws_its_own_prefix() -> None:
    """Workers are forked after import: without a new prefix they would count alike."""
    mine = new_serial_id()
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    worker = context.Process(target=in_a_forked_worker, args=(queue,))
    worker.start()
    theirs = queue.get(timeout=10)
    worker.join(10)
    assert theirs[:16] != mine[:16]
