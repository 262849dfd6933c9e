"""``run --pidfile`` and ``kick`` as real subprocesses against a real Consul.

The pidfile is locked (flock(2), as FreeBSD's pidfile(3) that daemon(8) ``-p`` uses:
lib/libutil/pidfile.c opens it with flopen(3), lib/libutil/flopen.c takes
``flock(LOCK_EX | LOCK_NB)``), written only once start-up succeeded, and ``kick``
signals only a process that is jailsyncd.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from jailsyncd.platform import Platform
from testing.sample import Workdir

pytestmark = pytest.mark.integration

QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\nwatch = "poll"\nwatch_interval = "1h"\n'


def _error_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.startswith("jailsyncd: ")][-1]


def test_a_second_run_on_the_same_pidfile_exits_naming_the_first(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    first = start_daemon(config)
    wait_for(lambda: first.pidfile.exists() and first.pidfile.read_text().strip() == str(first.proc.pid), timeout=5, what="the pidfile")
    second = run_cli("run", "--pidfile", str(first.pidfile), config=config, timeout=30)
    assert second.returncode == ExitCode.ALREADY_RUNNING, second.stderr
    line = _error_line(second.stderr)
    assert str(first.pidfile) in line and f"PID {first.proc.pid}" in line, line
    assert "Traceback" not in second.stderr
    # The first daemon's pidfile is untouched and still works.
    assert first.pidfile.read_text().strip() == str(first.proc.pid)
    first.kick()
    wait_for(lambda: first.finished_cycles() >= 2, timeout=5, what="the kicked cycle")
    assert first.stop() == 0
    assert not first.pidfile.exists()


def test_a_failed_start_leaves_no_pidfile(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A busy metrics port stops ``run`` at start (exit 78); the pidfile it was given,
    new or left over from a crash, is not left behind for ``kick`` to trust."""
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        for leftover in (None, "4242\n"):
            pidfile = tmp_path / "jailsyncd.pid"
            if leftover is not None:
                pidfile.write_text(leftover)
            proc = run_cli("run", "--pidfile", str(pidfile), config=config, timeout=30)
            assert proc.returncode == ExitCode.CONFIG, proc.stderr
            assert f"127.0.0.1:{port}" in _error_line(proc.stderr)
            assert not pidfile.exists(), f"left behind ({leftover=})"
    finally:
        busy.close()


def _kick(pidfile: Path, *, user: int | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    argv = [*prefix, sys.executable, "-m", "jailsyncd", "kick", "--pidfile", str(pidfile)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=str(REPO))


def test_kick_never_signals_a_process_that_is_not_jailsyncd(tmp_path: Path) -> None:
    """A stale pidfile whose PID now belongs to another program: SIGUSR1's default
    action would kill it. ``kick`` names it and signals nothing."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "jailsyncd.pid"
        pidfile.write_text(f"{other.pid}\n")
        proc = _kick(pidfile)
        assert proc.returncode == ExitCode.NOT_RUNNING, proc.stderr
        line = _error_line(proc.stderr)
        assert f"process {other.pid} is not jailsyncd" in line and "sleep 60" in line, line
        assert other.poll() is None, "the unrelated process was signalled"
    finally:
        other.kill()
        other.wait()
    proc = _kick(pidfile)  # now the PID is gone
    assert proc.returncode == ExitCode.NOT_RUNNING
    assert f"process {other.pid} is not running" in _error_line(proc.stderr)


@pytest.mark.parametrize("kind", ["directory", "not-utf8", "empty", "unreadable"])
def test_kick_on_a_pidfile_it_cannot_read_says_so(tmp_path: Path, kind: str) -> None:
    pidfile = tmp_path / "jailsyncd.pid"
    user = None
    if kind == "directory":
        pidfile.mkdir()
    elif kind == "not-utf8":
        pidfile.write_bytes(b"\xff\xfe12\n")
    elif kind == "empty":
        pidfile.write_text("")
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to run kick as another user")
        pidfile.write_text(f"{os.getpid()}\n")
        pidfile.chmod(0o600)
        tmp_path.chmod(0o755)
        user = 65534  # nobody: may not read root's 0600 file
    proc = _kick(pidfile, user=user)
    assert proc.returncode == ExitCode.NOT_RUNNING, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    line = _error_line(proc.stderr)
    assert line.startswith(f"jailsyncd: {pidfile}: "), line
    expected = {"directory": "cannot read", "not-utf8": "does not hold a process ID", "empty": "does not hold a process ID", "unreadable": "permission denied"}
    assert expected[kind] in line, line


def test_kick_signals_a_jailsyncd_run(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    daemon = start_daemon(config)
    wait_for(lambda: daemon.pidfile.exists() and daemon.pidfile.read_text().strip(), timeout=5, what="the pidfile")
    proc = _kick(daemon.pidfile)
    assert proc.returncode == 0, proc.stderr
    # The kicked cycle (the Consul watch may ask for one of its own before it).
    wait_for(lambda: any("signal" in e["reasons"] for e in daemon.events("cycle_started")[1:]), timeout=5, what="the kicked cycle")


def test_under_daemon8_p_run_leaves_the_supervisors_pidfile_alone(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """daemon(8) ``-p FILE`` opens and locks FILE in the supervisor (pidfile_open(3),
    lib/libutil/pidfile.c), and its child writes its own PID there right before
    execvp(3) (daemon_exec in usr.sbin/daemon/daemon.c). Reproduced here: this test
    holds the flock, and a shell writes ``$$`` and then execs ``jailsyncd run`` with
    that same ``--pidfile``. jailsyncd must start normally, and neither rewrite nor
    remove the supervisor's file; ``kick`` through it reaches jailsyncd."""
    import fcntl

    from harness import log_events

    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    pidfile = tmp_path / "jailsyncd.pid"
    held = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    log_path = tmp_path / "child.log"
    run = f'{sys.executable} -m jailsyncd --config {config} --log-level debug run --pidfile {pidfile}'
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    with open(log_path, "wb") as log:
        child = subprocess.Popen(["sh", "-c", f'echo $$ > {pidfile}; exec {run}'], stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
    try:

        def events(name: str) -> list[dict]:
            return [e for e in log_events(log_path.read_text()) if e["event"] == name]

        wait_for(lambda: events("cycle_finished"), timeout=15, what="the first cycle")
        [started] = events("daemon_started")
        assert started["pid"] == child.pid and started["pidfile_by_supervisor"] is True
        assert pidfile.read_text().strip() == str(child.pid)
        proc = _kick(pidfile)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: len(events("cycle_started")) >= 2, timeout=5, what="the kicked cycle")
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
        assert pidfile.read_text().strip() == str(child.pid), "the supervisor's pidfile was changed"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(held)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_linux_reads_proc() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        # Popen returns after fork(2), maybe before the child's execve(2): wait for it.
        deadline = time.monotonic() + 5
        while Platform("linux").process_args(child.pid) != ["sleep", "30"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Platform("linux").process_args(child.pid) == ["sleep", "30"]
    finally:
        child.kill()
        child.wait()
    assert Platform("linux").process_args(child.pid) is None
