"""`formforge upload`: files to a tus server with tuspy, resumed across runs.

Who does what:

- tuspy's `BaseUploader` knows the file (its size, the next chunk's length), builds the
  creation headers with the encoded metadata and, with `store_url`, keeps each upload's URL
  in a `FileStorage` under the file's fingerprint: the next run of the same file finds the
  URL there and HEADs it for the offset.
- `TusFileUpload` replaces tuspy's three exchanges (POST, HEAD, PATCH). tuspy sets no
  time-out, so a network that goes silent would hang the command for ever; it reports no
  progress within a chunk; and its retries (none by default) wait one fixed delay, retry
  4xx answers too and do not cover the POST or the HEAD of a stored URL.
- `call_with_retries` retries what can succeed later (no connection, a time-out, 5xx, 409,
  423: the table in formforge/errors.py) with capped exponential backoff and a bounded
  number of tries per request. Before a PATCH is tried again the offset is asked for again
  (HEAD), so a 409 or a cut body resumes from what the server really holds.
- `upload_files` checks once that the URL is a tus server (OPTIONS), then uploads the files
  in turn with a progress bar each.

Standard output gets each finished upload's URL, one line per file, only once the server
has acknowledged every byte; progress, notes and errors go to standard error.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from tqdm import tqdm  # type: ignore[import-untyped]
from tusclient.client import TusClient
from tusclient.fingerprint.fingerprint import Fingerprint
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from formforge.client.http import (
    GaveUp,
    Http,
    Retryable,
    RetryPolicy,
    UploadFailed,
    UploadGone,
    UsageError,
    call_with_retries,
    check_server,
)
from formforge.core.checksum import HASHERS

T = TypeVar("T")
BODY_BLOCK = 64 * 1024  # progress is reported after each block of a chunk is sent


@dataclass(frozen=True)
class UploadOptions:
    """What `formforge upload` was asked for, checked by the command line's parser."""

    endpoint: str  # the creation URL, e.g. http://127.0.0.1:3000/files/
    state_path: Path  # where upload URLs are kept between runs (tuspy's FileStorage)
    chunk_size: int  # bytes per PATCH; one chunk is held in memory at a time
    checksum: str | None  # a key of formforge.core.checksum.HASHERS, or None
    retry: RetryPolicy
    token: str | None = None  # sent as `Authorization: Bearer` (auth.bearer_tokens)


# --- one file --------------------------------------------------------------------------


class FileFingerprint(Fingerprint):
    """tuspy's fingerprint (size, md5 of the first 64 KiB) plus the endpoint and mtime.

    The endpoint: the same file sent to another server is another upload. The mtime: a
    file edited since its partial upload starts over instead of resuming onto old bytes.
    """

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    def get_fingerprint(self, fs: IO[bytes]) -> str:
        mtime_ns = os.fstat(fs.fileno()).st_mtime_ns
        content: str = super().get_fingerprint(fs)
        return f"{self._endpoint} mtime_ns:{mtime_ns} {content}"

    def of_path(self, path: Path) -> str:
        with path.open("rb") as stream:
            return self.get_fingerprint(stream)


class ChunkBody:
    """A chunk as a request body with a length; `on_sent(bytes so far)` after each block."""

    def __init__(self, data: bytes, on_sent: Callable[[int], None]) -> None:
        self._data = memoryview(data)
        self._on_sent = on_sent

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self._data), BODY_BLOCK):
            block = self._data[start : start + BODY_BLOCK]
            yield bytes(block)
            self._on_sent(start + len(block))


class TusFileUpload(Uploader):
    """One file's tus upload: tuspy's bookkeeping, our HTTP (time-outs, progress, checksums).

    Constructing it looks the file up in `url_storage`; if an upload URL is stored it HEADs
    it (raising `UploadGone` if that upload is gone or is not this file's), so `url` and
    `offset` say where to resume; otherwise `url` is None and nothing was sent.
    """

    def __init__(
        self,
        path: Path,
        http: Http,
        options: UploadOptions,
        url_storage: FileStorage,
    ) -> None:
        # Set before tuspy's constructor, which may already call get_offset().
        self._path = path
        self._http = http
        self._endpoint = options.endpoint
        self._size = path.stat().st_size
        self._chunk_size = options.chunk_size
        self._checksum = options.checksum
        self._storage = url_storage
        self._fingerprinter = FileFingerprint(options.endpoint)
        self._offset_known = True
        self.on_progress: Callable[[int], None] = lambda offset: None
        super().__init__(
            file_path=str(path),
            client=TusClient(options.endpoint),
            chunk_size=options.chunk_size,
            metadata=file_metadata(path),
            store_url=True,
            url_storage=url_storage,
            fingerprinter=self._fingerprinter,
        )

    @property
    def size(self) -> int:
        return self._size

    @property
    def upload_url(self) -> str | None:
        """tuspy's `url`, typed: None until the upload is created or found in storage."""
        url: object = self.url
        return url if isinstance(url, str) else None

    def _upload_url(self) -> str:
        url = self.upload_url
        if url is None:
            raise UploadFailed("the upload has no URL yet")
        return url

    def _tus_headers(self) -> dict[str, str]:
        """Tus-Resumable plus the client's headers."""
        return dict(self.get_headers())  # type: ignore[no-untyped-call]

    def get_offset(self) -> int:
        """HEAD the upload: the offset the server holds."""
        url = self._upload_url()
        response = self._http.send("HEAD", url, headers=self._tus_headers())
        Http.expect(response, f"HEAD {url}", (200, 204))
        length = response.headers.get("Upload-Length")
        if length is not None and length != str(self._size):
            raise UploadGone(f"{url} is {length} bytes long, the file {self._size}")
        return _offset_header(response, f"HEAD {url}", self._size)

    def create_url(self) -> str:
        """POST to the endpoint: a new upload, whose absolute URL is returned."""
        endpoint = self._endpoint
        headers: dict[str, str] = self.get_url_creation_headers()  # type: ignore[no-untyped-call]
        response = self._http.send("POST", endpoint, headers=headers)
        Http.expect(response, f"POST {endpoint}", (201,))
        location = response.headers.get("Location")
        if not location:
            raise UploadFailed(f"POST {endpoint} answered 201 without a Location")
        return urljoin(endpoint, location)

    def upload_chunk(self) -> None:
        """PATCH the next chunk from `offset`; after a failed try, HEAD for the offset first."""
        if not self._offset_known:
            self.offset = self.get_offset()
            self.on_progress(self.offset)
            self._offset_known = True
            if self.offset >= self._size:
                return
        self._offset_known = False
        url, start = self._upload_url(), self.offset
        chunk = self._read_chunk()
        body = ChunkBody(chunk, lambda sent: self.on_progress(start + sent))
        response = self._http.send("PATCH", url, headers=self._patch_headers(chunk), data=body)
        Http.expect(response, f"PATCH {url}", (200, 204))
        self.offset = _offset_header(response, f"PATCH {url}", self._size)
        if self.offset <= start:
            raise UploadFailed(f"PATCH {url} did not move the offset from {start}")
        self._offset_known = True
        self.on_progress(self.offset)

    def forget(self) -> None:
        """Drops the stored URL: the next run of this file starts a new upload."""
        self._storage.remove_item(self._fingerprinter.of_path(self._path))

    def _read_chunk(self) -> bytes:
        with self._path.open("rb") as stream:
            stream.seek(self.offset)
            return stream.read(min(self._chunk_size, self._size - self.offset))

    def _patch_headers(self, chunk: bytes) -> dict[str, str]:
        headers = self._tus_headers()
        headers["Upload-Offset"] = str(self.offset)
        headers["Content-Type"] = "application/offset+octet-stream"
        if self._checksum:
            hasher = HASHERS[self._checksum]()
            hasher.update(chunk)
            digest = base64.b64encode(hasher.digest()).decode("ascii")
            headers["Upload-Checksum"] = f"{self._checksum} {digest}"
        return headers


def file_metadata(path: Path) -> dict[str, str]:
    metadata = {"filename": path.name}
    filetype, _ = mimetypes.guess_type(path.name)
    if filetype:
        metadata["filetype"] = filetype
    return metadata


def _offset_header(response: requests.Response, what: str, size: int) -> int:
    raw = response.headers.get("Upload-Offset", "")
    if not raw.isdigit() or int(raw) > size:
        raise UploadFailed(f"{what} answered a bad Upload-Offset {raw[:32]!r}")
    return int(raw)


# --- the run ---------------------------------------------------------------------------


def check_usage(paths: Sequence[Path], endpoint: str) -> None:
    """Raises `UsageError` unless `endpoint` is an http(s) URL and every path a readable file."""
    try:
        parts = urlsplit(endpoint)
        _ = parts.port  # a malformed port raises here
    except ValueError as error:
        raise UsageError(f"--url {endpoint!r} is not a URL: {error}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {endpoint!r} is not an http:// or https:// URL")
    for path in paths:
        if not path.is_file():
            problem = "not a regular file" if path.exists() else "no such file"
            raise UsageError(f"{path}: {problem}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{path}: not readable")


def open_state(path: Path) -> FileStorage:
    """tuspy's URL storage at `path` (created if need be), read once to fail early."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = FileStorage(str(path))  # type: ignore[no-untyped-call]
        storage.get_item("")
    except (OSError, ValueError) as error:
        raise UploadFailed(f"cannot use the upload state file {path}: {error}") from error
    return storage


class UploadRun:
    """Uploads files one after the other to one (checked) server."""

    def __init__(
        self, options: UploadOptions, http: Http, storage: FileStorage, err: TextIO
    ) -> None:
        self._options = options
        self._http = http
        self._storage = storage
        self._err = err

    def upload(self, path: Path) -> str:
        """Uploads `path` to the end (resuming a stored upload); returns its URL."""
        upload = self._open(path)
        url = upload.upload_url
        if url is None:
            url = self._retrying(path, upload.create_url)
            upload.set_url(url)  # stored before any byte is sent
            upload.offset = 0
        else:
            self._say(f"resuming {url} at offset {upload.offset}")
        try:
            self._send_chunks(path, upload)
        except UploadGone:
            upload.forget()  # nothing to resume: the next run starts afresh
            raise
        upload.forget()
        return url

    def _open(self, path: Path) -> TusFileUpload:
        def open_upload() -> TusFileUpload:
            return TusFileUpload(path, self._http, self._options, self._storage)

        try:
            return self._retrying(path, open_upload)
        except UploadGone as gone:
            self._say(f"{path.name}: starting a new upload ({gone})")
            fingerprint = FileFingerprint(self._options.endpoint).of_path(path)
            self._storage.remove_item(fingerprint)
            return open_upload()  # nothing stored now: no request is made

    def _send_chunks(self, path: Path, upload: TusFileUpload) -> None:
        with tqdm(
            total=upload.size,
            initial=upload.offset,
            desc=path.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._err,
            dynamic_ncols=True,
            mininterval=0.25,
        ) as bar:
            upload.on_progress = lambda offset: bar.update(offset - bar.n)
            while upload.offset < upload.size:
                self._retrying(path, upload.upload_chunk)

    def _retrying(self, path: Path, action: Callable[[], T]) -> T:
        def note(error: Retryable, delay: float, retry: int) -> None:
            tries = self._options.retry.retries
            self._say(f"{path.name}: {error}; trying again in {delay:g} s ({retry}/{tries})")

        return call_with_retries(action, self._options.retry, note)

    def _say(self, line: str) -> None:
        tqdm.write(line, file=self._err)


def upload_files(paths: Sequence[Path], options: UploadOptions, out: TextIO, err: TextIO) -> bool:
    """Uploads every file in turn; True only if each one is complete.

    Raises `UsageError` before any request if a file or the URL is unusable, and
    `UploadFailed` if the URL is not a reachable tus server. Each finished upload's URL is
    one line on `out`; a file that fails is one `error:` line on `err`, and the next file
    is tried, unless the server stopped answering (`GaveUp`): then the run stops.
    """
    check_usage(paths, options.endpoint)
    http = Http(options.token)
    try:
        check_server(http, options.endpoint, options.checksum)
        storage = open_state(options.state_path)
        try:
            return _upload_each(paths, UploadRun(options, http, storage, err), out, err)
        finally:
            storage.close()  # type: ignore[no-untyped-call]
    finally:
        http.close()


def _upload_each(paths: Sequence[Path], run: UploadRun, out: TextIO, err: TextIO) -> bool:
    complete = True
    for index, path in enumerate(paths):
        try:
            url = run.upload(path)
        except GaveUp as error:
            print(f"error: {path}: {error}; run the command again to resume", file=err)
            if rest := paths[index + 1 :]:
                print(f"error: not tried: {', '.join(map(str, rest))}", file=err)
            return False
        except (UploadFailed, OSError) as error:
            print(f"error: {path}: {error}", file=err)
            complete = False
            continue
        print(url, file=out, flush=True)
    return complete
