"""The guard rails of the code's shape, run with the rest of the suite (``scripts/test``).

- mypy, configured in pyproject.toml: strict on the core and the adapters;
- import-linter, contracts in pyproject.toml: the core imports nothing of the adapters,
  the loop, the daemon or the CLI; the loop reaches the outside only through
  ``jailsyncd.ports``; adapters never import the loop;
- each third-party library that talks to an outside system is imported by exactly one
  module of the package.

Both tools are in the ``test`` extras (scripts/setup installs them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mypy_is_clean() -> None:
    done = run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_contracts_are_kept() -> None:
    done = run(str(BIN / "lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


#: Each outside system's library, and the one module that may import it.
ONE_MODULE = {
    "consul": "jailsyncd/adapters/consul/transport.py",
    "requests": "jailsyncd/adapters/consul/transport.py",
    "urllib3": "jailsyncd/adapters/consul/transport.py",
    "sqlalchemy": "jailsyncd/adapters/cbsd.py",
    "icmplib": "jailsyncd/adapters/probe.py",
    "apscheduler": "jailsyncd/daemon.py",
}


def test_each_outside_library_is_imported_by_one_module() -> None:
    found: dict[str, set[str]] = {name: set() for name in ONE_MODULE}
    for path in sorted((REPO / "jailsyncd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top in found:
                    found[top].add(str(path.relative_to(REPO)))
    assert {name: sorted(paths) for name, paths in found.items()} == {name: [module] for name, module in ONE_MODULE.items()}


def test_the_wheel_holds_only_what_runs_on_a_host() -> None:
    """The test, demo and benchmark helpers live in testing/: not a package the wheel
    lists, no package data, and nothing in jailsyncd imports them."""
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "jailsyncd" or p.startswith("jailsyncd.") for p in tool["packages"]) and "package-data" not in tool
    on_disk = {str(p.parent.relative_to(REPO)).replace("/", ".") for p in (REPO / "jailsyncd").rglob("__init__.py")}
    assert on_disk == set(tool["packages"]), "every package of jailsyncd is listed, and only those"
    assert not list((REPO / "jailsyncd").rglob("*.sql"))
    for path in (REPO / "jailsyncd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "testing" for n in names), f"{path} imports testing/"


def test_events_read_back_are_declared_once() -> None:
    """The events ``report`` reads are written and read through jailsyncd.events: their
    names appear as string literals nowhere else in the package."""
    from jailsyncd import events

    declared = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}
    found = []
    for path in (REPO / "jailsyncd").rglob("*.py"):
        if path.name == "events.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in declared:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value}")
    assert found == []
