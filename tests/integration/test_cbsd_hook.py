"""``share/cbsd-hooks/jailsyncd-kick`` run the way CBSD runs a master hook, against a
real ``jailsyncd run``, against none, and against a kick that hangs.

CBSD (subr/jcreate.subr, ``external_exec_master_script``, called by sudoexec/jstart,
jstop, bstart and bstop) runs each executable of ``master_poststart.d`` /
``master_poststop.d`` on the host with no arguments, ``jname`` in the environment,
PATH reset to ``/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin``, its
stdin the pipe of ``find ... | while read``, and ignores the exit status. Here the
script runs under ``/bin/sh`` (dash on Debian, a POSIX sh like FreeBSD's) with the
same environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, wait_for, write_config

from testing.sample import Workdir

pytestmark = pytest.mark.integration

HOOK = REPO / "share" / "cbsd-hooks" / "jailsyncd-kick"
CBSD_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\nwatch = "poll"\nwatch_interval = "1h"\n'


def jailsyncd_bin() -> Path:
    """An executable ``jailsyncd`` as pip installs one (the venv's console script)."""
    script = Path(sys.executable).parent / "jailsyncd"
    assert os.access(script, os.X_OK), script
    return script


def run_hook(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    full = {"PATH": CBSD_PATH, "jname": "web1", **env}
    started = time.monotonic()
    # stdin: a pipe that stays open, like the find | while read loop CBSD runs hooks from.
    proc = subprocess.run(["/bin/sh", str(HOOK)], env=full, capture_output=True, text=True, timeout=10, input="other-hook\n")
    return proc, time.monotonic() - started


def test_hook_is_posix_sh_and_shellcheck_clean() -> None:
    assert os.access(HOOK, os.X_OK), f"{HOOK} must be executable (CBSD runs only executables)"
    assert HOOK.read_text().startswith("#!/bin/sh\n")
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing (scripts/system-deps installs it)"
    proc = subprocess.run([shellcheck, "-s", "sh", str(HOOK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hook_kicks_a_running_daemon_twice_without_waiting(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.32.1")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    proc, elapsed = run_hook({"JAILSYNCD_BIN": str(jailsyncd_bin()), "JAILSYNCD_PIDFILE": str(daemon.pidfile), "JAILSYNCD_KICK_AGAIN": "1"})
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 1.0, f"the hook held CBSD up for {elapsed:.2f} s"
    assert proc.stderr == ""
    kicked = lambda: [e for e in daemon.events("cycle_started") if e["reasons"] == ["signal"]]  # noqa: E731
    wait_for(lambda: len(kicked()) >= 1, timeout=5, what="the kicked cycle")
    # The second kick, a second later in the background (the watcher is off here).
    wait_for(lambda: len(kicked()) >= 2, timeout=5, what="the second kick's cycle")


def test_hook_without_a_daemon_exits_0_at_once_and_says_why(tmp_path: Path) -> None:
    proc, elapsed = run_hook({"JAILSYNCD_BIN": str(jailsyncd_bin()), "JAILSYNCD_PIDFILE": str(tmp_path / "none.pid")})
    assert proc.returncode == 0
    assert elapsed < 1.0
    assert "no pidfile" in proc.stderr and str(tmp_path / "none.pid") in proc.stderr


def test_hook_with_a_missing_program_exits_0(tmp_path: Path) -> None:
    proc, elapsed = run_hook({"JAILSYNCD_BIN": str(tmp_path / "nowhere" / "jailsyncd")})
    assert proc.returncode == 0 and elapsed < 1.0
    assert "is not executable" in proc.stderr


def test_hook_bounds_a_kick_that_hangs(tmp_path: Path) -> None:
    marker = tmp_path / "hung.pid"
    fake = tmp_path / "jailsyncd"
    # A "jailsyncd" that records its PID and never returns.
    fake.write_text(f"#!/bin/sh\necho $$ >> {marker}\nexec sleep 60\n")
    fake.chmod(0o755)
    proc, elapsed = run_hook({"JAILSYNCD_BIN": str(fake), "JAILSYNCD_PIDFILE": str(tmp_path / "x.pid"), "JAILSYNCD_KICK_AGAIN": "0"})
    assert proc.returncode == 0
    # The hook's own bound is 0.9 s; the rest is room for a busy test machine.
    assert elapsed < 1.2, f"the hook waited {elapsed:.2f} s for a hanging kick"
    assert "did not finish within 0.9 s" in proc.stderr
    [pid] = [int(x) for x in marker.read_text().split()]

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone too (nothing waits for the killed child any more).
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"

    wait_for(gone, timeout=3, what="the hanging kick to be killed")


def test_kick_imports_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    """The hook bounds ``jailsyncd kick`` at 0.9 s on a busy host; importing the whole
    CLI (SQLAlchemy, structlog, APScheduler, the Consul client) took 0.5-0.7 s of it
    on this machine. ``kick`` and ``version`` must import none of them."""
    heavy = ["sqlalchemy", "structlog", "apscheduler", "consul", "requests", "icmplib", "jailsyncd.commands"]
    code = (
        "import sys; from jailsyncd.cli import main; "
        f"status = main(['kick', '--pidfile', {str(tmp_path / 'none.pid')!r}]); "
        f"print(status, [m for m in {heavy!r} if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split(" ", 1) == ["3", "[]\n"], (proc.stdout, proc.stderr)
