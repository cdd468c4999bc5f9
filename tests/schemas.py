"""The published API documents as validators: what the docs say is what the tests check.

`docs/openapi.yaml` (REST) and `docs/asyncapi.yaml` (Socket.IO) are loaded once. Each is
registered as one JSON Schema resource, so a `#/components/...` reference inside a schema
resolves against the document it came from:

    validate_rest("UploadStatus", body)      # components.schemas.UploadStatus
    validate_event("uploadProgress", payload)  # components.messages.uploadProgress.payload

Both raise `jsonschema.ValidationError` with the path of the offending value. Formats are
checked too (`date-time`, `uri`) with checkers of our own, so the result does not depend
on which optional jsonschema extras happen to be installed.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCS = Path(__file__).resolve().parent.parent / "docs"
OPENAPI_PATH = DOCS / "openapi.yaml"
ASYNCAPI_PATH = DOCS / "asyncapi.yaml"
OPENAPI_URI = "urn:formforge:openapi"
ASYNCAPI_URI = "urn:formforge:asyncapi"

# RFC 3339 date-time (what OpenAPI/JSON Schema `format: date-time` means).
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings
    if not _DATE_TIME.fullmatch(value):
        return False
    datetime.fromisoformat(value.replace("z", "Z"))  # raises on 2024-02-30 and the like
    return True


@FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and (parts.netloc or parts.path)) and " " not in value


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


@functools.cache
def openapi() -> dict[str, Any]:
    return load_yaml(OPENAPI_PATH)


@functools.cache
def asyncapi() -> dict[str, Any]:
    return load_yaml(ASYNCAPI_PATH)


@functools.cache
def _registry() -> Registry:
    resources = [
        (uri, Resource.from_contents(document, default_specification=DRAFT202012))
        for uri, document in ((OPENAPI_URI, openapi()), (ASYNCAPI_URI, asyncapi()))
    ]
    return Registry().with_resources(resources)


@functools.cache
def _validator(uri: str, pointer: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{uri}#{pointer}"}, registry=_registry(), format_checker=FORMATS
    )


def validate_rest(schema_name: str, body: Any) -> None:
    """Validate a REST JSON body against `components.schemas.<schema_name>` of openapi.yaml."""
    assert schema_name in openapi()["components"]["schemas"], f"no schema {schema_name!r}"
    _validator(OPENAPI_URI, f"/components/schemas/{schema_name}").validate(body)


def validate_event(event_name: str, payload: Any) -> None:
    """Validate a Socket.IO payload against the message `<event_name>` of asyncapi.yaml.

    Event names are the message names: the events (`uploadProgress`, `uploadComplete`,
    `uploadError`, `joinUploadRoom`, `leaveUploadRoom`) and the acknowledgements
    (`joinUploadRoomAck`, `leaveUploadRoomAck`).
    """
    messages = asyncapi()["components"]["messages"]
    assert event_name in messages, f"no message {event_name!r}"
    _validator(ASYNCAPI_URI, f"/components/messages/{event_name}/payload").validate(payload)
