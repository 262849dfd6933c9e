"""The operator docs say what the code does today (issue 10, item 21).

Static checks that fail when the code moves on and a doc does not: every option of
every command is in jailsyncd(8)'s SYNOPSIS and described under COMMANDS; every log
event the code emits is in the event table of docs/operations.md; and
docs/reliability.md's "Known gaps" lists exactly the tests marked
``xfail(strict=True)``, while every test a doc cites (``file.py::test_name``) exists.
No I/O beyond reading the repository's own files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jailsyncd.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
MAN8 = ROOT / "docs" / "man" / "jailsyncd.8"
OPERATIONS = ROOT / "docs" / "operations.md"
RELIABILITY = ROOT / "docs" / "reliability.md"
TESTS = ROOT / "tests"


def _subparsers() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001


def _man_blocks(section: str) -> str:
    text = MAN8.read_text()
    return text.split(f".Sh {section}", 1)[1].split("\n.Sh ", 1)[0]


def _synopsis_of(command: str) -> str:
    """The SYNOPSIS lines from ``.Cm command`` up to the next ``.Nm``."""
    synopsis = _man_blocks("SYNOPSIS") + "\n"
    part = synopsis.split(f".Cm {command}\n", 1)
    assert len(part) == 2, f"{command} is not in the SYNOPSIS"
    return part[1].split(".Nm", 1)[0]


def _commands_entry(command: str) -> str:
    """The COMMANDS entry of ``command``: from its ``.It Cm`` to the next one."""
    commands = _man_blocks("COMMANDS")
    part = re.split(rf"^(?=\.It Cm {re.escape(command)}\b)", commands, maxsplit=1, flags=re.M)
    assert len(part) == 2, f"{command} has no entry under COMMANDS"
    return re.split(r"^\.It Cm ", part[1][1:], maxsplit=1, flags=re.M)[0]


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_of_every_command_is_in_the_man_page(command: str) -> None:
    sub = _subparsers()[command]
    options = sorted(o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help")  # noqa: SLF001
    synopsis, entry = _synopsis_of(command), _commands_entry(command)
    for option in options:
        mdoc = "Fl \\-" + option[2:]
        assert mdoc in synopsis, f"SYNOPSIS of {command} lacks {option}"
        assert mdoc in entry, f"the COMMANDS entry of {command} does not describe {option}"


_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
#: Local names the code binds to one of the level methods (``emit = log.debug if ...``).
_LEVEL_ALIASES = {"log", "level", "emit"}


def _logged_events() -> set[str]:
    """The first argument of every logger call with a literal event name."""
    events: set[str] = set()
    for path in (ROOT / "jailsyncd").rglob("*.py"):
        if path.name in ("report.py",):
            continue  # report reads events
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            name = node.args[0].value
            if (called in _LEVELS or called in _LEVEL_ALIASES) and isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", name):
                events.add(name)
    # The events that are read back are declared once, in jailsyncd.events.
    from jailsyncd import events as declared

    events |= {v for k, v in vars(declared).items() if k.isupper() and isinstance(v, str)}
    return events


def test_every_logged_event_is_in_the_operations_event_table() -> None:
    text = OPERATIONS.read_text()
    table = text.split("### Events", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"`([a-z][a-z0-9_]*)`", table))
    events = _logged_events()
    assert {"drift_detected", "cycle_finished", "health_changed"} <= events  # the scan finds them
    assert sorted(events - documented) == []


def _test_functions() -> dict[str, ast.FunctionDef]:
    """``file.py::name`` -> the test function, for every test module."""
    found: dict[str, ast.FunctionDef] = {}
    for path in TESTS.rglob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[f"{path.name}::{node.name}"] = node
    return found


def _is_strict_xfail(fn: ast.FunctionDef) -> bool:
    for deco in fn.decorator_list:
        text = ast.unparse(deco)
        if "mark.xfail" in text and "strict=True" in text:
            return True
    return False


def _cited(text: str) -> set[str]:
    return set(re.findall(r"(test_[a-z0-9_]+\.py::test_[a-z0-9_]+)", text))


def test_known_gaps_are_exactly_the_strict_xfail_tests() -> None:
    text = RELIABILITY.read_text()
    gaps = text.split("## Known gaps", 1)[1].split("\n## ", 1)[0]
    xfails = {name for name, fn in _test_functions().items() if _is_strict_xfail(fn)}
    assert sorted(_cited(gaps)) == sorted(xfails)


def test_every_test_cited_in_the_docs_exists() -> None:
    known = _test_functions()
    for doc in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        text = doc.read_text()
        # "file.py::test_a, ::test_b" cites test_b in file.py too
        cited = set(_cited(text))
        for m in re.finditer(r"(test_[a-z0-9_]+\.py)::test_[a-z0-9_]+[^`]*`((?:, `::test_[a-z0-9_]+`)+)", text):
            cited.update(f"{m.group(1)}{c}" for c in re.findall(r"(::test_[a-z0-9_]+)", m.group(2)))
        missing = sorted(c for c in cited if c not in known)
        assert missing == [], f"{doc.name} cites tests that do not exist"


def test_every_exit_status_is_in_the_readme_and_the_man_page() -> None:
    """Each distinct ``ExitCode`` value has a row in README's exit-status table and an
    entry under EXIT STATUS in jailsyncd(8), and neither lists a status the code lacks."""
    from jailsyncd.errors import ExitCode

    codes = {value for name, value in vars(ExitCode).items() if name.isupper() and isinstance(value, int)}
    readme = {int(n) for n in re.findall(r"^\|[^|\n]*\| (\d+) \|$", (ROOT / "README.md").read_text(), re.M)}
    man = {int(n) for n in re.findall(r"^\.It (\d+)$", _man_blocks("EXIT STATUS"), re.M)}
    assert readme == codes, f"README exit table: missing {sorted(codes - readme)}, extra {sorted(readme - codes)}"
    assert man == codes, f"jailsyncd(8) EXIT STATUS: missing {sorted(codes - man)}, extra {sorted(man - codes)}"


def _metric_names() -> set[str]:
    """Every metric jailsyncd.metrics defines, as a scrape shows it (a counter with
    ``_total``), read from the source so that the health-only metrics are included."""
    tree = ast.parse((ROOT / "jailsyncd" / "metrics.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
            continue
        kind = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id if isinstance(node.func, ast.Name) else ""
        name = node.args[0].value
        if isinstance(name, str) and name.startswith("jailsyncd_") and kind in ("Counter", "Gauge", "Histogram", "G"):
            names.add(f"{name}_total" if kind == "Counter" else name)
    return names


def test_every_metric_is_in_the_operations_metrics_table_and_no_other() -> None:
    text = OPERATIONS.read_text()
    documented = set(re.findall(r"^\| `(jailsyncd_[a-z0-9_]+)` \| (?:counter|gauge|histogram) \|", text, re.M))
    names = _metric_names()
    assert {"jailsyncd_cycles_total", "jailsyncd_health_writes_total", "jailsyncd_consul_up"} <= names  # the scan finds them
    assert (sorted(names - documented), sorted(documented - names)) == ([], [])


def test_the_readme_starts_run_where_kick_and_status_look() -> None:
    """README's "Use it" lists ``jailsyncd run`` and then ``kick`` and ``status``,
    which read the pidfile at their default path; ``run`` writes one only with
    ``--pidfile``. Followed as written, ``status`` said "not running" beside a
    running daemon: the listed ``run`` must name the pidfile they read."""
    from jailsyncd.cli import DEFAULT_PIDFILE

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Use it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    [run] = [line.split("#", 1)[0].split() for line in block.splitlines() if line.split()[:2] == ["jailsyncd", "run"]]
    assert "--pidfile" in run and run[run.index("--pidfile") + 1] == str(DEFAULT_PIDFILE), run
    for command in ("kick", "status"):
        assert any(line.split()[:2] == ["jailsyncd", command] for line in block.splitlines()), command
