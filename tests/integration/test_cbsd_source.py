"""The CBSD adapter against real SQLite files shaped like CBSD's (WAL, full column set).

No Consul here: these check that every failure is a typed ``SourceError`` (never an
empty list), that the reader is read-only and WAL-correct, and that it holds nothing
open between reads."""

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

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.errors import SourceCorrupt, SourceLocked, SourceMissing, SourceUnreadable
from testing.sample import SAMPLE_ENVIRONMENTS, Workdir


def read(workdir: Workdir, busy: float = 2.0):
    return CbsdSource(workdir.root, busy).read()


def test_reads_every_sample_row(sample: Workdir) -> None:
    state = read(sample)
    assert state.nodename == "node1"
    assert sorted(e.jname for e in state.environments) == sorted(j for j, _ in SAMPLE_ENVIRONMENTS)
    by_name = {e.jname: e for e in state.environments}
    assert by_name["freebsd1"].running and by_name["freebsd1"].status == 0
    assert not by_name["newjail"].running and not by_name["slave1"].running
    assert by_name["mail"].tags is None  # '0' means unset


@pytest.mark.parametrize("raw", ["0", "", None, "(null)", "  0 "])
def test_unset_spellings(workdir: Workdir, raw) -> None:
    workdir.add("j", jid=1, status=1, ip4_addr="127.0.0.9", tags=raw, host_hostname=raw)
    [env] = read(workdir).environments
    assert env.tags is None and env.host_hostname is None


def test_committed_rows_in_the_wal_are_seen(workdir: Workdir) -> None:
    conn = sqlite3.connect(workdir.node_db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # keep the row in the -wal file only
    conn.execute("INSERT INTO jails (jname, jid, status, ip4_addr) VALUES ('walonly', 2, 1, '127.0.0.2')")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO jails (jname, jid, status, ip4_addr) VALUES ('uncommitted', 3, 1, '127.0.0.3')")
    try:
        assert Path(str(workdir.node_db.resolve()) + "-wal").stat().st_size > 0
        assert [e.jname for e in read(workdir).environments] == ["walonly"]
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_missing_db_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(SourceMissing, match=r"nowhere/var/db/local\.sqlite"):
        CbsdSource(root).read()
    assert not root.exists()


def test_dangling_node_db_symlink_names_its_missing_target(workdir: Workdir) -> None:
    """``local.sqlite`` is a symlink to ``inv.<node>.sqlite``: when the target is gone
    (renamed by hand, a half-finished restore) the link itself is there, and "CBSD
    database not found (check cbsd.workdir)" sent the admin to a workdir that is
    right. The message names the link's missing target."""
    target = workdir.node_db.resolve()
    target.rename(target.with_name("inv.moved.sqlite"))
    with pytest.raises(SourceMissing) as exc:
        read(workdir)
    message = str(exc.value)
    assert str(workdir.node_db) in message and "symlink" in message and target.name in message
    assert "check cbsd.workdir" not in message


def test_node_db_that_is_a_directory_says_so(workdir: Workdir) -> None:
    """A directory where the node DB should be was reported as "read failed (disk I/O
    error)", which points at a failing disk."""
    workdir.node_db.unlink()
    workdir.node_db.mkdir()
    with pytest.raises(SourceCorrupt) as exc:
        read(workdir)
    message = str(exc.value)
    assert str(workdir.node_db) in message and "directory" in message and "I/O" not in message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_jails_table"])
def test_corrupt_db(workdir: Workdir, damage: str) -> None:
    for i in range(200):
        workdir.add(f"j{i}", jid=i + 1, status=1, ip4_addr=f"127.0.1.{i % 250 + 1}", tags="x" * 200)
    real = workdir.node_db.resolve()
    conn = sqlite3.connect(real)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    if damage == "garbage":
        real.write_bytes(b"this is not a database" * 100)
    elif damage == "truncated":
        real.write_bytes(real.read_bytes()[:6000])
    else:
        conn = sqlite3.connect(real)
        conn.execute("DROP TABLE jails")
        conn.commit()
        conn.close()
    with pytest.raises(SourceCorrupt, match=str(workdir.node_db)):
        read(workdir)


@pytest.mark.parametrize("kind", ["xen", "qemu"])
def test_xen_and_qemu_vm_settings_come_from_their_own_db(workdir: Workdir, kind: str) -> None:
    """``xset ip4_addr=...`` (CBSD xenctl/xset) writes only the VM's own
    ``settings``; ``xls``/``qls`` read ``ip4_addr`` from there, as ``bls`` does for
    bhyve. jailsyncd read the per-VM DB of bhyve VMs only: a xen VM kept the address
    of its ``jails`` row, stale after ``xset``. ``xset astart`` writes the node DB's
    ``xen`` table, like ``bset`` the ``bhyve`` one; the NICs' MACs are in ``xennic``
    / ``qemunic``. A cross-arch jail (``qemu-aarch64-static``) is a jail: no VM DB."""
    workdir.add("vm1", jid=4242, status=0, emulator=kind, ip4_addr="DHCP")
    workdir.add("vm2", jid=0, status=0, emulator=kind, ip4_addr="127.0.48.2")
    workdir.add("arm1", jid=7, status=1, emulator="qemu-aarch64-static", ip4_addr="127.0.48.3")
    workdir.vm_set("vm1", ip4_addr="127.0.48.1")
    workdir.vm_set("vm2", astart=1)
    workdir.add_nic("vm1", "58:9c:fc:00:48:01")
    state = CbsdSource(workdir.root, read_macs=True).read()
    envs = {e.jname: e for e in state.environments}
    assert state.unreadable == ()
    assert envs["vm1"].running and envs["vm1"].ip4_addr == "127.0.48.1"
    assert envs["vm1"].macs == ("58:9c:fc:00:48:01",)
    assert not envs["vm2"].running and envs["vm2"].astart and envs["vm2"].awaiting_autostart
    assert envs["arm1"].running and envs["arm1"].kind == "jail" and envs["arm1"].ip4_addr == "127.0.48.3"


def test_locked_longer_than_busy_timeout(workdir: Workdir) -> None:
    workdir.add("j", jid=1, status=1, ip4_addr="127.0.0.9")
    writer = sqlite3.connect(workdir.node_db, isolation_level=None)
    writer.execute("PRAGMA locking_mode=EXCLUSIVE")  # how a writer can shut WAL readers out
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE jails SET jid = 2")
    started = time.monotonic()
    try:
        with pytest.raises(SourceLocked):
            read(workdir, busy=0.5)
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert time.monotonic() - started >= 0.45  # it waited for the busy timeout first
    assert [e.jid for e in read(workdir).environments] == [2]


def test_bhyve_settings_come_from_the_newest_per_vm_row(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="DHCP")
    workdir.set_vm("vm1", ip4_addr="127.0.0.50", tags="a", created="2099-01-01 10:00:00")
    workdir.set_vm("vm1", ip4_addr="127.0.0.51", tags="b", created="2099-06-01 10:00:00")
    workdir.set_vm("vm1", ip4_addr="127.0.0.49", tags="old", created="2098-01-01 10:00:00")
    [env] = read(workdir).environments
    assert (env.ip4_addr, env.tags) == ("127.0.0.51", "b")


def test_unreadable_per_vm_db_protects_only_that_vm(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    workdir.add("j1", jid=3, status=1, ip4_addr="127.0.0.3")
    shutil.rmtree(workdir.root / "jails-system" / "vm1")
    state = read(workdir)
    assert [j for j, _ in state.unreadable] == ["vm1"]
    assert {e.jname for e in state.environments} == {"vm1", "j1"}


def test_workdir_with_spaces_and_no_open_handles(tmp_path: Path) -> None:
    workdir = Workdir.create(tmp_path / "my cbsd dir #1")
    workdir.add("j", jid=1, status=1, ip4_addr="127.0.0.9")
    assert [e.jname for e in read(workdir).environments] == ["j"]
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [fd for fd in fds if "my cbsd dir" in fd]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_unreadable_db_as_another_user() -> None:
    base = Path(tempfile.mkdtemp(prefix="jailsyncd-perm-"))
    try:
        base.chmod(0o755)
        workdir = Workdir.create(base / "cbsd")
        for path in (base / "cbsd", base / "cbsd" / "var", base / "cbsd" / "var" / "db"):
            path.chmod(0o755)
        workdir.add("j", jid=1, status=1, ip4_addr="127.0.0.9")
        workdir.node_db.resolve().chmod(0o600)
        code = f"from pathlib import Path; from jailsyncd.adapters.cbsd import CbsdSource; CbsdSource(Path({str(workdir.root)!r})).read()"
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert proc.returncode != 0
        assert "SourceUnreadable" in proc.stderr and "permission denied" in proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("spoil", "error", "text"),
    [
        (lambda p: p.unlink(), SourceMissing, "node name file not found"),
        (lambda p: p.write_text(" \n"), SourceCorrupt, "node name file is empty"),
        (lambda p: p.write_bytes(b"n\xf6de1\n"), SourceUnreadable, "not UTF-8"),
        (lambda p: (p.unlink(), p.mkdir()), SourceUnreadable, "cannot read CBSD's node name"),
    ],
    ids=["missing", "blank", "latin1", "directory"],
)
def test_node_name_is_read_from_its_file_or_the_read_fails(workdir: Workdir, spoil, error, text) -> None:
    """Issue 10, item 5: the node name is part of CBSD's state (the cbsd-host meta, and
    the owner when host.name is unset). It used to fall back silently (to the DB's
    ``local`` table, or in the settings to this machine's host name); now a read
    without it fails, retryably, naming the file, and nothing is written."""
    path = workdir.root / "nodename"
    source = CbsdSource(workdir.root)
    assert source.nodename() == "node1" and source.read().nodename == "node1"
    spoil(path)
    for call in (source.nodename, source.read):
        with pytest.raises(error) as exc:
            call()
        assert str(exc.value).startswith(f"{path}: ") and text in str(exc.value)
        assert exc.value.retryable


def test_node_name_file_is_read_on_every_read(workdir: Workdir) -> None:
    source = CbsdSource(workdir.root)
    assert source.read().nodename == "node1"
    (workdir.root / "nodename").write_text("renamed\n")
    assert source.read().nodename == "renamed"
