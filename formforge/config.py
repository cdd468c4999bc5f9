"""Typed settings, built in one place: built-in defaults < YAML file < environment < flags.

Nothing else in FormForge reads YAML or the environment: `formforge.cli` hands
`os.environ` and the parsed flags to `load_settings`, and every other module gets
the resulting immutable `Settings`. Attribute names are exactly the YAML keys of
the repository's `config.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from formforge.auth import read_token_file
from formforge.config_file import UnreadableFile, read_sections
from formforge.config_values import (
    Before,
    Bounds,
    Finite,
    Invalid,
    MinLength,
    Pattern,
    build,
    convert,
    hints_of,
)
from formforge.logs import LogFormat
from formforge.runtime.event_loop import EventLoopChoice, uvloop_installed

DEFAULT_CONFIG_FILE = Path("config.yaml")


class ConfigError(Exception):
    """A configuration that cannot be used; `str()` is one line naming the key and its source.

    `source` is where the bad value came from: the config file's path as given,
    or e.g. `environment variable FORMFORGE_PORT` / `flag --port`.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.message = message
        self.source = source
        self.key = key
        super().__init__(self._line())

    def _line(self) -> str:
        where = f"config error in {self.source}" if self.source else "config error"
        what = f"{self.key}: {self.message}" if self.key else self.message
        # One line whatever the path or the YAML parser's message contains.
        return f"{where}: {what}".replace("\n", " ")


# --- value types -------------------------------------------------------------------


def _tokens_source(value: object) -> object:
    """auth.bearer_tokens is a list of tokens, a path to a file of tokens, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(token, str) for token in value):
        return tuple(value)
    raise Invalid("Input should be a list of tokens, a path to a file of tokens, or null")


Seconds = Annotated[float, Bounds(gt=0), Finite()]
PositiveInt = Annotated[int, Bounds(gt=0)]
Strings = tuple[str, ...]  # YAML gives lists; tuples keep a frozen Settings immutable all through
ChecksumAlgorithm = Literal["sha1", "md5", "sha256", "crc32"]
HttpUrl = Annotated[str, Pattern(r"^https?://\S+$")]

# Every section below is a frozen dataclass, checked strictly by `config_values.build`.


@dataclass(frozen=True, kw_only=True)
class HookTarget:
    """Exactly one of: an HTTP endpoint, a command line, or a Python callable."""

    http: HttpUrl | None = None
    command: Annotated[str, MinLength(1)] | None = None
    python: Annotated[str, Pattern(r"^[\w.]+:[\w.]+$")] | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("http", "command", "python") if getattr(self, name) is not None]
        if len(given) != 1:
            raise Invalid("a hook target has exactly one of the keys http, command, python")


HookTargets = tuple[HookTarget, ...]


# --- sections ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: Annotated[int, Bounds(ge=0, le=65535)] = 3000  # 0: the OS picks a free port
    public_url: HttpUrl | None = None
    cors_origins: Strings = ("*",)
    idle_timeout_seconds: Seconds = 60.0
    backlog: PositiveInt | None = None  # listen queue; None: the kernel's limit (somaxconn)
    # Slow bodies read about once a second (fronts/lowwater.py): less than half the CPU per
    # slow phone. False reads every body as its bytes arrive.
    receive_low_water: bool = True
    event_loop: EventLoopChoice = "auto"
    log_format: LogFormat = "text"


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """storage.backend: s3 — any S3-compatible engine. Unset keys fall back to the usual
    AWS sources (environment, shared credentials) as botocore reads them."""

    bucket: Annotated[str, MinLength(3)]
    endpoint: HttpUrl | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None
    part_size: Annotated[int, Bounds(ge=5 * 1024 * 1024, le=5 * 1024**3)] = 8 * 1024 * 1024
    prefix: str = ""


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    backend: Literal["file", "s3"] = "file"
    path: Path = Path("data")  # a string in YAML and flags
    fsync: bool = True
    s3: S3Settings | None = None

    def __post_init__(self) -> None:
        if self.backend == "s3" and self.s3 is None:
            raise Invalid("backend s3 needs a storage.s3 section")


@dataclass(frozen=True, kw_only=True)
class LimitsSettings:
    max_size: PositiveInt = 107374182400
    max_metadata_bytes: PositiveInt = 16384
    bandwidth_per_upload: PositiveInt | None = None
    bandwidth_total: PositiveInt | None = None
    max_concurrent_uploads: PositiveInt | None = None


@dataclass(frozen=True, kw_only=True)
class ExpirationSettings:
    unfinished_ttl_seconds: Seconds = 86400.0
    sweep_interval_seconds: Seconds = 60.0


@dataclass(frozen=True, kw_only=True)
class ChecksumSettings:
    algorithms: tuple[ChecksumAlgorithm, ...] = ("sha1", "md5", "sha256", "crc32")

    def __post_init__(self) -> None:
        if len(set(self.algorithms)) != len(self.algorithms):
            raise Invalid("an algorithm is listed twice")


@dataclass(frozen=True, kw_only=True)
class EventsSettings:
    progress_interval_ms: Annotated[int, Bounds(ge=0)] = 250


@dataclass(frozen=True, kw_only=True)
class HooksSettings:
    timeout_seconds: Seconds = 10.0
    pre_create: HookTargets = ()
    post_finish: HookTargets = ()
    post_terminate: HookTargets = ()


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    bearer_tokens: Annotated[tuple[str, ...] | str | None, Before(_tokens_source)] = None


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    redis_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class FileSettings:
    """Exactly what a config file may contain: one key per section. A section may be given as
    a mapping of its keys (`Settings(storage={"path": "/srv/uploads"})`): it is checked as a
    config file's would be, and an unusable value raises `config_values.Invalid`."""

    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    expiration: ExpirationSettings = field(default_factory=ExpirationSettings)
    checksum: ChecksumSettings = field(default_factory=ChecksumSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def __post_init__(self) -> None:
        hints = hints_of(FileSettings)
        for section in fields(FileSettings):
            given = getattr(self, section.name)
            if isinstance(given, Mapping):
                checked = convert(hints[section.name], given, (section.name,))
                object.__setattr__(self, section.name, checked)


@dataclass(frozen=True, kw_only=True)
class Settings(FileSettings):
    """The whole, checked, immutable configuration; `Settings()` is the built-in defaults.

    `config_file` is the file the values were read from (None: no file); it is
    not a key a config file may set.
    """

    config_file: Path | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Settings:
        """Settings from a mapping of sections, as a config file gives them; raises
        `ConfigError` for anything unusable, as `load_settings` does."""
        return cls(**_checked_sections(data, None, {}))


def _checked_sections(
    data: Mapping[str, object], file_source: str | None, origins: Mapping[str, str]
) -> dict[str, Any]:
    """The sections of `data`, each checked; `ConfigError` names where a bad value came from."""
    try:
        sections = build(FileSettings, data)
    except Invalid as error:
        raise _config_error(error, file_source, origins) from None
    return {section.name: getattr(sections, section.name) for section in fields(FileSettings)}


# --- checks that need more than one field -----------------------------------------------


def _check_tokens(setting: tuple[str, ...] | str | None, source: str | None) -> None:
    """No token at all would refuse every request: surely a mistake, so say so at start-up."""
    if setting is None:
        return
    key = "auth.bearer_tokens"
    try:
        tokens = read_token_file(Path(setting)) if isinstance(setting, str) else setting
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"cannot read {setting}: {reason}", source=source, key=key) from None
    if not tokens or not all(tokens):
        raise ConfigError(
            "no tokens (or an empty one): every request would be refused", source=source, key=key
        )


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        return read_sections(path)
    except UnreadableFile as error:
        raise ConfigError(str(error), source=str(path)) from None


def _choose_file(config_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config, else FORMFORGE_CONFIG, else ./config.yaml if it exists, else no file."""
    named = config_path or environ.get("FORMFORGE_CONFIG")
    if named:
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


# --- environment and flags -------------------------------------------------------------


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


@dataclass(frozen=True)
class _Override:
    """One setting that an environment variable and a flag can set."""

    key: str  # dotted settings key
    env: str
    flag: str  # key in `overrides`; the command line spells it --flag-name
    parse_env: Callable[[str], object]


_OVERRIDES = (
    _Override("server.host", "FORMFORGE_HOST", "host", str),
    _Override("server.port", "FORMFORGE_PORT", "port", _parse_int),
    _Override("storage.path", "FORMFORGE_DATA_DIR", "data_dir", str),
)


def _set_dotted(data: dict[str, Any], key: str, value: object) -> None:
    section, name = key.split(".")
    current = data.get(section)
    # A non-mapping section is left alone so that validation reports it against the file.
    if current is None:
        data[section] = {name: value}
    elif isinstance(current, dict):
        data[section] = {**current, name: value}


def _apply_overrides(
    data: dict[str, Any], environ: Mapping[str, str], overrides: Mapping[str, object]
) -> dict[str, str]:
    """Lays environment, then flags, over the file's data; returns key -> source of its value."""
    unknown = set(overrides) - {override.flag for override in _OVERRIDES}
    if unknown:
        raise ValueError(f"unknown override keys: {sorted(unknown)}")  # a caller's bug
    origins: dict[str, str] = {}
    for override in _OVERRIDES:
        text = environ.get(override.env)
        if text:  # an empty variable counts as unset, as shells make that easy to do by accident
            origin = f"environment variable {override.env}"
            try:
                _set_dotted(data, override.key, override.parse_env(text))
            except ValueError as error:
                raise ConfigError(str(error), source=origin) from None
            origins[override.key] = origin
        flag_value = overrides.get(override.flag)
        if flag_value is not None:
            _set_dotted(data, override.key, flag_value)
            origins[override.key] = "flag --" + override.flag.replace("_", "-")
    return origins


# --- putting it together ----------------------------------------------------------------


def _dotted(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _config_error(
    error: Invalid, file_source: str | None, origins: Mapping[str, str]
) -> ConfigError:
    key = _dotted(error.loc)
    return ConfigError(error.message, source=origins.get(key, file_source), key=key or None)


def _check_event_loop(choice: EventLoopChoice, source: str | None) -> None:
    if choice == "uvloop" and not uvloop_installed():
        raise ConfigError(
            "uvloop is not installed (pip install 'formforge[fast]')",
            source=source,
            key="server.event_loop",
        )


def load_settings(
    *, config_path: str | None, environ: Mapping[str, str], overrides: Mapping[str, object]
) -> Settings:
    """Builds the settings: built-in defaults < YAML file < environment < flags.

    `config_path` is --config (None: not given); `environ` the process environment;
    `overrides` the flags "host", "port", "data_dir" (None: not given). Raises
    ConfigError for anything unusable: a missing or unreadable file, broken YAML,
    an unknown key, a wrong type or range, a bad environment value, or a feature
    that is not supported yet. Reads the file system but writes nothing.
    """
    path = _choose_file(config_path, environ)
    file_source = str(path) if path else None
    data = _read_config_file(path) if path else {}
    origins = _apply_overrides(data, environ, overrides)
    sections = _checked_sections(data, file_source, origins)
    _check_tokens(sections["auth"].bearer_tokens, file_source)
    _check_event_loop(sections["server"].event_loop, file_source)  # set in the file only
    return Settings(**sections, config_file=path)
