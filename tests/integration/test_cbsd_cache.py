"""The CBSD adapter's per-VM settings cache, against real SQLite files shaped like CBSD's.

A running VM's per-VM DB is re-read only when its stamp (identity, size, mtime of the
DB and its ``-wal``; the DB's ctime) changed, or while it is younger than
``RACY_WINDOW``. Most tests set the window to 0 so that the cache is really used
(files made by a test are always "recent"); every change must still be seen on the
very next read of the same ``CbsdSource``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from jailsyncd.adapters import cbsd
from jailsyncd.adapters.cbsd import CbsdSource
from testing.sample import Workdir


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cbsd, "RACY_WINDOW", 0.0)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URIs of every SQLite connection opened while the test runs."""
    uris: list[str] = []
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        uris.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return uris


def vm_db(workdir: Workdir, jname: str) -> Path:
    return workdir.root / "jails-system" / jname / "local.sqlite"


def env(source: CbsdSource, jname: str):
    state = source.read()
    return {e.jname: e for e in state.environments}[jname], state


@pytest.mark.usefixtures("no_racy_window")
def test_vm_settings_change_is_seen_on_the_next_read(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50", tags="a")
    source = CbsdSource(workdir.root)
    assert (env(source, "vm1")[0].ip4_addr, source.vm_reads) == ("127.0.0.50", 1)
    source.read()  # CBSD's -wal now exists (our first read-only open made it)
    assert (env(source, "vm1")[0].ip4_addr, source.vm_reads) == ("127.0.0.50", 0)  # from cache

    workdir.set_vm("vm1", ip4_addr="127.0.0.51", tags="b", created="2099-01-01 00:00:00")  # cbsd bset
    vm, _ = env(source, "vm1")
    assert (vm.ip4_addr, vm.tags, source.vm_reads) == ("127.0.0.51", "b", 1)


@pytest.mark.usefixtures("no_racy_window")
def test_a_noop_read_opens_only_the_node_db(workdir: Workdir, opened: list[str]) -> None:
    for i in range(5):
        workdir.add(f"vm{i}", jid=100 + i, status=0, emulator="bhyve", ip4_addr=f"127.0.0.{50 + i}")
    workdir.add("j1", jid=3, status=1, ip4_addr="127.0.0.3")
    source = CbsdSource(workdir.root)
    source.read()
    source.read()
    opened.clear()
    state = source.read()
    assert len(state.environments) == 6 and source.vm_reads == 0
    assert len(opened) == 1 and "var/db/local.sqlite" in opened[0] and "mode=ro" in opened[0]


@pytest.mark.usefixtures("no_racy_window")
def test_a_row_committed_only_to_the_wal_is_seen(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    source = CbsdSource(workdir.root)
    source.read()
    source.read()
    writer = sqlite3.connect(vm_db(workdir, "vm1"), isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")  # the row stays in the -wal only
        writer.execute("INSERT INTO settings (ip4_addr, tags, created) VALUES ('127.0.0.52', 'w', '2099-01-01 00:00:00')")
        assert Path(str(vm_db(workdir, "vm1")) + "-wal").stat().st_size > 0
        vm, _ = env(source, "vm1")
        assert (vm.ip4_addr, vm.tags) == ("127.0.0.52", "w")
    finally:
        writer.close()


@pytest.mark.usefixtures("no_racy_window")
def test_a_file_put_back_with_its_old_size_and_mtime_is_seen(workdir: Workdir) -> None:
    """Rollback-journal mode (no -wal): an in-place change of the same size, with the
    mtime set back (``cp -p``, ``touch -r``), still changes the DB's ctime."""
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    path = vm_db(workdir, "vm1")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    source = CbsdSource(workdir.root)
    source.read()
    assert env(source, "vm1")[0].ip4_addr == "127.0.0.50" and source.vm_reads == 0
    before = path.stat()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE settings SET ip4_addr = '127.0.0.59'")  # same length, same page
    conn.close()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert env(source, "vm1")[0].ip4_addr == "127.0.0.59" and source.vm_reads == 1


def test_recently_written_dbs_are_not_trusted(workdir: Workdir) -> None:
    """Within RACY_WINDOW of a write, a second write could keep the same timestamp:
    such a DB is read again every time."""
    assert cbsd.RACY_WINDOW >= 1
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    source = CbsdSource(workdir.root)
    for _ in range(3):
        source.read()
        assert source.vm_reads == 1


@pytest.mark.usefixtures("no_racy_window")
def test_a_vm_db_gone_after_caching_is_unreadable_not_stale(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    workdir.add("j1", jid=3, status=1, ip4_addr="127.0.0.3")
    source = CbsdSource(workdir.root)
    source.read()
    source.read()
    shutil.rmtree(workdir.root / "jails-system" / "vm1")
    state = source.read()
    assert [j for j, _ in state.unreadable] == ["vm1"]


@pytest.mark.usefixtures("no_racy_window")
def test_stopped_vms_are_forgotten_and_read_afresh_when_started(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    source = CbsdSource(workdir.root)
    source.read()
    source.read()
    workdir.stop("vm1")
    source.read()
    assert source.vm_reads == 0 and not source._vm_cache
    workdir.start("vm1", jid=4343)
    assert env(source, "vm1")[0].ip4_addr == "127.0.0.50" and source.vm_reads == 1


@pytest.mark.usefixtures("no_racy_window")
def test_no_handle_is_kept_between_reads(tmp_path: Path) -> None:
    workdir = Workdir.create(tmp_path / "cbsd dir")
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="127.0.0.50")
    workdir.add("j1", jid=3, status=1, ip4_addr="127.0.0.3")
    source = CbsdSource(workdir.root)
    for _ in range(3):
        source.read()
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [fd for fd in fds if "cbsd dir" in fd]


def test_unchanged_tells_whether_a_read_now_would_repeat_the_last(workdir: Workdir, no_racy_window: None) -> None:
    """``CbsdSource.unchanged()`` (issue 13, target 3: a periodic cycle with nothing
    changed skips everything on it): True after a read while the node DB, its
    ``-wal``, the node name file and the running VMs' DBs keep their stamps; False
    before any read, after a write to any of them, and after a failed read. Our own
    read may create an empty ``-wal`` that the writer had removed: such a read cannot
    vouch for itself, the next one does (``reread``)."""
    workdir.add("j1", jid=3, status=1, ip4_addr="127.0.0.3")
    workdir.add("vm1", jid=4242, status=1, emulator="bhyve", ip4_addr="127.0.0.50")
    source = CbsdSource(workdir.root)
    assert not source.unchanged()

    def reread() -> None:
        source.read()
        if not source.unchanged():
            source.read()
        assert source.unchanged()

    reread()
    assert source.unchanged()
    workdir.set("j1", ip4_addr="127.0.0.4")  # the node DB
    assert not source.unchanged()
    reread()
    workdir.set_vm("vm1", ip4_addr="127.0.0.51")  # a running VM's own DB
    assert not source.unchanged()
    reread()
    (workdir.root / "nodename").write_text("node2\n")  # the owner may follow it
    assert not source.unchanged()
    reread()
    assert source.read().nodename == "node2"
    workdir.node_db.rename(workdir.node_db.with_suffix(".gone"))
    with pytest.raises(cbsd.SourceError):
        source.read()
    assert not source.unchanged()


def test_unchanged_distrusts_files_written_just_before_the_read(workdir: Workdir) -> None:
    """Within ``RACY_WINDOW`` of a write a second write could keep the same stamp:
    such a read cannot vouch for itself."""
    workdir.add("j1", jid=3, status=1, ip4_addr="127.0.0.3")
    source = CbsdSource(workdir.root)
    source.read()
    assert not source.unchanged()
