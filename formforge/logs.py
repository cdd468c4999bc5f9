"""The server's log lines (`server.log_format`): text for people, or one JSON object a line.

Messages follow one convention: a few words, then `key=value` fields
(`created upload_id=... size=...`). The JSON format splits them back: `event` is the words,
each field its own key. Every line written while an HTTP request is handled (or by work that
request started) also carries its request id, kept in a context variable that asyncio copies
into every task the request creates.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("formforge_request_id", default=None)

# A field starts at a space followed by `name=`; its value runs to the next field, so a value
# with spaces (an error's message) stays whole.
_FIELD = re.compile(r" (?=[a-z][a-z0-9_]*=)")
_NAME_VALUE = re.compile(r"([a-z][a-z0-9_]*)=(.*)", re.DOTALL)
_RESERVED = frozenset({"time", "level", "logger", "event", "request_id", "exception"})


def current_request_id() -> str | None:
    """The id of the HTTP request being handled here, if any."""
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with `request_id=` appended where there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return line
        head, newline, trace = line.partition("\n")
        return f"{head} request_id={request_id}{newline}{trace}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO-8601 UTC), level, logger, event, its fields."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = split_fields(record.getMessage())
        line: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        line.update((name, value) for name, value in fields.items() if name not in _RESERVED)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def split_fields(message: str) -> tuple[str, dict[str, str]]:
    """`"created upload_id=abc size=3"` -> `("created", {"upload_id": "abc", "size": "3"})`."""
    event, *parts = _FIELD.split(message)
    fields: dict[str, str] = {}
    for part in parts:
        match = _NAME_VALUE.fullmatch(part)
        if match is not None:
            fields[match.group(1)] = match.group(2)
    return event, fields


def configure_logging(log_format: LogFormat) -> None:
    """Every line to standard error, at INFO and above, in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _utc_time(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
