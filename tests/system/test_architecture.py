"""The layout docs/architecture.md draws is the layout there is: every module named, every
import running the way the page says, the core free of the web framework, and a plain
`pip install formforge` (no extras) enough to serve uploads on disk."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "formforge"
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()

# folder -> what its modules may import from formforge (module path prefixes).
ALLOWED = {
    "core": ("formforge.core",),
    "stores": ("formforge.core", "formforge.stores", "formforge.runtime.libc"),
    "locks": ("formforge.core", "formforge.locks"),
    "hooks": ("formforge.core", "formforge.hooks", "formforge.wire"),
    "realtime": ("formforge.core", "formforge.realtime", "formforge.wire", "formforge.auth"),
    "fronts": (
        "formforge.core",
        "formforge.fronts",
        "formforge.http1",
        "formforge.wire",
        "formforge.auth",
        "formforge.metrics",
        "formforge.logs",
    ),
    "http1": ("formforge.core.errors", "formforge.http1", "formforge.wire"),
    "client": ("formforge.core.checksum", "formforge.client"),
}
EXTRAS = {"redis", "aiobotocore", "botocore", "tusclient", "tqdm", "requests", "uvloop"}
MAX_LINES = 400


def modules() -> list[Path]:
    """Every module; of the packages' `__init__.py`, only the top one holds code (the API)."""
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent == PACKAGE
    )


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def documented_paths() -> set[str]:
    """Module paths in docs/architecture.md's tables, relative to formforge/."""
    paths: set[str] = set()
    for section in re.split(r"^### ", ARCHITECTURE, flags=re.M)[1:]:
        folder = re.search(r"\(`formforge/`\)|`(\w+)/`", section.splitlines()[0])
        prefix = f"{folder.group(1)}/" if folder and folder.group(1) else ""
        for row in re.findall(r"^\| (`[^|]+) \|", section, flags=re.M):
            paths.update(prefix + name for name in re.findall(r"`([\w/]+\.py)`", row))
    return paths


def test_every_module_is_named_in_the_architecture_page() -> None:
    actual = {str(p.relative_to(PACKAGE)) for p in modules()}
    assert actual - documented_paths() == set(), "modules the page does not name"
    assert documented_paths() - actual == set(), "the page names modules that do not exist"


def test_the_readme_names_every_folder() -> None:
    readme = (ROOT / "README.md").read_text()
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {f for f in folders if f"`formforge/{f}/`" not in readme} == set()
    assert "docs/architecture.md" in readme


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_run_into_the_core_never_out_of_it(folder: str) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / folder).rglob("*.py")
        for name in imported(path)
        if name.startswith("formforge.") and not name.startswith(ALLOWED[folder])
    }
    assert wrong == set()


def test_the_core_imports_neither_tornado_nor_socketio() -> None:
    core = [f"formforge.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py")]
    script = (
        "import importlib, sys\n"
        f"for name in {core!r}: importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tornado', 'socketio', "
        "'engineio', 'aiohttp'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_a_plain_install_needs_no_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", dep)[0].lower() for dep in project["dependencies"]}
    assert names & {"redis", "aiobotocore", "tuspy", "tqdm", "requests", "uvloop"} == set()
    assert {"redis", "s3", "client", "fast"} <= set(project["optional-dependencies"])


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [dep for deps in project["optional-dependencies"].values() for dep in deps]
    declared = " ".join([*project["dependencies"], *extras]).lower()
    # import name -> distribution name, where they differ
    dist = {
        "yaml": "pyyaml",
        "tusclient": "tuspy",
        "socketio": "python-socketio",
        "engineio": "python-socketio",
        "prometheus_client": "prometheus-client",
        "botocore": "aiobotocore",
    }
    stdlib = set(sys.stdlib_module_names)
    missing = set()
    for path in PACKAGE.rglob("*.py"):
        for name in imported(path):
            top = name.split(".")[0]
            if top in stdlib or top == "formforge":
                continue
            if dist.get(top, top).replace("_", "-") not in declared:
                missing.add(top)
    assert missing == set()


# None in sys.modules: `import x` raises ModuleNotFoundError and find_spec says "absent",
# just as for a package that is not installed.
BLOCKER = "import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"


def test_a_server_without_the_extras_serves_uploads_on_disk(tmp_path: Path) -> None:
    """As if none of the extras were installed: importing any of them fails in the server."""
    import urllib.request

    from tests.conftest import ServerProcess, clean_environ

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(EXTRAS)))
    env = {**clean_environ(), "PYTHONPATH": str(site)}
    server = ServerProcess(tmp_path / "data", [], env, tmp_path).start()
    try:
        create = urllib.request.Request(
            server.files_url,
            method="POST",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"},
        )
        with urllib.request.urlopen(create) as answer:
            location = answer.headers["Location"]
        patch = urllib.request.Request(
            location,
            data=b"hello",
            method="PATCH",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        with urllib.request.urlopen(patch) as answer:
            assert answer.status == 204
        with urllib.request.urlopen(location) as answer:
            assert answer.read() == b"hello"
    finally:
        server.terminate()
    assert not any("Traceback" in line for line in server.output), server.log_tail()
