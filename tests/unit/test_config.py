"""Settings: defaults < YAML file < environment < flags, and one clear line for every bad config."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from formforge import config
from formforge.config import ConfigError, Settings, load_settings
from formforge.config_values import Invalid

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs where no ./config.yaml exists unless it writes one."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(
    config_path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: object,
) -> Settings:
    return load_settings(
        config_path=None if config_path is None else str(config_path),
        environ=environ or {},
        overrides=overrides,
    )


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.write_text(text)
    return path


def config_error(
    path: str | Path | None = None, environ: dict[str, str] | None = None, **overrides: object
) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path, environ, **overrides)
    line = str(caught.value)
    assert "\n" not in line
    return line


# --- defaults and the documented config.yaml ---------------------------------------------


def test_no_file_no_env_no_flags_gives_the_defaults() -> None:
    settings = load()
    assert settings == Settings()
    assert settings.config_file is None
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 3000)
    assert settings.storage.path == Path("./data")
    assert settings.checksum.algorithms == ("sha1", "md5", "sha256", "crc32")


def test_repository_config_yaml_gives_exactly_the_defaults() -> None:
    settings = load(REPO_CONFIG)
    assert settings.config_file == REPO_CONFIG
    assert dataclasses.replace(settings, config_file=None) == Settings()


def _leaf_keys(value: object, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_leaf_keys(v, f"{prefix}{k}.") for k, v in value.items()))
    if dataclasses.is_dataclass(value):
        fields = [field.name for field in dataclasses.fields(value)]
        return set().union(*(_leaf_keys(getattr(value, k), f"{prefix}{k}.") for k in fields))
    return {prefix.rstrip(".")}


def test_repository_config_yaml_documents_every_key() -> None:
    documented = _leaf_keys(yaml.safe_load(REPO_CONFIG.read_text()))
    assert documented == _leaf_keys(config.FileSettings())


def test_empty_file_and_empty_section_mean_defaults() -> None:
    assert dataclasses.replace(load(write("empty.yaml", "")), config_file=None) == Settings()
    settings = load(write("sections.yaml", "server:\nhooks:\n"))
    assert settings.server == Settings().server


# --- precedence: flags > environment > file > defaults -------------------------------------

# setting key, env variable, flag, then the value each layer gives and the typed result
LAYERED = [
    ("server.host", "FORMFORGE_HOST", "host", ("10.0.0.1", "10.0.0.2", "10.0.0.3"), None),
    ("server.port", "FORMFORGE_PORT", "port", (1111, "2222", 3333), (1111, 2222, 3333)),
    ("storage.path", "FORMFORGE_DATA_DIR", "data_dir", ("f", "e", "x"), tuple(map(Path, "fex"))),
]


@pytest.mark.parametrize(("key", "env_name", "flag", "given", "typed"), LAYERED)
@pytest.mark.parametrize(
    ("layers", "winner"),
    [
        ((), None),
        (("file",), 0),
        (("env",), 1),
        (("flag",), 2),
        (("file", "env"), 1),
        (("file", "flag"), 2),
        (("env", "flag"), 2),
        (("file", "env", "flag"), 2),
    ],
)
def test_precedence(key, env_name, flag, given, typed, layers, winner) -> None:
    section, name = key.split(".")
    path = (
        write("c.yaml", yaml.safe_dump({section: {name: given[0]}})) if "file" in layers else None
    )
    environ = {env_name: str(given[1])} if "env" in layers else {}
    overrides = {flag: given[2]} if "flag" in layers else {}
    settings = load(path, environ, **overrides)
    expected = (
        getattr(getattr(Settings(), section), name) if winner is None else (typed or given)[winner]
    )
    assert getattr(getattr(settings, section), name) == expected


def test_flags_given_as_none_are_not_given() -> None:
    settings = load(None, {"FORMFORGE_PORT": "4000"}, host=None, port=None, data_dir=None)
    assert settings.server.port == 4000


def test_empty_environment_variable_counts_as_unset() -> None:
    assert load(None, {"FORMFORGE_PORT": "", "FORMFORGE_HOST": ""}).server == Settings().server


def test_port_zero_means_any_free_port() -> None:
    assert load(port=0).server.port == 0


# which file is read: --config, else FORMFORGE_CONFIG, else ./config.yaml if it exists
@pytest.mark.parametrize(
    ("flag", "env", "cwd_file", "chosen"),
    [
        (None, None, False, None),
        (None, None, True, "config.yaml"),
        (None, "env.yaml", True, "env.yaml"),
        ("flag.yaml", "env.yaml", True, "flag.yaml"),
        ("flag.yaml", None, False, "flag.yaml"),
    ],
)
def test_config_file_selection(flag, env, cwd_file, chosen) -> None:
    for name in ("flag.yaml", "env.yaml", "config.yaml"):
        if name != "config.yaml" or cwd_file:
            write(name, f"server: {{host: {name}}}")
    settings = load(flag, {"FORMFORGE_CONFIG": env} if env else {})
    assert settings.config_file == (Path(chosen) if chosen else None)
    assert settings.server.host == (chosen or "127.0.0.1")


# --- bad config: one line naming the key and the file ---------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("bogus: 1", "bogus", "unknown key"),
        ("server: {bogus: 1}", "server.bogus", "unknown key"),
        ("config_file: other.yaml", "config_file", "unknown key"),
        ("storage: {s3: {bucket: b}}", "storage.s3.bucket", "at least 3 characters"),
        ("storage: {backend: s3}", "storage", "backend s3 needs a storage.s3 section"),
        ("storage: {backend: ftp}", "storage.backend", "'file' or 's3'"),
        ("server: 5", "server", "should be a mapping"),
        ("storage: {fsync: maybe}", "storage.fsync", "valid boolean"),
        ("server: {port: '3000'}", "server.port", "valid integer"),
        ("server: {port: 70000}", "server.port", "less than or equal to 65535"),
        ("server: {port: true}", "server.port", "valid integer"),
        ("server: {host: 127}", "server.host", "valid string"),
        ("server: {cors_origins: '*'}", "server.cors_origins", "valid list"),
        ("server: {public_url: example.com}", "server.public_url", "should match pattern"),
        ("server: {idle_timeout_seconds: 0}", "server.idle_timeout_seconds", "greater than 0"),
        (
            "expiration: {unfinished_ttl_seconds: .inf}",
            "expiration.unfinished_ttl_seconds",
            "finite",
        ),
        ("limits: {max_size: 100GiB}", "limits.max_size", "valid integer"),
        ("limits: {max_metadata_bytes: -1}", "limits.max_metadata_bytes", "greater than 0"),
        (
            "events: {progress_interval_ms: -1}",
            "events.progress_interval_ms",
            "greater than or equal to 0",
        ),
        ("checksum: {algorithms: [sha1, sha512]}", "checksum.algorithms[1]", "'sha1', 'md5'"),
        ("checksum: {algorithms: [md5, md5]}", "checksum", "listed twice"),
        ("hooks: {pre_create: [{}]}", "hooks.pre_create[0]", "exactly one of"),
        (
            "hooks: {post_finish: [{http: 'http://h', command: ls}]}",
            "hooks.post_finish[0]",
            "exactly one of",
        ),
        ("hooks: {pre_create: [{python: 'no colon'}]}", "hooks.pre_create[0].python", "pattern"),
        ("hooks: {pre_create: [{sql: x}]}", "hooks.pre_create[0].sql", "unknown key"),
        ("auth: {bearer_tokens: 5}", "auth.bearer_tokens", "list of tokens"),
        ("auth: {bearer_tokens: [1, 2]}", "auth.bearer_tokens", "list of tokens"),
    ],
)
def test_bad_value_names_key_and_file(text: str, key: str, message: str) -> None:
    line = config_error(write("bad.yaml", text))
    assert line.startswith(f"config error in bad.yaml: {key}: ")
    assert message in line


# A valid, non-default value for each feature not built yet. Rows follow the table in


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  port: [\n", "invalid YAML at line 3"),
        ("server:\n\thost: x\n", "invalid YAML at line 2"),
        ("server:\n  port: 1\n  port: 2\n", "line 3, column 3: duplicate key 'port'"),
        ("- server\n", "top level must be a mapping"),
        ("just a string\n", "top level must be a mapping"),
        ("!!python/object:os.system {}\n", "invalid YAML"),
    ],
)
def test_unusable_file_is_one_line_naming_the_file(text: str, message: str) -> None:
    line = config_error(write("bad.yaml", text))
    assert line.startswith("config error in bad.yaml: ")
    assert message in line


def test_file_that_is_not_utf8() -> None:
    Path("latin1.yaml").write_bytes("server: {host: caf\xe9}".encode("latin-1"))
    assert (
        config_error("latin1.yaml")
        == "config error in latin1.yaml: cannot read file: not UTF-8 text"
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_named_file_that_is_missing(how: str) -> None:
    environ = {"FORMFORGE_CONFIG": "missing.yaml"} if how == "env" else {}
    line = config_error("missing.yaml" if how == "flag" else None, environ)
    assert line == "config error in missing.yaml: cannot read file: No such file or directory"


def test_named_file_that_cannot_be_read(tmp_path: Path) -> None:
    # Tests may run as root, who reads anything: a directory is unreadable as a file for all.
    line = config_error(tmp_path)
    assert line == f"config error in {tmp_path}: cannot read file: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_named_file_without_read_permission() -> None:
    path = write("secret.yaml", "server: {}")
    path.chmod(0)
    assert config_error(path) == "config error in secret.yaml: cannot read file: Permission denied"


def test_default_config_yaml_is_checked_too() -> None:
    write("config.yaml", "serve: {port: 1}")
    assert config_error() == "config error in config.yaml: serve: unknown key"


# --- bad environment and flags name where the value came from -------------------------------


@pytest.mark.parametrize(
    ("environ", "overrides", "line"),
    [
        ({"FORMFORGE_PORT": "abc"}, {},
         "config error in environment variable FORMFORGE_PORT: not an integer: 'abc'"),
        ({"FORMFORGE_PORT": "70000"}, {},
         "config error in environment variable FORMFORGE_PORT: server.port: "
         "Input should be less than or equal to 65535"),
        ({}, {"port": 70000},
         "config error in flag --port: server.port: Input should be less than or equal to 65535"),
        ({"FORMFORGE_PORT": "70000"}, {"port": 80}, None),  # the flag wins, the env is not used
    ],
)  # fmt: skip
def test_bad_environment_or_flag(environ, overrides, line) -> None:
    if line is None:
        assert load(None, environ, **overrides).server.port == 80
    else:
        assert config_error(None, environ, **overrides) == line


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown override"):
        load(verbose=True)


# --- the value itself ----------------------------------------------------------------------


def test_settings_are_immutable_all_through() -> None:
    settings = load(write("c.yaml", "server: {cors_origins: [a, b]}"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server = settings.server  # type: ignore[misc]
    assert settings.server.cors_origins == ("a", "b")
    hash(settings)  # tuples, not lists, inside


def test_numbers_and_valid_hook_shapes_are_accepted() -> None:
    text = "server: {idle_timeout_seconds: 5}\nexpiration: {sweep_interval_seconds: 0.5}\n"
    settings = load(write("c.yaml", text))
    assert settings.server.idle_timeout_seconds == 5.0
    assert settings.expiration.sweep_interval_seconds == 0.5
    target = Settings.from_mapping(
        {"hooks": {"pre_create": [{"python": "pkg.mod:func"}]}}
    ).hooks.pre_create[0]
    assert (target.python, target.http, target.command) == ("pkg.mod:func", None, None)


# --- server.event_loop ------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["auto", "asyncio", "uvloop"])
def test_event_loop_choices(choice: str) -> None:
    write("c.yaml", f"server: {{event_loop: {choice}}}")
    assert load("c.yaml").server.event_loop == choice


def test_uvloop_chosen_but_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "uvloop_installed", lambda: False)
    write("c.yaml", "server: {event_loop: uvloop}")
    assert config_error("c.yaml") == (
        "config error in c.yaml: server.event_loop: "
        "uvloop is not installed (pip install 'formforge[fast]')"
    )


def test_unknown_event_loop_is_refused() -> None:
    write("c.yaml", "server: {event_loop: trio}")
    assert config_error("c.yaml").startswith("config error in c.yaml: server.event_loop: ")


# --- settings built in code (a host application embedding FormForge) ---------------------


def test_sections_given_as_mappings_are_checked_like_a_file() -> None:
    settings = Settings(storage={"path": "uploads", "fsync": False})  # type: ignore[arg-type]
    assert settings.storage.path == Path("uploads")
    assert settings.storage.fsync is False
    with pytest.raises(Invalid) as caught:
        Settings(storage={"fsync": "no"})  # type: ignore[arg-type]
    assert (caught.value.loc, caught.value.message) == (
        ("storage", "fsync"),
        "Input should be a valid boolean",
    )


def test_from_mapping_refuses_what_a_file_would() -> None:
    assert Settings.from_mapping({"server": {"port": 8080}}).server.port == 8080
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({"server": {"port": 70000}})
    assert (
        str(caught.value)
        == "config error: server.port: Input should be less than or equal to 65535"
    )
    with pytest.raises(ConfigError, match="config_file: unknown key"):
        Settings.from_mapping({"config_file": "x.yaml"})
