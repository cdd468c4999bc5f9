"""Settings from YAML data: strict types and bounds, checked into frozen dataclasses.

`config.py` declares each section as a dataclass whose type hints (with `Annotated` bounds)
say what a key takes; `build` checks a mapping against them strictly: "yes", "60" or 1 are
not taken for a bool, a number or a string, and a key no section has is an error. The first
problem found is raised as `Invalid`, with where it is (`loc`) and a message worded for a
config file. This replaced pydantic, whose import and models were 10 MiB of the idle
server's 49 (docs/benchmarks.md); the wording of the messages is pydantic's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
Loc = tuple[str | int, ...]


class Invalid(ValueError):
    """A value a setting does not take; `loc` is where: section, key, list index."""

    def __init__(self, message: str, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


@dataclasses.dataclass(frozen=True)
class Bounds:
    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def check(self, value: float) -> None:
        if self.gt is not None and not value > self.gt:
            raise Invalid(f"Input should be greater than {_number(self.gt)}")
        if self.ge is not None and not value >= self.ge:
            raise Invalid(f"Input should be greater than or equal to {_number(self.ge)}")
        if self.le is not None and not value <= self.le:
            raise Invalid(f"Input should be less than or equal to {_number(self.le)}")


@dataclasses.dataclass(frozen=True)
class Finite:
    def check(self, value: float) -> None:
        if not math.isfinite(value):
            raise Invalid("Input should be a finite number")


@dataclasses.dataclass(frozen=True)
class MinLength:
    length: int

    def check(self, value: str) -> None:
        if len(value) < self.length:
            raise Invalid(f"String should have at least {self.length} characters")


@dataclasses.dataclass(frozen=True)
class Pattern:
    regex: str

    def check(self, value: str) -> None:
        if re.search(self.regex, value) is None:
            raise Invalid(f"String should match pattern '{self.regex}'")


@dataclasses.dataclass(frozen=True)
class Before:
    """Turns the value as given into one the type takes, or raises `Invalid`."""

    convert: Callable[[object], object]


def build(cls: type[T], data: object, loc: Loc = ()) -> T:
    """An instance of the dataclass `cls` from a mapping of its fields, every value checked."""
    if not isinstance(data, Mapping):
        raise Invalid("Input should be a mapping", loc)
    hints = hints_of(cls)  # type: ignore[arg-type]  # a class is hashable
    for key in data:
        if key not in hints:
            raise Invalid("unknown key", (*loc, key))
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = field.default is dataclasses.MISSING
        if required and field.default_factory is dataclasses.MISSING and field.name not in data:
            raise Invalid("Field required", (*loc, field.name))
    values = {key: convert(hints[key], value, (*loc, key)) for key, value in data.items()}
    try:
        return cls(**values)
    except Invalid as error:  # a check across the section's keys (`__post_init__`)
        raise Invalid(error.message, (*loc, *error.loc)) from None


def convert(hint: Any, value: object, loc: Loc) -> Any:
    """`value` as the type `hint` takes it, or `Invalid` at `loc`."""
    try:
        return _convert(hint, value, loc)
    except Invalid as error:
        raise Invalid(error.message, error.loc or loc) from None


def _convert(hint: Any, value: object, loc: Loc) -> Any:
    origin = get_origin(hint)
    if origin is Annotated:
        base, *checks = get_args(hint)
        for check in checks:
            if isinstance(check, Before):
                value = check.convert(value)
        value = convert(base, value, loc)
        for check in checks:
            if not isinstance(check, Before):
                check.check(value)
        return value
    if origin is Union or origin is types.UnionType:
        return _one_of(get_args(hint), value, loc)
    if origin is Literal:
        choices = get_args(hint)
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return value
        raise Invalid(f"Input should be {_choices(choices)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise Invalid("Input should be a valid list")
        (item,) = (arg for arg in get_args(hint) if arg is not Ellipsis)
        return tuple(convert(item, element, (*loc, i)) for i, element in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build(hint, value, loc)  # type: ignore[arg-type]
    return _scalar(hint, value)


def _one_of(options: tuple[Any, ...], value: object, loc: Loc) -> Any:
    if value is None and type(None) in options:
        return None
    first: Invalid | None = None
    for option in options:
        if option is type(None):
            continue
        try:
            return convert(option, value, loc)
        except Invalid as error:
            first = first or error
    assert first is not None
    raise first


def _scalar(hint: Any, value: object) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Invalid("Input should be a valid boolean")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise Invalid("Input should be a valid integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise Invalid("Input should be a valid number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise Invalid("Input should be a valid string")
    if hint is Path:  # written as a string in YAML and flags
        if isinstance(value, str | Path):
            return Path(value)
        raise Invalid("Input should be a path")
    raise TypeError(f"no settings type {hint!r}")  # a declaration the checks do not know


@functools.cache
def hints_of(cls: Any) -> dict[str, Any]:
    """The dataclass's fields and their types, `Annotated` checks included."""
    return get_type_hints(cls, include_extras=True)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _choices(choices: tuple[object, ...]) -> str:
    quoted = [repr(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
