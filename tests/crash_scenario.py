"""The crash matrix: SIGKILL a real server at random moments of uploads, restart it on the
same data dir, resume, and check that nothing the server acknowledged was ever lost.

CONTRACT.md, tus at /files/: "Bytes that reached the server are never lost: if a PATCH is
cut off mid-body, what arrived is kept and the next HEAD reports it in Upload-Offset, also
after the server process is killed and restarted." And for processing: "a crash mid-way
leaves `processing` behind" and start-up processes it again.

One round per kill, each aimed at a moment (a seeded shuffle, so every moment is hit as
often as the others):

| moment        | what runs when the kill comes                                        |
| ------------- | -------------------------------------------------------------------- |
| creation      | a burst of `POST /files/`                                            |
| mid-patch     | PATCH bodies streaming (raw sockets), tuspy chunk after chunk (with  |
|               | and without Upload-Checksum), REST PUTs with Content-Range           |
| concatenation | `POST /files/` with `Upload-Concat: final;...` over 3 partials       |
| processing    | a big upload's post-upload sha256 (REST `state` seen `processing`)   |
| termination   | `DELETE` of an upload, half the time while a PATCH streams into it   |

Background uploads stream in every round, so kills also land mid-PATCH elsewhere. Every
offset the server states (each 204's `Upload-Offset`, each HEAD, each REST answer) is
recorded; no later answer may be lower than what was acknowledged before that request was
sent, nor higher than what the client sent. After each restart every upload is HEADed;
tuspy uploaders ride the restart on their own retries and resume from their HEAD; REST
clients resend the chunk whose answer the kill ate (200 if it was all received, else 409
with the offset to go on from). At the end every upload is finished (tuspy with `url=` the
stored URL, REST PUTs, or raw PATCH), its REST state must become `complete` with the right
sha256, the download must match, and a last restart with a fast sweeper must leave the
data dir holding only `<id>.bin` + `<id>.info` of live uploads and tombstone `.info` files.

Shared by tests/system/test_reliability.py (20 kills) and tools/crash_matrix.py (`--kills N`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import random
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader.uploader import Uploader

from formforge.stores.records import load_record_file
from tests.system.test_interruptions import (
    Response,
    call,
    download_sha256,
    open_patch,
    read_response,
)

KiB = 1024
MiB = 1024 * KiB
MOMENTS = ("creation", "mid-patch", "concatenation", "processing", "termination")
# After the trigger, the kill comes at a seeded random delay within these bounds (seconds):
# each window spans the moment as measured on a 2-CPU machine.
KILL_WINDOWS = {
    "creation": (0.0, 0.12),  # creations take ~3 ms each, back to back
    "mid-patch": (0.05, 0.5),
    "concatenation": (0.0, 0.06),  # ~16 MiB of partials: ~30 ms, then the final's sha256
    "processing": (0.0, 0.08),  # a 48 MiB sha256 takes ~0.2 s
    "termination": (0.0, 0.006),  # a DELETE takes ~4 ms
}
TRIGGER_DEADLINE = 30.0  # seconds for a round's action to reach its moment
JOIN_DEADLINE = 30.0  # seconds for a round's client threads to end after the restart
COMPLETE_DEADLINE = 60.0  # seconds for every upload to be processed at the end
SWEEP_DEADLINE = 30.0  # seconds for the sweeper to leave a clean data dir
RAW_CHUNK, RAW_PACE = 64 * KiB, 0.02  # a raw PATCH body: ~3 MiB/s, so it spans rounds
TUSPY_CHUNK, TUSPY_PACE = 256 * KiB, 0.05  # tuspy: one PATCH request per chunk
TUSPY_RETRIES, TUSPY_RETRY_DELAY = 40, 0.25  # rides a ~3 s restart on its own retries
REST_CHUNK, REST_PACE = 256 * KiB, 0.05
# The background uploads' clients, in turn: tuspy-sha1 sends Upload-Checksum, so its bytes
# are provisional (`.pending`) until each chunk is verified.
CLIENTS = ("raw", "tuspy", "rest", "tuspy-sha1")
HEAD_POLL = 0.02
GONE = (404, 410)
SWEEP_CONFIG = "expiration:\n  sweep_interval_seconds: 1\n  unfinished_ttl_seconds: 2\n"


class ServerLike(Protocol):
    """What the scenario needs of tests.conftest.ServerProcess."""

    url: str
    data_dir: Path
    args: list[str]

    @property
    def files_url(self) -> str: ...
    def kill(self) -> None: ...
    def restart(self) -> Any: ...
    def log_tail(self, lines: int = 40) -> str: ...


@dataclass(frozen=True)
class CrashPlan:
    kills: int = 20
    seed: int = 1
    big_size: int = 48 * MiB  # big enough that `processing` lasts a visible ~0.2 s
    pool: int = 4  # background uploads streaming in every round
    regular_size: tuple[int, int] = (2 * MiB, 6 * MiB)
    small_size: tuple[int, int] = (16 * KiB, 256 * KiB)
    creations_per_round: int = 60  # at most: the burst lasts until the kill
    partials: int = 3
    partial_size: tuple[int, int] = (3 * MiB, 8 * MiB)
    victim_size: int = 4 * MiB


# ============================================================ sources


_BLOCK = MiB + 4099  # blocks that never line up with chunks: a misplaced range shows
_STAMP = 16


@functools.lru_cache(maxsize=1)
def _noise() -> bytes:
    return random.Random(20240611).randbytes(_BLOCK)


class Source:
    """The bytes of an upload, made on demand (no source files on disk)."""

    size: int

    def read(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    def chunks(self, start: int, step: int) -> Iterator[bytes]:
        for position in range(start, self.size, step):
            yield self.read(position, min(position + step, self.size))

    @functools.cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks(0, 4 * MiB):
            digest.update(chunk)
        return digest.hexdigest()


class PatternSource(Source):
    """Seeded noise, every block stamped with (seed, block index): no two blocks alike."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed, self.size = seed, size

    def read(self, start: int, end: int) -> bytes:
        noise, pieces, position = _noise(), [], start
        while position < end:
            index, low = divmod(position, _BLOCK)
            high = min(_BLOCK, low + end - position)
            stamp = struct.pack(">QQ", self.seed, index)
            pieces.append(stamp[low:high] + noise[max(low, _STAMP) : high])
            position += high - low
        return b"".join(pieces)


class JoinedSource(Source):
    """A final upload's bytes: its partial uploads' bytes, in order."""

    def __init__(self, parts: list[Source]) -> None:
        self.parts, self.size = parts, sum(part.size for part in parts)

    def read(self, start: int, end: int) -> bytes:
        pieces, base = [], 0
        for part in self.parts:
            low, high = max(start - base, 0), min(end - base, part.size)
            if low < high:
                pieces.append(part.read(low, high))
            base += part.size
        return b"".join(pieces)


# ============================================================ the ledger


@dataclass(eq=False)
class Upload:
    name: str
    kind: str  # regular, small, partial, final, big, victim
    source: Source
    client: str = "raw"  # one of CLIENTS
    url: str = ""
    resend_from: int = 0  # a REST client: where its next (or unanswered) chunk starts
    acked: int = 0  # the highest offset the server ever stated
    sent_to: int = 0  # the furthest byte a request of ours carried: nothing beyond can exist
    delete_sent: bool = False
    deleted: bool = False  # DELETE answered 204, or the upload was found gone after one
    parts: tuple[Upload, ...] = ()

    @property
    def upload_id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def live(self) -> bool:
        return bool(self.url) and not self.delete_sent


@dataclass
class CrashReport:
    seed: int
    kills: int = 0  # kills after which the server came back and every check ran
    uploads: int = 0
    complete: int = 0  # finished with the source's sha256 (download and REST)
    terminated: int = 0
    unacknowledged_unfinished: int = 0  # created, but the kill ate the 201: swept at the end
    unacknowledged_complete: int = 0  # a final whose 201 the kill ate: a complete upload
    bytes_lost: int = 0  # acknowledged bytes a later answer no longer had
    backwards: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    moments: Counter[str] = field(default_factory=Counter)
    landed: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)  # offsets recorded, by exchange
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.backwards and self.bytes_lost == 0

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {self.kills} kills survived in {self.seconds:.0f} s",
            f"uploads: {self.uploads} ({self.complete} complete with the right sha256, "
            f"{self.terminated} terminated)",
            f"bytes lost: {self.bytes_lost}",
            f"offsets that went backwards: {len(self.backwards)}",
            f"creations the kill answered for: {self.unacknowledged_unfinished} unfinished "
            f"(swept), {self.unacknowledged_complete} complete finals",
            "kills by moment: " + ", ".join(f"{k} {v}" for k, v in sorted(self.moments.items())),
            "where they landed:",
            *(f"  {count:3d}  {where}" for where, count in sorted(self.landed.items())),
            "offsets recorded and checked:",
            *(f"  {count:5d}  {how}" for how, count in sorted(self.answers.items())),
            f"problems: {len(self.problems)}",
            *(f"  - {problem}" for problem in self.problems[:50]),
            *(f"  - backwards: {line}" for line in self.backwards[:50]),
        ]
        return "\n".join(lines)


class Ledger:
    """Every upload and every offset the server stated, shared by the client threads."""

    def __init__(self, report: CrashReport) -> None:
        self.report = report
        self.uploads: list[Upload] = []
        self._lock = threading.Lock()

    def add(self, upload: Upload) -> Upload:
        with self._lock:
            self.uploads.append(upload)
        return upload

    def snapshot(self) -> list[Upload]:
        with self._lock:
            return list(self.uploads)

    def problem(self, text: str) -> None:
        with self._lock:
            self.report.problems.append(text)

    def lose(self, upload: Upload, text: str) -> None:
        """The whole upload is gone: every byte acknowledged for it is lost."""
        with self._lock:
            self.report.problems.append(f"{upload.name} {upload.upload_id}: {text}")
            self.report.bytes_lost += upload.acked

    def observe(self, upload: Upload, before: int, offset: int, how: str) -> None:
        """`offset` was stated by the server in answer to a request sent when `before` was
        the highest offset acknowledged: it may not be lower, nor past what we sent."""
        with self._lock:
            self.report.answers[re.sub(r"restart \d+", "restart", how)] += 1
            if offset < before:
                self.report.backwards.append(
                    f"{upload.name} {upload.upload_id}: {how} said {offset} after {before}"
                )
                self.report.bytes_lost += before - offset
            if offset > max(upload.sent_to, 0) or offset > upload.source.size:
                self.report.problems.append(
                    f"{upload.name} {upload.upload_id}: {how} said {offset}, but only "
                    f"{upload.sent_to} of {upload.source.size} bytes were ever sent"
                )
            upload.acked = max(upload.acked, offset)


# ============================================================ HTTP, tolerant of a dead server


def try_call(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Response | None:
    """The exchange, or None when the server died under it (refused, reset, cut answer)."""
    try:
        return call(method, url, headers, body)
    except (OSError, ValueError, IndexError):
        return None


def head_offset(ledger: Ledger, upload: Upload, how: str) -> Response | None:
    before = upload.acked
    response = try_call("HEAD", upload.url)
    if response is not None and response.status == 200:
        ledger.observe(upload, before, int(response.headers["upload-offset"]), how)
    return response


def patch_all(ledger: Ledger, upload: Upload, offset: int) -> Response | None:
    """PATCH the rest of the upload in one request; records the 204's offset."""
    before, body = upload.acked, upload.source.read(offset, upload.source.size)
    upload.sent_to = max(upload.sent_to, upload.source.size)
    headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    response = try_call("PATCH", upload.url, headers, body)
    if response is not None and response.status == 204:
        ledger.observe(upload, before, int(response.headers["upload-offset"]), "PATCH 204")
    return response


def rest_state(server: ServerLike, upload: Upload) -> dict[str, Any] | None:
    response = try_call("GET", f"{server.url}/api/files/upload/{upload.upload_id}")
    if response is None or response.status != 200:
        return None
    document: dict[str, Any] = json.loads(response.body)
    return document


def metadata_header(name: str) -> str:
    return "filename " + base64.b64encode(f"{name}.bin".encode()).decode()


class RecordingUploader(Uploader):
    """tuspy's uploader, telling the ledger every offset its HEADs learn (its retries HEAD
    too, then send a chunk from there)."""

    def __init__(self, *, ledger: Ledger, upload: Upload, chunk_size: int, **kwargs: Any) -> None:
        self._ledger, self._upload, self._chunk = ledger, upload, chunk_size
        super().__init__(chunk_size=chunk_size, **kwargs)

    def get_offset(self) -> int:
        before = self._upload.acked
        offset: int = super().get_offset()
        self._ledger.observe(self._upload, before, offset, "tuspy HEAD")
        self._upload.sent_to = max(self._upload.sent_to, offset + self._chunk)
        return offset


# ============================================================ one round


class Round:
    """The client threads of one kill: started before it, joined after the restart."""

    def __init__(self, ledger: Ledger, moment: str) -> None:
        self.ledger, self.moment = ledger, moment
        self.trigger = threading.Event()  # the action reached its moment
        self.streaming = threading.Event()  # some PATCH body is on its way
        self.stop = threading.Event()
        self.state = "not started"  # what the action was doing: read when the kill comes
        self.bodies_in_flight = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(
            target=self._guard, args=(target, *args), name=target.__name__, daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except OSError:
            pass  # the server died under the request: the point of the exercise
        except TusCommunicationError as error:
            if error.status_code is not None:  # an answer, not a dead server
                self.ledger.problem(f"{self.moment} round: tuspy got {error!r}")
        except Exception as error:
            self.ledger.problem(f"{self.moment} round: {target.__name__} raised {error!r}")

    def body_started(self) -> None:
        with self._lock:
            self.bodies_in_flight += 1
        self.streaming.set()

    def body_ended(self) -> None:
        with self._lock:
            self.bodies_in_flight -= 1

    def join(self) -> list[str]:
        end = time.monotonic() + JOIN_DEADLINE
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]


# ============================================================ the scenario


class CrashMatrix:
    def __init__(self, server: ServerLike, work_dir: Path, plan: CrashPlan) -> None:
        self.server, self.work_dir, self.plan = server, work_dir, plan
        self.rng = random.Random(plan.seed)
        self.report = CrashReport(seed=plan.seed)
        self.ledger = Ledger(self.report)
        self._names: Counter[str] = Counter()

    def run(self, log: Callable[[str], None] = lambda line: None) -> CrashReport:
        started = time.monotonic()
        for number, moment in enumerate(self._schedule(), start=1):
            where = self._round(moment)
            log(f"kill {number}/{self.plan.kills} at {moment}: {where}")
        log("finishing every upload")
        self._finish()
        log("sweeping with a short time-to-live")
        self._sweep()
        uploads = [upload for upload in self.ledger.snapshot() if upload.url]
        self.report.uploads = len(uploads)
        self.report.terminated = sum(upload.deleted for upload in uploads)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _schedule(self) -> list[str]:
        order: list[str] = []
        while len(order) < self.plan.kills:
            block = list(MOMENTS)
            self.rng.shuffle(block)
            order += block
        return order[: self.plan.kills]

    def _new_upload(self, kind: str, size: int, client: str = "raw") -> Upload:
        self._names[kind] += 1
        source = PatternSource(self.rng.getrandbits(48), size)
        return Upload(f"{kind}-{self._names[kind]}", kind, source, client)

    def _size(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    # -- a round -------------------------------------------------------------------------

    def _round(self, moment: str) -> str:
        self._refill_pool()
        rnd = Round(self.ledger, moment)
        for upload in self._streaming_uploads():
            rnd.spawn(self._worker(upload), rnd, upload)
        rnd.spawn(self._head_poller, rnd)
        self._start_action(rnd)
        reached = (rnd.streaming if moment == "mid-patch" else rnd.trigger).wait(TRIGGER_DEADLINE)
        if not reached:
            self.ledger.problem(f"{moment} round: the action never reached its moment")
        time.sleep(self.rng.uniform(*KILL_WINDOWS[moment]))
        self.server.kill()
        where = f"{rnd.state}; {rnd.bodies_in_flight} PATCH bodies in flight"
        self.report.moments[moment] += 1
        self.report.landed[f"{moment}: {rnd.state}"] += 1
        self._restart()
        rnd.stop.set()
        for name in rnd.join():
            self.ledger.problem(f"{moment} round: client thread {name} still running")
        self._check_after_restart()
        self.report.kills += 1
        return where

    def _restart(self) -> None:
        try:
            self.server.restart()
        except RuntimeError as error:
            raise RuntimeError(f"no restart after kill {self.report.kills + 1}: {error}") from None

    def _streaming_uploads(self) -> list[Upload]:
        return [
            upload
            for upload in self.ledger.snapshot()
            if upload.kind == "regular" and upload.live and upload.acked < upload.source.size
        ]

    def _refill_pool(self) -> None:
        missing = self.plan.pool - len(self._streaming_uploads())
        for _ in range(max(0, missing)):
            client = CLIENTS[self._names["regular"] % len(CLIENTS)]
            upload = self._new_upload("regular", self._size(self.plan.regular_size), client)
            self._create(upload)

    def _create(self, upload: Upload, concat: str | None = None) -> bool:
        headers = {"Upload-Length": str(upload.source.size)}
        headers["Upload-Metadata"] = metadata_header(upload.name)
        if concat:
            headers["Upload-Concat"] = concat
        response = try_call("POST", self.server.files_url, headers)
        if response is None:
            return False
        if response.status != 201:
            self.ledger.problem(f"creating {upload.name}: {response}")
            return False
        upload.url = response.headers["location"]
        self.ledger.add(upload)
        return True

    # -- background clients --------------------------------------------------------------

    def _worker(self, upload: Upload) -> Callable[[Round, Upload], None]:
        if upload.client.startswith("tuspy"):
            return self._tuspy_worker
        return self._rest_worker if upload.client == "rest" else self._raw_worker

    def _raw_worker(self, rnd: Round, upload: Upload) -> None:
        """HEAD, then PATCH the rest in one slow body, as a browser on a thin link would."""
        response = head_offset(self.ledger, upload, "HEAD")
        if response is None or response.status != 200:
            return
        offset = int(response.headers["upload-offset"])
        if offset >= upload.source.size:
            return
        before, sock = upload.acked, open_patch(upload.url, offset, upload.source.size - offset)
        rnd.body_started()
        try:
            for chunk in upload.source.chunks(offset, RAW_CHUNK):
                upload.sent_to = max(upload.sent_to, offset + len(chunk))
                offset += len(chunk)
                sock.sendall(chunk)
                time.sleep(RAW_PACE)
            answer = read_response(sock, deadline=30.0)
        finally:
            rnd.body_ended()
            sock.close()
        if answer.status != 204:
            self.ledger.problem(f"{upload.name}: PATCH answered {answer}")
            return
        self.ledger.observe(upload, before, int(answer.headers["upload-offset"]), "PATCH 204")

    def _tuspy_worker(self, rnd: Round, upload: Upload) -> None:
        """tuspy from the stored URL, chunk after chunk; its retries ride the restart."""
        uploader = self._tuspy(upload, TUSPY_RETRIES)
        for _ in range(upload.source.size // TUSPY_CHUNK + 2):  # bounded: a chunk a turn
            if uploader.offset >= upload.source.size or rnd.stop.is_set():
                return
            before = upload.acked
            upload.sent_to = max(upload.sent_to, uploader.offset + TUSPY_CHUNK)
            rnd.body_started()
            try:
                uploader.upload_chunk()
            finally:
                rnd.body_ended()
            self.ledger.observe(upload, before, uploader.offset, "tuspy PATCH 204")
            time.sleep(TUSPY_PACE)

    def _tuspy(self, upload: Upload, retries: int) -> RecordingUploader:
        return RecordingUploader(
            ledger=self.ledger,
            upload=upload,
            client=TusClient(self.server.files_url),
            url=upload.url,
            file_stream=io.BytesIO(upload.source.read(0, upload.source.size)),
            chunk_size=TUSPY_CHUNK,
            retries=retries,
            retry_delay=TUSPY_RETRY_DELAY,
            upload_checksum=upload.client == "tuspy-sha1",
        )

    def _rest_worker(self, rnd: Round, upload: Upload) -> None:
        """PUT chunk after chunk with Content-Range, as a REST client keeps its own offset."""
        size = upload.source.size
        for _ in range(size // REST_CHUNK + 2):  # bounded: a chunk a turn
            if upload.resend_from >= size or rnd.stop.is_set():
                return
            rnd.body_started()
            try:
                moved = self._rest_put(upload)
            finally:
                rnd.body_ended()
            if not moved:
                return
            time.sleep(REST_PACE)

    def _rest_put(self, upload: Upload) -> bool:
        """One chunk from `resend_from`; False when the server died or refused it."""
        start, size = upload.resend_from, upload.source.size
        end = min(start + REST_CHUNK, size)
        before, upload.sent_to = upload.acked, max(upload.sent_to, end)
        response = try_call(
            "PUT",
            f"{self.server.url}/api/files/upload/{upload.upload_id}",
            {"Content-Range": f"bytes {start}-{end - 1}/{size}"},
            upload.source.read(start, end),
        )
        if response is None:
            return False  # the answer is lost: resend the same range after the restart
        if response.status not in (200, 409):
            self.ledger.problem(f"{upload.name}: REST PUT {start}-{end - 1} answered {response}")
            return False
        offset = int(json.loads(response.body)["offset"])
        self.ledger.observe(upload, before, offset, f"REST PUT {response.status}")
        upload.resend_from = offset
        return True

    def _head_poller(self, rnd: Round) -> None:
        """HEADs during the round: each answer is an acknowledgement the kill must not undo."""
        for _ in range(int(2 * TRIGGER_DEADLINE / HEAD_POLL)):  # bounded: the round's length
            if rnd.stop.is_set():
                return
            for upload in self._streaming_uploads():
                head_offset(self.ledger, upload, "HEAD")
            time.sleep(HEAD_POLL)

    # -- the moments ---------------------------------------------------------------------

    def _start_action(self, rnd: Round) -> None:
        plan, moment = self.plan, rnd.moment
        if moment == "creation":
            sizes = [self._size(plan.small_size) for _ in range(plan.creations_per_round)]
            rnd.spawn(self._creations, rnd, [self._new_upload("small", s) for s in sizes])
        elif moment == "concatenation":
            parts = [
                self._new_upload("partial", self._size(plan.partial_size))
                for _ in range(plan.partials)
            ]
            rnd.spawn(self._concatenation, rnd, parts)
        elif moment == "processing":
            rnd.spawn(self._processing, rnd, self._new_upload("big", plan.big_size))
        elif moment == "termination":
            victim = self._new_upload("victim", plan.victim_size)
            rnd.spawn(self._termination, rnd, victim, self.rng.random() < 0.5)
        else:
            rnd.state = "streaming"

    def _creations(self, rnd: Round, uploads: list[Upload]) -> None:
        for upload in uploads:
            rnd.state = "POST in flight"
            rnd.trigger.set()
            if not self._create(upload):
                return
            rnd.state = "between POSTs"
        rnd.state = "burst over"

    def _concatenation(self, rnd: Round, parts: list[Upload]) -> None:
        rnd.state = "uploading partials"
        for part in parts:
            if not self._create(part, concat="partial"):
                return
            response = patch_all(self.ledger, part, 0)
            if response is None or response.status != 204:
                self.ledger.problem(f"{part.name}: PATCH answered {response}")
                return
        final = self._final_of(parts)
        rnd.state = "final POST in flight"
        rnd.trigger.set()
        if self._post_final(final):
            rnd.state = "final created"

    def _final_of(self, parts: list[Upload]) -> Upload:
        self._names["final"] += 1
        source = JoinedSource([part.source for part in parts])
        final = Upload(f"final-{self._names['final']}", "final", source, parts=tuple(parts))
        final.sent_to = source.size  # the server makes its bytes from the parts
        return self.ledger.add(final)

    def _post_final(self, final: Upload) -> bool:
        urls = " ".join(part.url for part in final.parts)
        headers = {"Upload-Concat": f"final;{urls}", "Upload-Metadata": metadata_header(final.name)}
        response = try_call("POST", self.server.files_url, headers)
        if response is None:
            return False
        if response.status != 201:
            self.ledger.problem(f"{final.name}: final POST answered {response}")
            return False
        final.url = response.headers["location"]
        return True

    def _processing(self, rnd: Round, big: Upload) -> None:
        rnd.state = "uploading the big file"
        if not self._create(big):
            return
        response = patch_all(self.ledger, big, 0)
        if response is None or response.status != 204:
            return
        for _ in range(2000):  # bounded: ~10 s of 5 ms polls
            state = rest_state(self.server, big)
            if state is None:
                return
            if state["state"] != "uploading":
                rnd.state = f"REST state {state['state']}"
                rnd.trigger.set()
                return
            time.sleep(0.005)

    def _termination(self, rnd: Round, victim: Upload, busy: bool) -> None:
        rnd.state = "preparing the victim"
        if not self._create(victim):
            return
        half = victim.source.size // 4
        victim.sent_to = half
        headers = {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        response = try_call("PATCH", victim.url, headers, victim.source.read(0, half))
        if response is None or response.status != 204:
            return
        self.ledger.observe(victim, 0, int(response.headers["upload-offset"]), "PATCH 204")
        if busy:
            rnd.spawn(self._raw_worker, rnd, victim)
            for _ in range(300):  # bounded: ~3 s for the PATCH to be receiving
                response = head_offset(self.ledger, victim, "HEAD")
                if response is None or victim.acked > half:
                    break
                time.sleep(0.01)
        rnd.state = "DELETE in flight" + (" (taking a PATCH over)" if busy else "")
        victim.delete_sent = True
        rnd.trigger.set()
        response = try_call("DELETE", victim.url)
        if response is None:
            return
        if response.status != 204:
            self.ledger.problem(f"{victim.name}: DELETE answered {response}")
            return
        victim.deleted = True
        rnd.state = "DELETE answered"

    # -- after each restart --------------------------------------------------------------

    def _check_after_restart(self) -> None:
        uploads = [upload for upload in self.ledger.snapshot() if upload.url]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._check_one, uploads))

    def _check_one(self, upload: Upload) -> None:
        kill = self.report.kills + 1
        if upload.delete_sent:  # its client gave its bytes up: only gone-or-not matters
            response = try_call("HEAD", upload.url)
        else:
            response = head_offset(self.ledger, upload, f"HEAD after restart {kill}")
        if response is None:
            self.ledger.problem(f"{upload.name}: no answer to HEAD after restart {kill}")
        elif upload.deleted and response.status not in GONE:
            self.ledger.problem(f"{upload.name}: deleted (204), but HEAD says {response}")
        elif upload.delete_sent and response.status in GONE:
            upload.deleted = True  # the DELETE the kill cut had taken effect
        elif response.status != 200 and not upload.delete_sent:
            self.ledger.lose(upload, f"vanished after restart {kill}: HEAD {response}")

    # -- the end: finish everything, then sweep ------------------------------------------

    def _finish(self) -> None:
        uploads = self.ledger.snapshot()
        for final in (u for u in uploads if u.kind == "final" and not u.url):
            if not self._post_final(final):
                self.ledger.problem(f"{final.name}: no final upload from complete partials")
        for victim in (u for u in uploads if u.kind == "victim" and not u.deleted):
            response = try_call("DELETE", victim.url)
            if response is not None and response.status in (204, *GONE):
                victim.delete_sent = victim.deleted = True
            else:
                self.ledger.problem(f"{victim.name}: DELETE at the end answered {response}")
        live = [upload for upload in self.ledger.snapshot() if upload.live]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._finish_one, live))
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(self._verify_one, live))

    def _finish_one(self, upload: Upload) -> None:
        response = head_offset(self.ledger, upload, "HEAD at the end")
        if response is None or response.status != 200:
            self.ledger.problem(f"{upload.name}: HEAD at the end answered {response}")
            return
        offset = int(response.headers["upload-offset"])
        if offset >= upload.source.size:
            return
        if upload.client.startswith("tuspy"):
            self._finish_with_tuspy(upload)
            return
        if upload.client == "rest":
            for _ in range(upload.source.size // REST_CHUNK + 2):  # bounded: one PUT a chunk
                if upload.resend_from >= upload.source.size or not self._rest_put(upload):
                    break
            if upload.acked < upload.source.size:
                self.ledger.problem(f"{upload.name}: REST PUTs stopped at {upload.acked}")
            return
        response = patch_all(self.ledger, upload, offset)
        if response is None or response.status != 204:
            self.ledger.problem(f"{upload.name}: the last PATCH answered {response}")

    def _finish_with_tuspy(self, upload: Upload) -> None:
        """A fresh tuspy uploader with `url=` the stored URL: HEAD, then the rest."""
        upload.sent_to, before = upload.source.size, upload.acked
        try:
            uploader = self._tuspy(upload, retries=3)
            uploader.upload()
        except TusCommunicationError as error:
            self.ledger.problem(f"{upload.name}: tuspy could not finish: {error!r}")
            return
        self.ledger.observe(upload, before, uploader.offset, "tuspy PATCH 204")

    def _verify_one(self, upload: Upload) -> None:
        """Processed (REST `complete`, the server's sha256), and the download matches."""
        state: dict[str, Any] | None = None
        end = time.monotonic() + COMPLETE_DEADLINE
        while time.monotonic() < end:
            state = rest_state(self.server, upload)
            if state is not None and state["state"] not in ("uploading", "processing"):
                break
            time.sleep(0.05)
        expected = upload.source.sha256
        if state is None or state["state"] != "complete":
            self.ledger.problem(f"{upload.name} {upload.upload_id}: REST state is {state}")
            return
        if upload.kind != "partial" and state.get("sha256") != expected:
            self.ledger.problem(f"{upload.name}: REST sha256 {state.get('sha256')} != {expected}")
            return
        try:
            downloaded = download_sha256(upload.url)
        except (AssertionError, OSError) as error:
            self.ledger.problem(f"{upload.name}: download failed: {error!r}")
            return
        if downloaded != expected:
            self.ledger.problem(f"{upload.name}: downloaded sha256 {downloaded} != {expected}")
            return
        with self.ledger._lock:
            self.report.complete += 1

    def _sweep(self) -> None:
        """A last restart with a sweeper that runs every second and a 2 s time-to-live."""
        config = self.work_dir / "sweep.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(SWEEP_CONFIG)
        known = {upload.upload_id: upload for upload in self.ledger.snapshot() if upload.url}
        self._count_unacknowledged(known)
        self.server.args = [*self.server.args, "--config", str(config)]
        self._restart()
        issues: list[str] = []
        end = time.monotonic() + SWEEP_DEADLINE
        while time.monotonic() < end:
            issues = data_dir_issues(self.server.data_dir, known)
            if not issues:
                break
            time.sleep(0.25)
        for issue in issues:
            self.ledger.problem(f"after the sweep: {issue}")
        for upload in known.values():
            if upload.live:  # the sweeper never takes a complete upload
                response = head_offset(self.ledger, upload, "HEAD after the sweep")
                if response is None or response.status != 200:
                    self.ledger.problem(f"{upload.name}: swept although complete: {response}")

    def _count_unacknowledged(self, known: dict[str, Upload]) -> None:
        for upload_id, record, data_size in stored_uploads(self.server.data_dir):
            if upload_id in known or record.get("state") in ("expired", "terminated"):
                continue
            if data_size is not None and data_size == record.get("size"):
                self.report.unacknowledged_complete += 1
            else:
                self.report.unacknowledged_unfinished += 1


# ============================================================ the data dir


def stored_uploads(data_dir: Path) -> Iterator[tuple[str, dict[str, Any], int | None]]:
    """(id, info record, size of <id>.bin or None) for every <id>.info."""
    for info in sorted(data_dir.glob("*.info")):
        try:
            record = load_record_file(info.read_bytes())
        except (OSError, ValueError):
            continue  # replaced or forgotten under us
        data = info.with_suffix(".bin")
        with contextlib.suppress(FileNotFoundError):
            yield info.stem, record, data.stat().st_size
            continue
        yield info.stem, record, None


def data_dir_issues(data_dir: Path, known: dict[str, Upload]) -> list[str]:
    """What keeps the data dir from holding only <id>.bin + <id>.info of live uploads and
    tombstone .info files; empty when clean."""
    issues = [
        f"stray file {path.name}"
        for path in sorted(data_dir.iterdir())
        if path.suffix not in (".bin", ".info")
    ]
    infos = {path.stem for path in data_dir.glob("*.info")}
    issues += [f"orphan {p.name}: no .info" for p in data_dir.glob("*.bin") if p.stem not in infos]
    for upload_id, record, data_size in stored_uploads(data_dir):
        upload = known.get(upload_id)
        state, size = record.get("state"), record.get("size")
        if state in ("expired", "terminated"):
            if data_size is not None:
                issues.append(f"tombstone {upload_id} ({state}) still has {data_size} bytes")
        elif upload is not None and upload.deleted:
            issues.append(f"{upload.name} {upload_id} was deleted but is {state}")
        elif data_size is None:
            issues.append(f"{upload_id} ({state}) has no .bin")
        elif data_size != size or state != "complete":
            who = upload.name if upload else "an upload nobody was told of"
            issues.append(f"{who} {upload_id} is {state} at {data_size} of {size} bytes")
    return issues
