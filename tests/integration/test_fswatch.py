"""The node DB watcher on Linux: real inotify, real CBSD-shaped WAL SQLite files
(``testing.sample``: written like CBSD writes, a connection per write in WAL mode,
and the sqlite3 CLI CBSD itself runs). No Consul here.

Most tests step the watcher by hand (``DbWatcher.step``: one wait for events, the
settle, the comparison), so they need no thread and no sleep: the writes are done,
and their events queued, before the step reads them. Two tests run the real thread
and wait for its report with a deadline.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from harness import wait_for

from jailsyncd.adapters.cbsd import CbsdSource, node_db_path
from jailsyncd.adapters.fswatch import DbWatcher
from jailsyncd.platform import current
from testing.sample import Workdir


class Watch:
    """A watcher on ``sample``'s node DB with file events, counting its reports."""

    def __init__(self, db: Path, interval: float = 3600.0, events=None) -> None:
        self.reports: list[float] = []
        self.watcher = DbWatcher(db, lambda: self.reports.append(time.monotonic()), interval, events=events or current().file_events)

    def until(self, count: int, deadline: float = 2.0) -> None:
        """Step until ``count`` reports (or fail at the deadline)."""
        end = time.monotonic() + deadline
        while len(self.reports) < count and time.monotonic() < end:
            self.watcher.step(end - time.monotonic())
        assert len(self.reports) >= count, f"{len(self.reports)} reports within {deadline}s, expected {count}"

    def drain(self) -> None:
        """Handle every event queued now: the step after the last one waits 50 ms."""
        batches = -1
        while batches != self.watcher.batches:
            batches = self.watcher.batches
            self.watcher.step(0.05)


@pytest.fixture
def watch(sample: Workdir):
    w = Watch(node_db_path(sample.root))
    w.watcher.setup()
    assert w.watcher.backend == "inotify", w.watcher.fallback
    yield w
    w.watcher.stop()


def test_a_cbsd_write_is_reported_once(sample: Workdir, watch: Watch) -> None:
    sample.start("web1", jid=42)  # cbsd jstart: one connection, PRAGMA, UPDATE, close
    watch.until(1)
    watch.drain()
    assert len(watch.reports) == 1, "one write, one request"


def test_a_write_by_the_sqlite3_cli_is_reported_once(sample: Workdir, watch: Watch) -> None:
    """What CBSD's cbsdsqlrw does: the sqlite3 program, one statement, exit."""
    subprocess.run(["sqlite3", str(sample.node_db), "UPDATE jails SET jid = 77 WHERE jname = 'web1';"], check=True, timeout=30)
    watch.until(1)
    watch.drain()
    assert len(watch.reports) == 1


def test_several_writes_are_each_reported(sample: Workdir, watch: Watch) -> None:
    for jid in (10, 11, 12):
        sample.start("web1", jid=jid)
        watch.until(jid - 9)
    watch.drain()
    assert len(watch.reports) == 3


def test_our_own_reads_and_shm_writes_are_no_change(sample: Workdir, watch: Watch) -> None:
    source = CbsdSource(sample.root)
    source.read()  # creates an empty -wal and a -shm next to the DB (read-only: left there)
    source.read()
    watch.drain()
    assert watch.watcher.checks >= 1, "the reader's -wal was looked at"
    shm = Path(f"{os.path.realpath(sample.node_db)}-shm")
    with shm.open("r+b") as f:  # what another reader's lock bookkeeping does
        f.write(b"\1" * 8)
    checks = watch.watcher.checks
    watch.drain()
    assert watch.watcher.checks == checks, "-shm events are not even compared"
    assert watch.reports == []


def test_a_db_replaced_by_rename_is_reported_and_still_watched(sample: Workdir, watch: Watch, tmp_path: Path) -> None:
    real = Path(os.path.realpath(sample.node_db))
    copy = real.with_name("inv.node1.sqlite.restore")
    with sqlite3.connect(real) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    dst.close()
    src.close()
    with sqlite3.connect(copy, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("UPDATE jails SET jid = 99 WHERE jname = 'web1'")
    conn.close()
    os.replace(copy, real)  # a DB restored from a backup
    watch.until(1)
    sample.start("web1", jid=100)  # and written again afterwards
    watch.until(2)
    assert sample.get("web1", "jid") == 100


def test_a_link_pointed_at_another_db_is_followed(sample: Workdir, watch: Watch, tmp_path: Path) -> None:
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    other = other_dir / "inv.node1.sqlite"
    shutil.copy(os.path.realpath(sample.node_db), other)
    tmp_link = sample.node_db.with_name("local.sqlite.tmp")
    tmp_link.symlink_to(other)
    os.replace(tmp_link, sample.node_db)  # ln -sf, atomically
    watch.until(1)
    sample.start("web1", jid=5)  # writes the file in the other directory
    watch.until(2)


def test_the_thread_reports_a_change_and_stops(sample: Workdir) -> None:
    w = Watch(node_db_path(sample.root))
    w.watcher.start()
    try:
        assert w.watcher.backend == "inotify"
        sample.stop("db1")
        wait_for(lambda: w.reports, timeout=3, what="the watcher's report")
    finally:
        w.watcher.stop()
    assert w.watcher._thread is not None and not w.watcher._thread.is_alive()


def test_without_file_events_the_poll_still_sees_every_change(sample: Workdir) -> None:
    def no_inotify():
        raise OSError(24, "inotify_init1: Too many open files")

    w = Watch(node_db_path(sample.root), interval=0.1, events=no_inotify)
    w.watcher.start()
    try:
        assert w.watcher.backend == "poll" and "Too many open files" in (w.watcher.fallback or "")
        sample.start("web1", jid=8)
        wait_for(lambda: len(w.reports) == 1, timeout=3, what="the poll's report")
        sample.stop("web1")
        wait_for(lambda: len(w.reports) == 2, timeout=3, what="the poll's second report")
    finally:
        w.watcher.stop()


def test_a_workdir_reached_through_a_symlink_is_watched(tmp_path: Path) -> None:
    """cbsd.workdir may name a link (e.g. /usr/jails -> a dataset mounted elsewhere):
    the events come for the real directory, and must still be recognised."""
    from testing.sample import create_sample

    real = create_sample(tmp_path / "data" / "jails")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr" / "jails").symlink_to(tmp_path / "data" / "jails")
    w = Watch(node_db_path(tmp_path / "usr" / "jails"))
    w.watcher.setup()
    try:
        real.start("web1", jid=9)
        w.until(1)
    finally:
        w.watcher.stop()


@pytest.mark.parametrize("events", [True, False], ids=["inotify", "poll"])
def test_the_node_name_file_is_watched_too(sample: Workdir, events: bool) -> None:
    """``also``: CBSD's ``nodename`` (the owner when ``host.name`` is unset) coming
    back, or changing, is a change like a DB write (issue 10, item 17's class: a
    cycle that failed on it is retried at once); reading it is none."""
    nodename = sample.root / "nodename"
    nodename.unlink()
    reports: list[float] = []
    watcher = DbWatcher(
        node_db_path(sample.root), lambda: reports.append(time.monotonic()), 0.05 if not events else 3600.0,
        events=current().file_events if events else None, also=(nodename,),
    )
    watcher.setup()
    try:
        assert watcher.backend == ("inotify" if events else "poll"), watcher.fallback
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            watcher.step(0.05)
        assert reports == []
        nodename.write_text("node1\n")
        end = time.monotonic() + 2
        while not reports and time.monotonic() < end:
            watcher.step(end - time.monotonic())
        assert len(reports) == 1
        nodename.read_text()
        CbsdSource(sample.root).read()
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            watcher.step(0.05)
        assert len(reports) == 1, "reading the files is no change"
    finally:
        watcher.stop()
