"""CBSD's database breaks under a registered host: nothing is deregistered, the error is
one clear line (exit 66), and the next good read heals everything, in ``once`` and
in ``run``.

Every workdir here lives under a path with a space, ``#``, ``?`` and ``%`` in it, so
the read-only ``file:`` URI quoting is exercised by every fault.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, log_events, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

JAILS = {"web1": "127.0.40.1", "db1": "127.0.40.2", "mail": "127.0.40.3"}
AWKWARD = "cbsd dir #1 ?x=%20"
FAULTS = ["missing", "truncated", "corrupt", "not_a_node_db", "lacks_key_column", "locked"]


@pytest.fixture
def base():
    """A world-traversable folder (so that the ``nobody`` test can use it too)."""
    path = Path(tempfile.mkdtemp(prefix="jailsyncd-faults-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_workdir(base: Path, *, filler: int = 200) -> Workdir:
    workdir = Workdir.create(base / AWKWARD)
    for jid, (jname, ip) in enumerate(JAILS.items(), start=1):
        workdir.add(jname, jid=jid, status=1, ip4_addr=ip, tags="prod")
    # Stopped jails with long tags make the file many pages long, so that a truncated
    # copy really misses rows.
    conn = sqlite3.connect(workdir.node_db)
    with conn:
        conn.executemany(
            "INSERT INTO jails (jname, jid, status, ip4_addr, tags) VALUES (?, 0, 0, '127.0.41.1', ?)",
            [(f"stopped{i:03}", "x" * 200) for i in range(filler)],
        )
    conn.close()
    checkpoint(workdir)
    return workdir


def checkpoint(workdir: Workdir) -> None:
    """Move everything from the -wal into the main file (as CBSD's last close does)."""
    conn = sqlite3.connect(workdir.node_db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def make_config(base: Path, workdir: Workdir, consul: ConsulServer, extra: str = "") -> Path:
    config = write_config(base / "jailsyncd.toml", workdir=workdir.root, consul=consul, extra=extra)
    config.write_text(config.read_text().replace("[cbsd]\n", '[cbsd]\nbusy_timeout = "1s"\n'))
    config.chmod(0o644)
    return config


def error_line(stderr: str) -> str:
    """The one non-JSON line of a failed run (its error message)."""
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


class Break:
    """Damage the node DB in one way, and repair it again."""

    def __init__(self, workdir: Workdir, fault: str) -> None:
        self.workdir = workdir
        self.fault = fault
        self.real = workdir.node_db.resolve()
        self.saved = self.real.read_bytes()
        self.writer: sqlite3.Connection | None = None

    def __enter__(self) -> "Break":
        real = self.real
        if self.fault == "missing":
            real.rename(real.with_name(real.name + ".moved"))
        elif self.fault == "truncated":
            real.write_bytes(self.saved[: len(self.saved) // 3])
        elif self.fault == "corrupt":
            real.write_bytes(self.saved[:100] + os.urandom(len(self.saved) - 100))
        elif self.fault == "not_a_node_db":
            conn = sqlite3.connect(real)
            conn.execute("ALTER TABLE jails RENAME TO jails_old")
            conn.close()
        elif self.fault == "lacks_key_column":
            conn = sqlite3.connect(real)
            conn.execute("ALTER TABLE jails DROP COLUMN ip4_addr")
            conn.close()
        elif self.fault == "locked":
            # A CBSD writer that holds its exclusive lock past our busy timeout (1 s).
            self.writer = sqlite3.connect(self.workdir.node_db, isolation_level=None)
            self.writer.execute("PRAGMA locking_mode=EXCLUSIVE")
            self.writer.execute("BEGIN EXCLUSIVE")
            self.writer.execute("UPDATE jails SET jid = 0, status = 0")  # uncommitted: must never be seen
        else:
            raise ValueError(self.fault)
        return self

    def repair(self) -> None:
        if self.writer is not None:
            self.writer.execute("ROLLBACK")
            self.writer.close()
            self.writer = None
        elif self.fault == "missing":
            self.real.with_name(self.real.name + ".moved").rename(self.real)
        else:
            for suffix in ("-wal", "-shm"):
                Path(str(self.real) + suffix).unlink(missing_ok=True)
            self.real.write_bytes(self.saved)

    def __exit__(self, *exc) -> None:
        if self.writer is not None or not self.real.exists() or self.real.read_bytes() != self.saved:
            self.repair()


def snapshot(consul: ConsulServer) -> tuple[dict, int]:
    return consul.services(), consul.index()


EXPECTED_TEXT = {
    "missing": "not found",
    "truncated": "corrupt or truncated",
    "corrupt": "corrupt or truncated",
    "not_a_node_db": "no table 'jails'",
    "lacks_key_column": "lacks column(s) ip4_addr",
    "locked": "locked by a writer",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_once_on_a_broken_db_changes_nothing_then_heals(consul: ConsulServer, base: Path, fault: str) -> None:
    workdir = make_workdir(base)
    config = make_config(base, workdir, consul)
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    before = snapshot(consul)
    assert set(before[0]) == {f"jailsyncd-{j}" for j in JAILS}
    with Break(workdir, fault) as broken:
        started = time.monotonic()
        proc = run_cli("once", config=config)
        elapsed = time.monotonic() - started
        assert proc.returncode == ExitCode.SOURCE_UNAVAILABLE, proc.stderr
        line = error_line(proc.stderr)
        assert line.startswith(f"jailsyncd: {workdir.node_db}: ") and EXPECTED_TEXT[fault] in line, line
        assert snapshot(consul) == before, "a broken CBSD read touched Consul"
        failed = [e for e in log_events(proc.stderr) if e["event"] == "cycle_failed"]
        assert len(failed) == 1 and failed[0]["retryable"] is True
        if fault == "locked":
            assert elapsed < 15
        broken.repair()
        proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    [summary] = [e for e in log_events(proc.stderr) if e["event"] == "cycle_finished"]
    assert summary["writes"] == 0
    assert snapshot(consul) == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_db_unreadable_by_the_daemons_user(consul: ConsulServer, base: Path) -> None:
    workdir = make_workdir(base, filler=0)
    config = make_config(base, workdir, consul)
    for path in (workdir.root, workdir.root / "var", workdir.root / "var" / "db"):
        path.chmod(0o755)
    assert run_cli("once", config=config).returncode == 0
    before = snapshot(consul)

    def once_as_nobody() -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        argv = [sys.executable, "-m", "jailsyncd", "--config", str(config), "once"]
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60,
        )

    workdir.node_db.resolve().chmod(0o600)
    proc = once_as_nobody()
    assert proc.returncode == ExitCode.SOURCE_UNAVAILABLE, proc.stderr
    line = error_line(proc.stderr)
    assert str(workdir.node_db) in line and "permission denied" in line
    assert snapshot(consul) == before
    # Readable, but no -shm exists and the folder is not writable: a WAL database
    # cannot be opened even read-only then.
    real = workdir.node_db.resolve()
    real.chmod(0o644)
    for suffix in ("-wal", "-shm"):
        Path(str(real) + suffix).unlink(missing_ok=True)
    proc = once_as_nobody()
    assert proc.returncode == ExitCode.SOURCE_UNAVAILABLE, proc.stderr
    assert "-shm" in error_line(proc.stderr)
    assert snapshot(consul) == before
    # What operations.md asks for (a folder the user may write, as group cbsd has): heals.
    (workdir.root / "var" / "db").chmod(0o777)
    proc = once_as_nobody()
    assert proc.returncode == 0, proc.stderr
    assert snapshot(consul) == before


def test_unreadable_per_vm_db_keeps_that_vm_as_it_is(consul: ConsulServer, base: Path) -> None:
    workdir = make_workdir(base, filler=0)
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.40.50")
    config = make_config(base, workdir, consul)
    assert run_cli("once", config=config).returncode == 0
    before = snapshot(consul)
    assert "jailsyncd-vm1" in before[0]
    vm_db = workdir.root / "jails-system" / "vm1" / "local.sqlite"
    saved = vm_db.read_bytes()
    vm_db.write_bytes(b"not a database" * 100)
    workdir.set("web1", ip4_addr="127.0.40.9")  # the rest of the host still converges
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    [skip] = [e for e in log_events(proc.stderr) if e["event"] == "jail_skipped"]
    assert (skip["jail"], skip["reason"], skip["level"]) == ("vm1", "source_error", "warning")
    after = consul.services()
    assert after["jailsyncd-vm1"] == before[0]["jailsyncd-vm1"]
    assert after["jailsyncd-web1"]["Address"] == "127.0.40.9"
    vm_db.unlink()  # gone entirely (e.g. jails-system being restored): still kept
    workdir.stop("db1")
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert consul.services()["jailsyncd-vm1"] == before[0]["jailsyncd-vm1"]
    assert "jailsyncd-db1" not in consul.services()
    vm_db.write_bytes(saved)
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert not [e for e in log_events(proc.stderr) if e["event"] == "jail_skipped"]


def test_old_schema_then_cbsd_upgrade_adds_columns(consul: ConsulServer, base: Path) -> None:
    """An old host (no ``tags``, other column order) registers; CBSD's upgrade then adds
    ``tags`` and columns jailsyncd does not know, under a registered host: nothing is
    rewritten, and the new column works at once."""
    workdir = Workdir.create(base / AWKWARD, schema="old", extra_columns=("future_thing",))
    assert "tags" not in workdir.columns()
    for jid, (jname, ip) in enumerate(JAILS.items(), start=1):
        workdir.add(jname, jid=jid, status=1, ip4_addr=ip, future_thing="?")
    config = make_config(base, workdir, consul)
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    before = snapshot(consul)
    assert {s["Address"] for s in before[0].values()} == set(JAILS.values())
    assert all(s["Tags"] == ["jail"] for s in before[0].values())
    conn = sqlite3.connect(workdir.node_db)
    conn.execute("ALTER TABLE jails ADD COLUMN tags text default 0")
    conn.execute("ALTER TABLE jails ADD COLUMN zz_from_the_future integer default 7")
    conn.close()
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(consul) == before
    workdir.set("web1", tags="consul.port=80,new")
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    web1 = consul.services()["jailsyncd-web1"]
    assert (web1["Port"], sorted(web1["Tags"])) == (80, ["jail", "new"])
    assert not [e for e in log_events(proc.stderr) if e["event"] == "service_deregistered"]


def test_daemon_rides_out_broken_dbs_and_never_deregisters(consul: ConsulServer, base: Path, start_daemon) -> None:
    workdir = make_workdir(base)
    extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "1s"\n'
    daemon = start_daemon(make_config(base, workdir, consul, extra))
    wait_for(lambda: len(consul.services()) == len(JAILS), timeout=5, what="first registrations")
    before = snapshot(consul)
    for fault, kind in (("corrupt", "SourceCorrupt"), ("missing", "SourceMissing"), ("truncated", "SourceCorrupt")):
        seen = len(daemon.events("cycle_failed"))
        with Break(workdir, fault) as broken:
            daemon.kick()
            wait_for(lambda: len(daemon.events("cycle_failed")) >= seen + 2, timeout=10, what=f"two failed cycles ({fault})")
            assert daemon.events("cycle_failed")[-1]["error_kind"] == kind
            assert daemon.proc.poll() is None
            assert snapshot(consul) == before, f"Consul changed while the DB was {fault}"
            good = len(daemon.events("cycle_finished"))
            broken.repair()
        wait_for(lambda: len(daemon.events("cycle_finished")) > good, timeout=10, what=f"a good cycle after {fault}")
    workdir.add("fresh", jid=99, status=1, ip4_addr="127.0.40.99")  # and it still follows CBSD
    wait_for(lambda: "jailsyncd-fresh" in consul.services(), timeout=10, what="fresh registered")
    assert {sid: s for sid, s in consul.services().items() if sid != "jailsyncd-fresh"} == before[0]
    assert daemon.events("service_deregistered") == []
    assert daemon.stop() == 0
