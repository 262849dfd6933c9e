"""Which process ``kick`` may signal: the platform's process lookup and the
recognition of a ``jailsyncd run`` command line (pure parts of ``pidfile``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jailsyncd.errors import NotRunning
from jailsyncd.pidfile import is_jailsyncd_run, running_jailsyncd
from jailsyncd.platform import Platform


@pytest.mark.parametrize(
    "args, expected",
    [
        (["/usr/local/bin/python3.11", "/usr/local/bin/jailsyncd", "--config", "/usr/local/etc/jailsyncd.toml", "run"], True),
        (["/usr/local/bin/jailsyncd", "run", "--pidfile", "/var/run/j.pid"], True),
        (["/venv/bin/python", "-m", "jailsyncd", "--log-level", "debug", "run"], True),
        (["/usr/local/bin/python3.11", "/usr/local/bin/jailsyncd", "report"], False),
        (["daemon:", "/usr/local/bin/jailsyncd[812]", "(daemon)"], False),  # daemon(8)'s own title
        (["sleep", "60"], False),
        (["/usr/bin/vim", "run"], False),
        ([], False),
    ],
)
def test_is_jailsyncd_run(args: list[str], expected: bool) -> None:
    assert is_jailsyncd_run(args) is expected


def test_freebsd_asks_ps_for_the_whole_command_line() -> None:
    """FreeBSD has no procfs by default: ps(1), with -ww since without a terminal ps
    cuts lines at 79 columns (bin/ps/ps.c). The output is a recording of
    ``ps -ww -o command= -p 812`` for a jailsyncd under daemon(8)."""
    asked: list[list[str]] = []
    recorded = "/usr/local/bin/python3.11 /usr/local/bin/jailsyncd --config /usr/local/etc/jailsyncd.toml run\n"

    def run(argv: list[str]) -> str | None:
        asked.append(argv)
        return recorded if argv[-1] == "812" else None  # ps exits 1 for an unknown PID

    freebsd = Platform("freebsd", run=run)
    assert freebsd.process_args(812) == ["/usr/local/bin/python3.11", "/usr/local/bin/jailsyncd", "--config", "/usr/local/etc/jailsyncd.toml", "run"]
    assert asked[0] == ["ps", "-ww", "-o", "command=", "-p", "812"]
    assert freebsd.process_args(813) is None


@pytest.mark.parametrize("content", ["0\n", "-1\n", "1\n", "abc\n", ""])
def test_kick_never_signals_a_group_or_init(tmp_path: Path, content: str) -> None:
    """kill(0, ...) and kill(-1, ...) signal whole groups of processes; PID 1 is init."""
    pidfile = tmp_path / "j.pid"
    pidfile.write_text(content)
    with pytest.raises(NotRunning, match="does not hold a process ID"):
        running_jailsyncd(pidfile, Platform("freebsd", run=lambda argv: "jailsyncd run\n"))


def test_a_jailsyncd_pid_is_returned(tmp_path: Path) -> None:
    pidfile = tmp_path / "j.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    recorded = "/usr/local/bin/python3.11 /usr/local/bin/jailsyncd run\n"
    assert running_jailsyncd(pidfile, Platform("freebsd", run=lambda argv: recorded)) == os.getpid()
