"""The configuration file: YAML read strictly (a key given twice is an error), its
top level a mapping of sections. Validation of the values is `config.py`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.resolver import BaseResolver


class UnreadableFile(Exception):
    """The file cannot be read as a mapping of sections; the message says why, in one line."""


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            continue  # anything else is left to SafeLoader and then to validation
        if key in seen:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_YamlLoader.add_constructor(BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error_message(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_sections(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UnreadableFile(f"cannot read file: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UnreadableFile("cannot read file: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_YamlLoader)  # safe: _YamlLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise UnreadableFile(_yaml_error_message(error)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnreadableFile("the top level must be a mapping of sections")
    # A section whose keys are all commented out reads as null: take it as "all defaults".
    return {key: {} if value is None else value for key, value in data.items()}
