"""The node DB watcher's portable logic, and its FreeBSD kqueue backend reproduced at
the boundary: a ``select``-like module whose kqueue answers as FreeBSD's does.

FreeBSD facts used (freebsd-src): EVFILT_VNODE and the NOTE_* values from
sys/sys/event.h; which vnode operation posts which note from sys/kern/vfs_subr.c
(vop_create_post: NOTE_WRITE on the directory; vop_remove_post: NOTE_WRITE on the
directory, NOTE_DELETE on the file; vop_rename_post: NOTE_WRITE on both directories,
NOTE_RENAME on the file renamed, NOTE_DELETE on a file renamed over; vop_setattr_post:
NOTE_ATTRIB) and sys/sys/vnode.h (VOP_WRITE_POST: NOTE_WRITE, plus NOTE_EXTEND when
the file grew); kqueue(2): closing a descriptor removes its knotes, EV_CLEAR resets
the state after retrieval. Files here are plain files in tmp_path: the watcher only
stats them; the SQLite-shaped cases with real inotify are in
tests/integration/test_fswatch.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from jailsyncd.adapters.cbsd import db_stamp
from jailsyncd.adapters.fswatch import DbWatcher
from jailsyncd.platform import IN_DELETE_SELF, IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, FileEvent, Inotify, Kqueue, Platform


@dataclass(frozen=True)
class Kevent:
    """``select.kevent`` as FreeBSD's Python builds it (the fields we use)."""

    ident: int
    filter: int = -1
    flags: int = 0
    fflags: int = 0


class FreeBSDKqueue:
    """A kqueue that records registrations and hands back the kevents a test queues,
    as FreeBSD's kernel would post them. Readable (through a pipe) while events are
    pending, like kqueue_poll in sys/kern/kern_event.c."""

    def __init__(self) -> None:
        self.registered: list[Kevent] = []
        self.pending: list[Kevent] = []
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.closed = False

    def fileno(self) -> int:
        return self._r

    def control(self, changes, max_events, timeout=None):
        for change in changes or ():
            self.registered.append(change)
        if not max_events:
            return []
        out, self.pending = self.pending[:max_events], self.pending[max_events:]
        if not self.pending:
            try:
                os.read(self._r, 4096)
            except BlockingIOError:
                pass
        return out

    def post(self, fd: int, fflags: int) -> None:
        self.pending.append(Kevent(fd, -4, 0, fflags))
        os.write(self._w, b"x")

    def close(self) -> None:
        self.closed = True
        os.close(self._r)
        os.close(self._w)


class FreeBSDSelect:
    """The parts of FreeBSD's ``select`` module the backend uses (sys/sys/event.h values)."""

    KQ_FILTER_VNODE = -4
    KQ_EV_ADD = 0x0001
    KQ_EV_CLEAR = 0x0020
    KQ_NOTE_DELETE = 0x0001
    KQ_NOTE_WRITE = 0x0002
    KQ_NOTE_EXTEND = 0x0004
    KQ_NOTE_ATTRIB = 0x0008
    KQ_NOTE_LINK = 0x0010
    KQ_NOTE_RENAME = 0x0020
    KQ_NOTE_REVOKE = 0x0040

    def __init__(self) -> None:
        self.queue = FreeBSDKqueue()

    def kqueue(self) -> FreeBSDKqueue:
        return self.queue

    @staticmethod
    def kevent(ident, filter=-1, flags=0, fflags=0, data=0, udata=0) -> Kevent:  # noqa: A002 - select.kevent's names
        return Kevent(ident, filter, flags, fflags)


K = FreeBSDSelect
FILE_NOTES = K.KQ_NOTE_WRITE | K.KQ_NOTE_EXTEND | K.KQ_NOTE_ATTRIB | K.KQ_NOTE_DELETE | K.KQ_NOTE_RENAME
DIR_NOTES = K.KQ_NOTE_WRITE | K.KQ_NOTE_DELETE | K.KQ_NOTE_RENAME


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "var" / "db").mkdir(parents=True)
    path = tmp_path / "var" / "db" / "local.sqlite"
    path.write_bytes(b"SQLite format 3\0" + b"\0" * 4080)
    return path


class Watched:
    """A ``DbWatcher`` on the fake kqueue, stepped by hand (no thread)."""

    def __init__(self, db: Path, also: tuple[Path, ...] = ()) -> None:
        self.select = FreeBSDSelect()
        self.kq = self.select.queue
        self.changes = 0
        self.watcher = DbWatcher(db, self._changed, 3600, events=lambda: Kqueue(self.select), also=also)
        self.watcher.setup()

    def _changed(self) -> None:
        self.changes += 1

    def fd(self, path: Path) -> int:
        """The descriptor the backend registered for ``path`` (the newest)."""
        fd, _identity = self.watcher._events._fds[str(path)]  # type: ignore[union-attr]
        return fd

    def registered(self) -> dict[int, int]:
        return {k.ident: k.fflags for k in self.kq.registered}


@pytest.fixture
def watched(db: Path):
    w = Watched(db)
    yield w
    w.watcher.stop()


def test_kqueue_registers_the_files_and_their_directory(db: Path, watched: Watched) -> None:
    assert watched.watcher.backend == "kqueue"
    # The -wal does not exist yet: nothing to open; the directory's NOTE_WRITE will say.
    assert set(watched.watcher._events._fds) == {str(db), str(db.parent)}  # type: ignore[union-attr]
    for k in watched.kq.registered:
        assert k.filter == K.KQ_FILTER_VNODE and k.flags == K.KQ_EV_ADD | K.KQ_EV_CLEAR
    assert watched.registered() == {watched.fd(db): FILE_NOTES, watched.fd(db.parent): DIR_NOTES}


def test_kqueue_write_to_the_db_is_one_change_and_an_event_without_a_change_is_none(db: Path, watched: Watched) -> None:
    with db.open("ab") as f:
        f.write(b"\1" * 4096)
    watched.kq.post(watched.fd(db), K.KQ_NOTE_WRITE | K.KQ_NOTE_EXTEND)
    watched.kq.post(watched.fd(db), K.KQ_NOTE_WRITE)  # the same write, seen twice: one change
    watched.watcher.step(1.0)
    assert watched.changes == 1
    # A note that changes nothing of the stamp (our own reader re-owning a file): none.
    watched.kq.post(watched.fd(db), K.KQ_NOTE_ATTRIB)
    watched.watcher.step(1.0)
    assert (watched.changes, watched.watcher.batches) == (1, 2)


def test_kqueue_opens_a_new_wal_when_the_directory_says_so(db: Path, watched: Watched) -> None:
    wal = Path(f"{db}-wal")
    wal.write_bytes(b"\7" * 4152)  # a writer created the -wal and appended a commit
    watched.kq.post(watched.fd(db.parent), K.KQ_NOTE_WRITE)  # vop_create_post
    watched.watcher.step(1.0)
    assert watched.changes == 1
    assert watched.registered()[watched.fd(wal)] == FILE_NOTES
    with wal.open("ab") as f:
        f.write(b"\7" * 4152)
    watched.kq.post(watched.fd(wal), K.KQ_NOTE_WRITE | K.KQ_NOTE_EXTEND)
    watched.watcher.step(1.0)
    assert watched.changes == 2
    # The writer's close checkpoints into the DB and removes the -wal (vop_remove_post).
    old_wal_fd = watched.fd(wal)
    with db.open("r+b") as f:
        f.write(b"\2" * 100)
    wal.unlink()
    watched.kq.post(watched.fd(db), K.KQ_NOTE_WRITE)
    watched.kq.post(old_wal_fd, K.KQ_NOTE_DELETE)
    watched.kq.post(watched.fd(db.parent), K.KQ_NOTE_WRITE)
    watched.watcher.step(1.0)
    assert watched.changes == 3
    assert str(wal) not in watched.watcher._events._fds  # type: ignore[union-attr]


def test_kqueue_follows_a_db_replaced_by_rename(db: Path, watched: Watched) -> None:
    old_fd = watched.fd(db)
    new = db.with_name("local.sqlite.new")
    new.write_bytes(b"SQLite format 3\0" + b"\3" * 8000)
    os.replace(new, db)
    # vop_rename_post: NOTE_WRITE on the directory, NOTE_DELETE on the file renamed over.
    watched.kq.post(watched.fd(db.parent), K.KQ_NOTE_WRITE)
    watched.kq.post(old_fd, K.KQ_NOTE_DELETE)
    watched.watcher.step(1.0)
    assert watched.changes == 1
    new_fd = watched.fd(db)
    assert os.fstat(new_fd).st_ino == os.stat(db).st_ino, "the replacement is the file watched now"
    assert watched.registered()[new_fd] == FILE_NOTES
    with db.open("ab") as f:
        f.write(b"\4" * 10)
    watched.kq.post(new_fd, K.KQ_NOTE_WRITE | K.KQ_NOTE_EXTEND)
    watched.watcher.step(1.0)
    assert watched.changes == 2


def test_kqueue_reopens_a_replaced_file_even_without_its_note(db: Path, watched: Watched) -> None:
    """A replacement whose notes were missed is still followed: each comparison checks
    that the descriptor is the file the name has now."""
    before = os.fstat(watched.fd(db)).st_ino
    new = db.with_name("x")
    new.write_bytes(b"other")
    os.replace(new, db)
    watched.watcher._check()
    assert watched.changes == 1
    assert os.fstat(watched.fd(db)).st_ino != before


def test_kqueue_node_name_file_appearing_and_changing_is_a_change(db: Path) -> None:
    """The node name file (``$workdir/nodename``, watched as ``also``) on kqueue: its
    directory's NOTE_WRITE says it was created (vop_create_post in
    sys/kern/vfs_subr.c), the file is then opened and its own NOTE_WRITE says it was
    rewritten; each is one change. Descriptors: the kqueue's, the DB's directory and
    file, the workdir and the node name file."""
    nodename = db.parents[2] / "nodename"
    w = Watched(db, also=(nodename,))
    try:
        assert set(w.watcher._events._fds) == {str(db), str(db.parent), str(nodename.parent)}  # type: ignore[union-attr]
        nodename.write_text("node1\n")
        w.kq.post(w.fd(nodename.parent), K.KQ_NOTE_WRITE)
        w.watcher.step(1.0)
        assert w.changes == 1
        assert w.registered()[w.fd(nodename)] == FILE_NOTES
        with nodename.open("a") as f:
            f.write("renamed\n")
        w.kq.post(w.fd(nodename), K.KQ_NOTE_WRITE | K.KQ_NOTE_EXTEND)
        w.watcher.step(1.0)
        assert w.changes == 2
    finally:
        w.watcher.stop()


def test_kqueue_closes_everything_on_stop(db: Path) -> None:
    w = Watched(db)
    fds = [fd for fd, _ in w.watcher._events._fds.values()]  # type: ignore[union-attr]
    w.watcher.stop()
    assert w.kq.closed
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


class ScriptedEvents:
    """An in-memory ``FileEvents`` (our own interface): hands back what a test posts."""

    name = "scripted"

    def __init__(self) -> None:
        self.kq = FreeBSDKqueue()
        self.events: list[FileEvent] = []
        self.watched: list[tuple[set[str], set[str]]] = []

    def fileno(self) -> int:
        return self.kq.fileno()

    def watch(self, dirs, files) -> None:
        self.watched.append((set(dirs), set(files)))

    def post(self, event: FileEvent) -> None:
        self.events.append(event)
        os.write(self.kq._w, b"x")

    def read(self) -> list[FileEvent]:
        out, self.events = self.events, []
        self.kq.control(None, 0)
        os.read(self.kq._r, 4096)
        return out

    def close(self) -> None:
        self.kq.close()


def scripted(db: Path, **kw):
    events = ScriptedEvents()
    calls: list[int] = []
    watcher = DbWatcher(db, lambda: calls.append(1), 3600, events=lambda: events, **kw)
    watcher.setup()
    return watcher, events, calls


def test_an_overflowed_queue_asks_for_a_cycle_although_the_stamp_is_the_same(db: Path) -> None:
    watcher, events, calls = scripted(db)
    events.post(FileEvent("", overflow=True))
    watcher.step(1.0)
    assert calls == [1]
    watcher.stop()


def test_events_for_other_names_are_not_even_compared(db: Path) -> None:
    watcher, events, calls = scripted(db)
    events.post(FileEvent(f"{db}-shm"))
    events.post(FileEvent(str(db.with_name("node2.sqlite"))))
    watcher.step(1.0)
    assert (calls, watcher.checks, watcher.batches) == ([], 0, 1)
    events.post(FileEvent(str(db)))
    watcher.step(1.0)
    assert (calls, watcher.checks) == ([], 1)  # compared: the stamp did not move
    watcher.stop()


def test_a_burst_of_events_is_compared_once(db: Path) -> None:
    watcher, events, calls = scripted(db)
    for _ in range(5):
        events.post(FileEvent(f"{db}-wal"))
    db.write_bytes(b"changed")
    watcher.step(1.0)
    assert (calls, watcher.checks) == ([1], 1)
    watcher.stop()


def test_the_safety_check_runs_every_interval_whatever_the_events(db: Path) -> None:
    events = ScriptedEvents()
    calls: list[int] = []
    watcher = DbWatcher(db, lambda: calls.append(1), 0.0, events=lambda: events)
    watcher.setup()
    db.write_bytes(b"changed, and the event was lost")
    watcher.step(0.0)  # nothing came: the periodic comparison is due (interval 0)
    assert calls == [1] and watcher.batches == 0
    watcher.stop()


def test_a_failing_backend_factory_means_poll(db: Path) -> None:
    def no_events():
        raise OSError(24, "inotify_init1: Too many open files")

    watcher = DbWatcher(db, lambda: None, 1.0, events=no_events)
    watcher.setup()
    assert watcher.backend == "poll" and watcher.fallback is not None and "Too many open files" in watcher.fallback
    watcher.stop()


def test_a_backend_failing_later_falls_back_to_poll_and_says_so(db: Path) -> None:
    warned = []
    events = ScriptedEvents()
    watcher = DbWatcher(db, lambda: None, 3600, events=lambda: events, warn=lambda event, **kw: warned.append((event, kw)))
    watcher.setup()

    def broken(dirs, files):
        raise OSError(28, "inotify_add_watch: No space left on device")

    events.watch = broken  # type: ignore[method-assign]
    events.post(FileEvent(str(db)))
    watcher.step(1.0)
    assert watcher.backend == "poll" and "No space left" in (watcher.fallback or "")
    [(event, fields)] = warned
    assert event == "db_watch_failed" and fields["backend"] == "scripted" and fields["now"] == "poll"
    watcher.stop()


def test_an_empty_wal_is_no_wal(db: Path) -> None:
    """Our read-only reader creates an empty -wal after CBSD's writer removed it."""
    before = db_stamp(str(db))
    Path(f"{db}-wal").write_bytes(b"")
    assert db_stamp(str(db)) == before
    Path(f"{db}-wal").write_bytes(b"\1" * 32)
    assert db_stamp(str(db)) != before


def test_file_events_are_chosen_by_system() -> None:
    class NoKqueue:
        pass

    inotify = Platform("linux").file_events()
    assert inotify.name == "inotify"
    inotify.close()
    with pytest.raises(OSError):
        Platform("darwin", select_module=NoKqueue()).file_events()
    kqueue = Platform("freebsd", select_module=FreeBSDSelect()).file_events()
    assert kqueue.name == "kqueue"
    kqueue.close()


def test_events_that_keep_coming_during_the_settle_join_the_batch(db: Path) -> None:
    """A write's events arrive over a few milliseconds: while they keep coming, the
    comparison waits (up to SETTLE_MAX), so three steps of one write are one report."""
    watcher, events, calls = scripted(db)
    steps = iter([b"wal created", b"wal appended", b"checkpointed"])
    read = events.read

    def read_while_the_writer_goes_on() -> list[FileEvent]:
        out = read()
        step = next(steps, None)
        if step is not None:  # the writer's next step, just after this read
            db.write_bytes(step)
            events.post(FileEvent(str(db)))
        return out

    events.read = read_while_the_writer_goes_on  # type: ignore[method-assign]
    events.post(FileEvent(f"{db}-wal"))
    watcher.step(1.0)
    assert (calls, watcher.checks) == ([1], 1)
    watcher.stop()


# -- Linux inotify at its boundary: the bytes read(2) returns, the errors libc sets --


def _inotify_event(wd: int, mask: int, name: bytes = b"") -> bytes:
    """One ``struct inotify_event`` as the kernel writes it (fs/notify/inotify/
    inotify_user.c): the name NUL-terminated and padded to a multiple of the struct's
    size, ``len`` counting the padding; no name at all for an event on the watch itself."""
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", wd, mask, 0, len(padded)) + padded


def test_inotify_reads_names_overflow_and_a_vanished_directory(tmp_path: Path) -> None:
    events = Inotify()
    try:
        events.watch([str(tmp_path)])
        wd = events._wds[str(tmp_path)]
        recorded = (
            _inotify_event(wd, IN_MODIFY, b"inv.node1.sqlite-wal")
            + _inotify_event(-1, IN_Q_OVERFLOW)  # the queue overflowed (fs.inotify.max_queued_events)
            + _inotify_event(wd, IN_DELETE_SELF)
            + _inotify_event(wd, IN_IGNORED)  # the kernel dropped the watch with its directory
        )
        assert events._parse(recorded) == [
            FileEvent(str(tmp_path / "inv.node1.sqlite-wal")),
            FileEvent("", overflow=True),
            FileEvent(str(tmp_path)),
            FileEvent(str(tmp_path)),
        ]
        assert events._wds == {}, "the next watch() adds the directory again"
    finally:
        events.close()


class NoWatchesLeft:
    """A libc whose inotify_add_watch fails like Linux past fs.inotify.max_user_watches
    (ENOSPC, inotify_add_watch(2)), or on a missing directory (ENOENT)."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.r, self.w = os.pipe()

        def add_watch(fd, path, mask):
            ctypes.set_errno(self.code)
            return -1

        self.inotify_add_watch = add_watch

    def inotify_init1(self, flags: int) -> int:
        return self.r

    def inotify_rm_watch(self, fd: int, wd: int) -> int:
        return 0


def test_inotify_out_of_watches_is_an_error_and_a_missing_directory_is_not(tmp_path: Path) -> None:
    libc = NoWatchesLeft(errno.ENOSPC)
    events = Inotify(libc)
    with pytest.raises(OSError) as exc:
        events.watch([str(tmp_path)])
    assert exc.value.errno == errno.ENOSPC and str(tmp_path) in str(exc.value)
    events.close()
    os.close(libc.w)
    libc = NoWatchesLeft(errno.ENOENT)
    events = Inotify(libc)
    events.watch([str(tmp_path / "not-mounted-yet")])  # skipped: added once it exists
    assert events._wds == {}
    events.close()
    os.close(libc.w)


def test_kqueue_with_cbsds_link_watches_the_real_file_once(tmp_path: Path) -> None:
    """CBSD's local.sqlite is a link to inv.<node>.sqlite: the file is opened once,
    through its real name; a link pointed elsewhere is seen in the directory."""
    (tmp_path / "db").mkdir()
    real = tmp_path / "db" / "inv.node1.sqlite"
    real.write_bytes(b"SQLite format 3\0")
    link = tmp_path / "db" / "local.sqlite"
    link.symlink_to(real.name)
    w = Watched(link)
    try:
        assert set(w.watcher._events._fds) == {str(real), str(tmp_path / "db")}  # type: ignore[union-attr]
        other = tmp_path / "db" / "inv.node2.sqlite"
        other.write_bytes(b"SQLite format 3\0 another")
        tmp_link = tmp_path / "db" / "local.sqlite.tmp"
        tmp_link.symlink_to(other.name)
        os.replace(tmp_link, link)
        w.kq.post(w.fd(tmp_path / "db"), K.KQ_NOTE_WRITE)  # vop_rename_post on the directory
        w.watcher.step(1.0)
        assert w.changes == 1
        assert set(w.watcher._events._fds) == {str(other), str(tmp_path / "db")}  # type: ignore[union-attr]
    finally:
        w.watcher.stop()
