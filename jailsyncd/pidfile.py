"""The pidfile of ``jailsyncd run --pidfile``, and how ``jailsyncd kick`` trusts one.

Called by ``daemon`` (``Pidfile``: lock at start, write once start-up succeeded,
remove at exit) and by ``cli`` (``running_jailsyncd`` for ``kick``).

The file is locked with flock(2) for as long as ``run`` lives, the convention of
FreeBSD's pidfile(3) (lib/libutil/pidfile.c opens it with flopen(3), which takes
``flock(LOCK_EX | LOCK_NB)``), so a second ``run`` on the same file fails at once
naming the first one's PID instead of overwriting the file and removing it on exit.
Under the rc.d script daemon(8) ``-p`` writes and locks the file for its child:
``run`` given that same file finds it locked and holding its own PID, and leaves it
to daemon(8).

``kick`` signals a PID only if that process is a ``jailsyncd run``: a pidfile left
behind by a crash may name a PID the system has since given to another program, and
SIGUSR1's default action would kill it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from jailsyncd.errors import NotRunning, PidfileError
from jailsyncd.platform import Platform

#: How long a ``run`` that finds the pidfile locked waits for its holder to write it.
_HOLDER_WAIT = 1.0


class Pidfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        #: daemon(8) ``-p`` holds this file for us: neither write nor remove it.
        self.supervised = False

    def lock(self) -> None:
        """Create and lock the file (emptied: the PID is written by ``write``), or raise
        ``PidfileError`` naming the process that holds it."""
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise PidfileError(f"{self.path}: cannot create the pidfile: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                if holder == os.getpid():
                    self.supervised = True
                    return
                who = f"PID {holder}" if holder else "a process that has not written its PID yet"
                raise PidfileError(f"{self.path}: jailsyncd is already running ({who}); stop it first, or give this one another --pidfile") from None
            # A stopping jailsyncd removes the file while it still holds the lock: make
            # sure the file locked is the one at the path, else try again.
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                self._fd = fd
                return
            os.close(fd)
        raise PidfileError(f"{self.path}: the pidfile keeps being replaced; is another jailsyncd starting and stopping?")

    def write(self) -> None:
        if self._fd is not None:
            data = f"{os.getpid()}\n".encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Remove the file (only if it is still ours) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(fd: int) -> int | None:
    """The PID in a file another process holds locked; it may be about to write it."""
    deadline = time.monotonic() + _HOLDER_WAIT
    while True:
        try:
            pid = _pid(os.pread(fd, 64, 0))
        except OSError:
            pid = None
        if pid is not None:
            return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _pid(raw: bytes) -> int | None:
    """The process ID a pidfile holds, or None for anything else."""
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def is_jailsyncd_run(args: list[str]) -> bool:
    """Whether a command line is ``jailsyncd ... run``: the installed script (run by
    its interpreter or not) or ``python -m jailsyncd``."""
    named = any(Path(word).name == "jailsyncd" for word in args) or any(a == "-m" and b == "jailsyncd" for a, b in zip(args, args[1:]))
    return named and "run" in args


def running_jailsyncd(path: Path, platform: Platform) -> int:
    """The PID of the ``jailsyncd run`` that ``path`` names, or ``NotRunning`` saying
    why there is none to signal."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotRunning(f"{path}: no pidfile; is jailsyncd run active, started with --pidfile {path} (rc.d/jailsyncd passes it)?") from None
    except PermissionError:
        raise NotRunning(f"{path}: cannot read the pidfile: permission denied (run kick as root or as jailsyncd's user)") from None
    except OSError as exc:
        raise NotRunning(f"{path}: cannot read the pidfile: {exc.strerror}") from None
    pid = _pid(raw) or 0
    if pid <= 1:  # kill(0) and kill(-1) would signal whole groups: never
        raise NotRunning(f"{path}: does not hold a process ID")
    args = platform.process_args(pid)
    if args is None:
        raise NotRunning(f"{path}: process {pid} is not running (a stale pidfile)")
    if not is_jailsyncd_run(args):
        shown = " ".join(args)[:100] or "no command line"
        raise NotRunning(f"{path}: process {pid} is not jailsyncd ({shown}): a stale pidfile; nothing signalled")
    return pid
