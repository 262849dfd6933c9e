"""Watch CBSD's node DB (and the node name file) and say at once when it changed.

Called by ``daemon``: one ``DbWatcher`` while ``run`` serves, whose ``on_change``
asks for a cycle (``Daemon.kick("change")``). The OS-specific parts (inotify on
Linux, kqueue on FreeBSD) are in ``platform``; this module is the portable logic:

- what to watch: the directory of ``local.sqlite`` and, when it is a symlink (as
  CBSD makes it), the directory of the file it names, for the DB file and its
  ``-wal`` (SQLite puts the ``-wal`` beside the real file). Watching the directories
  too means a DB replaced by rename, a link pointed elsewhere and a ``-wal`` created
  or deleted are all seen; ``-shm`` and other names in them are ignored unread;
- whether it changed: only a different ``db_stamp`` (``adapters.cbsd``, the one
  change detector) is a change, so our own reads and anything else that touches
  the files without a commit ask for nothing (an empty ``-wal``, which our own
  read-only connection creates after CBSD's writer removed it, is none: otherwise
  every CBSD write would cost a second, empty cycle);
- bursts: one CBSD write creates the ``-wal``, appends to it, checkpoints into the
  DB and removes the ``-wal`` within a few milliseconds. Events are gathered until
  none came for ``SETTLE`` (at most ``SETTLE_MAX`` in all), then the stamp is compared
  once: one write, one request;
- the safety net: the stamp is also compared every ``interval`` (``sync.watch_interval``)
  whatever the events said, so a lost event (an inotify queue overflow is reported
  and answered with a request at once; anything else) costs at most one interval.
  Without file events (``sync.watch = "poll"``, or none could be set up, or they
  failed later) that comparison is the whole watcher, as before;
- other files a cycle cannot do without (``also``: CBSD's ``nodename``, the owner
  when ``host.name`` is unset) are watched the same way, their directory for events
  and their ``file_stamp`` for the comparison: a node name file that appears after
  a failed cycle ends the backoff wait like the DB coming back.

The watcher is one daemon thread blocked in ``poll`` on the event descriptor and a
wake-up pipe (so ``stop`` returns at once); it never reads the DB.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from pathlib import Path
from typing import Any, Callable

from jailsyncd.adapters.cbsd import db_stamp, file_stamp
from jailsyncd.platform import FileEvent, FileEvents

#: Quiet time that ends a burst of events: a CBSD write (sqlite3 open, append to the
#: -wal, checkpoint, close) produces its events within a few milliseconds.
SETTLE = 0.01
#: A burst never delays the comparison longer than this, however many events come.
SETTLE_MAX = 0.1

Stamp = tuple[Any, Any]


class DbWatcher:
    """Calls ``on_change()`` (from its own thread) when the node DB at ``path``
    changed. ``events``: makes the platform's file event queue (``Platform.file_events``),
    None to poll only; when it fails, the watcher polls and says why in
    ``fallback``. ``warn(event, **fields)`` reports a failure after the start (the
    daemon logs it)."""

    def __init__(
        self,
        path: Path | str,
        on_change: Callable[[], None],
        interval: float,
        *,
        events: Callable[[], FileEvents] | None = None,
        warn: Callable[..., None] | None = None,
        settle: float = SETTLE,
        also: tuple[Path | str, ...] = (),
    ) -> None:
        self.path = str(path)
        #: Other single files whose change asks for a cycle too (CBSD's nodename).
        self.also = tuple(str(p) for p in also)
        self.interval = interval
        self.settle = settle
        self._on_change = on_change
        self._make_events = events
        self._warn = warn
        self._events: FileEvents | None = None
        #: ``inotify``, ``kqueue`` or ``poll``: what tells the watcher about changes.
        self.backend = "poll"
        #: Why file events are not used although asked for (None: they are, or were
        #: not asked for).
        self.fallback: str | None = None
        #: Stamp comparisons made and changes reported (tests and diagnostics).
        self.checks = 0
        self.changes = 0
        #: Batches of events read and handled (tests wait on it).
        self.batches = 0
        self._stamp = self._current()
        self._next_check = time.monotonic() + interval
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what to watch -----------------------------------------------------------

    def targets(self) -> tuple[set[str], set[str], str]:
        """The directories and files to watch now, and the link's own path, all
        real paths (resolved each time: the link may be pointed at another file, and
        the workdir itself may be reached through a link). The files are the one the
        link names and its ``-wal``; the link itself is seen in its directory."""
        link_dir = os.path.realpath(os.path.dirname(self.path))
        real = os.path.realpath(self.path)
        dirs, files = {link_dir, os.path.dirname(real)}, {real, real + "-wal"}
        for other in self.also:
            other_dir, other_real = os.path.realpath(os.path.dirname(other)), os.path.realpath(other)
            dirs |= {other_dir, os.path.dirname(other_real)}
            files |= {os.path.join(other_dir, os.path.basename(other)), other_real}
        return dirs, files, os.path.join(link_dir, os.path.basename(self.path))

    def _current(self) -> Stamp:
        """What is compared: the DB's stamp and those of the ``also`` files."""
        return db_stamp(self.path), tuple(file_stamp(p) for p in self.also)

    @staticmethod
    def _relevant(event: FileEvent, dirs: set[str], files: set[str], link: str) -> bool:
        # One of the files, the link, or a directory itself (kqueue: a name in it
        # changed; inotify: it went away). Events name what was watched: real paths.
        return event.path in files or event.path == link or event.path in dirs

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Set up file events (or fall back to polling) and start the thread."""
        self.setup()
        self._thread = threading.Thread(target=self._run, name="db-watch", daemon=True)
        self._thread.start()

    def setup(self) -> None:
        """Set up file events, or say in ``fallback`` why the watcher polls
        (``start`` calls it; tests call it and then ``step`` without a thread)."""
        if self._make_events is not None:
            events: FileEvents | None = None
            try:
                events = self._make_events()
                dirs, files, _link = self.targets()
                events.watch(dirs, files)
            except Exception as exc:  # noqa: BLE001 - any failure means "poll", never "no watcher"
                self.fallback = f"{type(exc).__name__}: {exc}"
                if events is not None:
                    events.close()
            else:
                self._events = events
                self.backend = events.name

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (woken at once) and close the descriptors."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._close()

    def _close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step(max(0.0, self._next_check - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - the watcher falls back, it never dies
                self._fall_back(exc)

    # -- one step ----------------------------------------------------------------

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events, handle what came (settle, then
        compare the stamp once), and make the periodic comparison when it is due.
        The thread's loop body; tests call it directly."""
        batch = self._wait(timeout)
        if batch is not None:
            dirs, files, link = self.targets()
            relevant = any(e.overflow or self._relevant(e, dirs, files, link) for e in batch)
            overflow = any(e.overflow for e in batch)
            if relevant:
                end = time.monotonic() + SETTLE_MAX
                while (left := end - time.monotonic()) > 0:
                    more = self._wait(min(self.settle, left))
                    if not more:
                        break  # quiet for SETTLE (or woken to stop): the burst is over
                    overflow = overflow or any(e.overflow for e in more)
                self._check(force=overflow)
            self.batches += 1
        if not self._stopping.is_set() and time.monotonic() >= self._next_check:
            self._check()

    def _wait(self, timeout: float) -> list[FileEvent] | None:
        """The events that came within ``timeout`` (None: none, or woken to stop)."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._events is not None:
            poller.register(self._events.fileno(), select.POLLIN)
        ready = {fd for fd, _mask in poller.poll(math.ceil(timeout * 1000))}
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 64)
            except BlockingIOError:
                pass
            return None
        if self._events is not None and self._events.fileno() in ready:
            return self._events.read()
        return None

    def _check(self, *, force: bool = False) -> None:
        """Compare the stamp; call ``on_change`` when it moved (or ``force``: events
        were lost). Re-points the file events first (a replaced file, a new -wal)."""
        self._next_check = time.monotonic() + self.interval
        if self._events is not None:
            try:
                dirs, files, _link = self.targets()
                self._events.watch(dirs, files)
            except Exception as exc:  # noqa: BLE001 - e.g. ENOSPC re-adding a watch
                self._fall_back(exc)
        stamp = self._current()
        self.checks += 1
        if stamp != self._stamp or force:
            self._stamp = stamp
            self.changes += 1
            self._on_change()

    def _fall_back(self, exc: Exception) -> None:
        """File events failed while running: poll from now on, and say so once."""
        if self._events is None:
            if self._warn is not None:
                self._warn("db_watch_failed", path=self.path, backend=self.backend, error=f"{type(exc).__name__}: {exc}")
            self._stopping.wait(min(self.interval, 1.0))  # a bug in the poll itself: never a hot loop
            return
        events, self._events = self._events, None
        try:
            events.close()
        except OSError:
            pass
        self.fallback = f"{type(exc).__name__}: {exc}"
        if self._warn is not None:
            self._warn("db_watch_failed", path=self.path, backend=self.backend, error=self.fallback, now="poll")
        self.backend = "poll"
        # Whatever the lost events said, look now.
        self._check(force=False)
