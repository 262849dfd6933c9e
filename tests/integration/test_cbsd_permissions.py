"""Which permissions a non-root jailsyncd needs on CBSD's databases (issue 11, item 11).

CBSD keeps its databases in WAL mode (every writer sets ``journal_mode=WAL``) and
writes through short-lived processes (``cbsdsqlrw``, the ``sqlite3`` CLI): the last
connection to close checkpoints and deletes the ``-wal`` and ``-shm`` files, so most of
the time only the database file exists. jailsyncd opens it with ``mode=ro``. What SQLite
then needs is decided in SQLite's own unix VFS (``unixOpenSharedMemory`` in
``src/os_unix.c``; read-only ``-shm`` support since SQLite 3.22.0), the same code on
FreeBSD as on Linux, so these tests run the real library as an unprivileged user:

- with no ``-wal``/``-shm`` present, the reader creates them: it needs write access to
  the folder (CBSD's folders are 0770 ``cbsd:cbsd``, so group ``cbsd`` is enough);
- while a writer has the database open (so both files exist), read access to the three
  files suffices;
- without the folder's write access and with no writer around, the open fails, and
  jailsyncd says so in one line naming the file (exit 66), never "no jails".

Run as root only (the test drops to uid 65534 in a forked child).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

import pytest

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.errors import SourceError
from testing.sample import Workdir

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")]

UID, GID = 65534, 4242  # the reader; GID stands for group cbsd


@pytest.fixture
def cbsd_tree():
    """A CBSD workdir outside pytest's private tmp (the reader must reach it)."""
    top = Path(tempfile.mkdtemp(prefix="jailsyncd-perm-"))
    top.chmod(0o755)
    workdir = Workdir.create(top / "cbsd")
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.50.1")
    yield workdir
    shutil.rmtree(top)


def own(workdir: Workdir, dir_mode: int, file_mode: int, gid: int = GID) -> None:
    """root:gid and these modes on the workdir's folders and files, as CBSD sets them."""
    for path in [workdir.root, *workdir.root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, 0, gid)
        path.chmod(dir_mode if path.is_dir() else file_mode)


def read_as_reader(workdir: Workdir, groups: list[int]) -> object:
    """``CbsdSource.read()`` in a child running as UID with ``groups``: the jnames it
    read, or the ``SourceError`` text."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the reader, read, report, never return
        try:
            os.setgroups(groups)
            os.setresgid(groups[0], groups[0], groups[0])
            os.setresuid(UID, UID, UID)
            try:
                result: object = sorted(e.jname for e in CbsdSource(workdir.root).read().environments)
            except SourceError as exc:
                result = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails on it
                result = f"unexpected {type(exc).__name__}: {exc}"
            os.write(wfd, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def db_files(workdir: Workdir) -> set[str]:
    return {p.name for p in (workdir.root / "var" / "db").iterdir() if not p.is_symlink()}


def test_group_cbsd_with_cbsds_own_modes_reads(cbsd_tree: Workdir) -> None:
    own(cbsd_tree, 0o770, 0o660)
    assert db_files(cbsd_tree) == {"inv.node1.sqlite"}, "no -wal/-shm when no writer is open"
    assert read_as_reader(cbsd_tree, [GID]) == ["web1"]
    # The read-only reader created them (and, read-only, cannot remove them again).
    assert db_files(cbsd_tree) == {"inv.node1.sqlite", "inv.node1.sqlite-wal", "inv.node1.sqlite-shm"}
    shm = cbsd_tree.root / "var" / "db" / "inv.node1.sqlite-shm"
    assert stat.S_IMODE(shm.stat().st_mode) == 0o660  # SQLite gives them the database's mode


def test_a_read_only_folder_fails_when_no_writer_holds_the_files(cbsd_tree: Workdir) -> None:
    own(cbsd_tree, 0o750, 0o640)
    result = read_as_reader(cbsd_tree, [GID])
    assert isinstance(result, str) and result.startswith("SourceUnreadable: ")
    assert "inv.node1.sqlite" in result or "local.sqlite" in result
    assert "folder" in result and "writable" in result


def test_read_access_suffices_while_the_wal_files_exist(cbsd_tree: Workdir) -> None:
    own(cbsd_tree, 0o750, 0o640)
    writer = sqlite3.connect(cbsd_tree.node_db, isolation_level=None)  # a CBSD command mid-write
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("UPDATE jails SET ip4_addr = '127.0.50.2' WHERE jname = 'web1'")
        own(cbsd_tree, 0o750, 0o640)  # the -wal/-shm it created: read-only for the group too
        assert read_as_reader(cbsd_tree, [GID]) == ["web1"]
    finally:
        writer.close()


def test_not_in_the_group_is_permission_denied(cbsd_tree: Workdir) -> None:
    own(cbsd_tree, 0o770, 0o660)
    result = read_as_reader(cbsd_tree, [GID + 1])
    assert isinstance(result, str) and result.startswith("SourceUnreadable: ") and "permission denied" in result
