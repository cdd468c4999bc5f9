"""The `formforge` command line: `formforge serve` and `formforge upload`.

This is the one module that touches `os.environ`: it hands it to
`load_settings` together with the flags. Expected failures (a bad config, a
port in use) are one line on standard error and an exit status, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from formforge.config import ConfigError, Settings, load_settings
from formforge.core.checksum import HASHERS
from formforge.logs import configure_logging
from formforge.runtime.event_loop import loop_factory
from formforge.runtime.imports import import_socketio_for_a_server
from formforge.runtime.memory import tune_allocator, tune_collector

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad flags or bad config: what argparse uses for bad usage too
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
STOP_TIMEOUT_SECONDS = 8.0  # SIGTERM must end the process "within a few seconds"


class ServerLike(Protocol):
    """What `serve` needs of `formforge.server.Server`."""

    async def start(self) -> str: ...
    async def stop(self) -> None: ...


ServerFactory = Callable[[Settings], ServerLike]


def main(argv: list[str] | None = None) -> int:
    """Runs one `formforge` command and returns its exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0), or bad usage (2) already reported by argparse
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="formforge", description="Resumable upload server.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_upload(commands)
    return parser


# --- formforge serve -------------------------------------------------------------------


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the upload server",
        description="Run the upload server. Flags override the environment (FORMFORGE_HOST, "
        "FORMFORGE_PORT, FORMFORGE_DATA_DIR, FORMFORGE_CONFIG), which overrides the config file.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on, 0 for any free one")
    serve.add_argument("--data-dir", help="where uploads are stored (default ./data)")
    serve.add_argument("--config", metavar="PATH", help="YAML config (default ./config.yaml)")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes sharing the port, to use every core (default 1)",
    )
    serve.set_defaults(command=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            config_path=args.config,
            environ=os.environ,
            overrides={"host": args.host, "port": args.port, "data_dir": args.data_dir},
        )
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.server.log_format)
    tune_allocator()  # before the first big buffer; forked workers inherit it
    import_socketio_for_a_server(redis=settings.cluster.redis_url is not None)
    if args.workers > 1:
        return _supervise(settings, args.workers)
    return _run_loop(settings, run_server(settings, _load_server_class()))


def _run_loop(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=loop_factory(settings.server.event_loop)) as runner:
        return runner.run(main)


def _supervise(settings: Settings, workers: int) -> int:
    from formforge.runtime.workers import supervise

    def run_worker(server: ServerLike) -> int:
        return _run_loop(settings, run_server(settings, lambda _: server, announce=False))

    try:
        return supervise(settings, workers, run_worker, announce_url)
    except OSError as error:
        print(_start_error_line(settings, error), file=sys.stderr)
        return EXIT_FAILURE


def _load_server_class() -> ServerFactory:
    # Imported late: the server pulls in tornado and socketio, which a config
    # error, --help or (later) `formforge upload` do not need.
    from formforge.server import Server

    return Server


async def run_server(
    settings: Settings, server_factory: ServerFactory, announce: bool = True
) -> int:
    """Serves until SIGTERM or SIGINT, then stops the server; returns the exit status.

    Prints the URL as the one line on standard output once the server listens (a worker
    under `--workers` does not: its supervisor does, once).
    """
    stop_requested = asyncio.Event()
    if announce:
        _install_signal_handlers(stop_requested, (signal.SIGTERM, signal.SIGINT), _on_signal)
    else:
        # A worker may get SIGTERM twice (from its supervisor and from a service manager
        # that signals the whole group); the second must not cut the clean stop short.
        _install_signal_handlers(stop_requested, (signal.SIGTERM,), _on_worker_signal)
    server = server_factory(settings)
    try:
        url = await server.start()
    except OSError as error:
        print(_start_error_line(settings, error), file=sys.stderr)
        return EXIT_FAILURE
    tune_collector()
    if announce:
        announce_url(url)
    await stop_requested.wait()
    await _stop(server)
    return EXIT_OK


def announce_url(url: str) -> None:
    """The start-up line, in one write: workers logging meanwhile cannot split it."""
    sys.stdout.write(url + "\n")
    sys.stdout.flush()


def _start_error_line(settings: Settings, error: OSError) -> str:
    if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and not error.filename:
        where = f"{settings.server.host}:{settings.server.port}"
        return f"error: cannot listen on {where}: {error.strerror}"
    return f"error: cannot start the server: {error}"


def _install_signal_handlers(
    stop_requested: asyncio.Event,
    signals: tuple[signal.Signals, ...],
    handler: Callable[[int, asyncio.Event], None],
) -> None:
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, handler, signum, stop_requested)
    # A worker is forked with these blocked (runtime/workers.py): one that came meanwhile is
    # delivered now, to the handler, instead of being lost or killing it half-started.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _on_worker_signal(signum: int, stop_requested: asyncio.Event) -> None:
    if not stop_requested.is_set():
        logger.info("stopping signal=%s", signal.Signals(signum).name)
        stop_requested.set()


def _on_signal(signum: int, stop_requested: asyncio.Event) -> None:
    name = signal.Signals(signum).name
    if not stop_requested.is_set():
        logger.info("stopping signal=%s", name)
        stop_requested.set()
        return
    # The operator asked twice: stop waiting for a clean stop.
    logger.warning("second signal, exiting now signal=%s", name)
    _force_exit()


def _force_exit() -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)


async def _stop(server: ServerLike) -> None:
    try:
        await asyncio.wait_for(server.stop(), STOP_TIMEOUT_SECONDS)
    except TimeoutError:
        # Bytes already written are in the files; what is lost is only the tidy-up.
        logger.warning("stop timed out, exiting anyway timeout_seconds=%s", STOP_TIMEOUT_SECONDS)


# --- formforge upload ------------------------------------------------------------------

UPLOAD_CHUNK_SIZE = 8 * 1024 * 1024
UPLOAD_RETRIES = 7  # eight tries per request: about 30 s of backoff (0.5 s doubling to 8 s)


def _add_upload(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upload = commands.add_parser(
        "upload",
        help="upload files to a tus server",
        description="Upload files over tus with a progress bar each; an interrupted upload "
        "of the same file resumes on the next run. Prints each finished upload's URL. "
        "Upload URLs are kept in $FORMFORGE_UPLOAD_STATE, else "
        "$XDG_CACHE_HOME/formforge/uploads.json (default ~/.cache/formforge/uploads.json). "
        "A server with auth.bearer_tokens needs one of them in $FORMFORGE_TOKEN.",
    )
    upload.add_argument("files", nargs="+", metavar="FILE", type=Path)
    upload.add_argument(
        "--url", required=True, help="the tus creation URL, e.g. http://127.0.0.1:3000/files/"
    )
    upload.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=UPLOAD_CHUNK_SIZE,
        metavar="BYTES",
        help=f"bytes per PATCH request (default {UPLOAD_CHUNK_SIZE})",
    )
    upload.add_argument(
        "--checksum",
        choices=sorted(HASHERS),
        help="send each chunk's checksum (Upload-Checksum) for the server to verify",
    )
    upload.add_argument(
        "--retries",
        type=_non_negative_int,
        default=UPLOAD_RETRIES,
        metavar="N",
        help="how often a request that failed for a passing reason (no connection, "
        f"5xx, 409, 423) is tried again, with backoff (default {UPLOAD_RETRIES})",
    )
    upload.set_defaults(command=_upload)


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def upload_state_path(environ: Mapping[str, str]) -> Path:
    """Where `formforge upload` keeps upload URLs between runs."""
    if environ.get("FORMFORGE_UPLOAD_STATE"):
        return Path(environ["FORMFORGE_UPLOAD_STATE"]).expanduser()
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "formforge" / "uploads.json"


def _upload(args: argparse.Namespace) -> int:
    # Imported late: requests, tqdm and tuspy (the `client` extra) are not needed to serve.
    try:
        from formforge.client import http, upload
    except ImportError as error:
        print(
            f"formforge upload: {error.name} is not installed; pip install 'formforge[client]'",
            file=sys.stderr,
        )
        return 2

    options = upload.UploadOptions(
        endpoint=args.url,
        state_path=upload_state_path(os.environ),
        chunk_size=args.chunk_size,
        checksum=args.checksum,
        retry=http.RetryPolicy(retries=args.retries),
        token=os.environ.get("FORMFORGE_TOKEN") or None,
    )
    try:
        complete = upload.upload_files(args.files, options, out=sys.stdout, err=sys.stderr)
    except http.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except http.UploadFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if complete else EXIT_FAILURE
