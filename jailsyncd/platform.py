"""What differs between FreeBSD (where jailsyncd runs) and Linux (where it is tested).

The one module that knows about operating-system differences; everything else asks a
``Platform``. Called by ``adapters/probe`` (ICMP sockets, receive buffers),
``adapters/discovery`` (the neighbor table), ``cli``
(the ICMP rate limit, messages that fit the system), ``pidfile`` (which program a
process ID belongs to) and by anything else that must read a sysctl or run a system
command.

A ``Platform`` is a frozen value whose outside calls are seams: ``sysctl`` (read one
value), ``run`` (run a command, capture its output) and ``socket`` (open a socket).
``current()`` wires the real ones; tests build ``Platform("freebsd", ...)`` with
recorded sysctl answers and a socket that answers like FreeBSD's kernel, so FreeBSD
behaviour is reproduced at the boundary where it happens. The FreeBSD facts below are
from freebsd-src (14.x): sys/kern/uipc_sockbuf.c, sys/kern/uipc_socket.c,
sys/netinet/ip_icmp.c, sys/netinet/raw_ip.c, sys/kern/vfs_subr.c, sys/kern/kern_event.c.

File events for ``adapters/fswatch`` (the node DB watcher) live here too:
``Inotify`` (Linux, through ctypes on libc: the standard library has no binding) and
``Kqueue`` (FreeBSD, ``select.kqueue``), both behind the small ``FileEvents``
interface, chosen by ``Platform.file_events()``.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import math
import os
import select as _select
import socket as _socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Protocol

from jailsyncd.leases import Neighbor, parse_arp_libxo, parse_ip_neigh, parse_ndp

#: Linux's SO_RCVBUFFORCE (asm-generic/socket.h): as root it lifts net.core.rmem_max.
#: Python has no constant for it; the number means something else elsewhere.
_LINUX_SO_RCVBUFFORCE = 33


def _read_sysctl(name: str) -> str | None:
    """The real sysctl reader: ``sysctl -n`` where sysctl(8) exists (FreeBSD),
    /proc/sys on Linux. None when the name is unknown or unreadable."""
    if sys.platform.startswith("linux"):
        try:
            return Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            return None
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _run(argv: list[str]) -> str | None:
    """The real command runner: stdout of ``argv``, None when it fails or is missing."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


_DISPLAY = {"freebsd": "FreeBSD", "linux": "Linux"}


def _system_name(platform: str) -> str:
    for name in ("freebsd", "linux"):
        if platform.startswith(name):
            return name
    return platform


@dataclass(frozen=True)
class EchoLimit:
    """The kernel's limit on the echo replies the host sends, per second."""

    #: Average replies per second the kernel allows.
    limit: int
    #: Random variation of that limit, either way (FreeBSD's ``icmplim_jitter``).
    jitter: int
    #: The sysctl to raise, as an operator would type it.
    sysctl: str


@dataclass(frozen=True)
class Platform:
    #: ``freebsd``, ``linux``, or whatever else ``sys.platform`` says (treated like Linux
    #: minus its Linux-only options).
    system: str
    #: Reads one sysctl by its dotted name; None when unknown.
    sysctl: Callable[[str], str | None] = _read_sysctl
    #: Runs a command, returns its stdout (None when it failed).
    run: Callable[[list[str]], str | None] = _run
    #: Opens a socket: ``socket(family, type, proto)``.
    socket: Callable[..., _socket.socket] = _socket.socket
    #: The effective user ID (0: root, raw sockets allowed).
    euid: Callable[[], int] = os.geteuid
    #: The ``select`` module (kqueue and its constants on FreeBSD).
    select_module: Any = _select

    @property
    def freebsd(self) -> bool:
        return self.system == "freebsd"

    # -- processes ----------------------------------------------------------------

    def process_args(self, pid: int) -> list[str] | None:
        """The command line of process ``pid`` as a list of words; None when no such
        process exists (or this user cannot see it).

        Linux: /proc/PID/cmdline, NUL-separated. FreeBSD mounts no procfs by default,
        so ps(1) answers: ``-ww`` because without a terminal ps cuts its lines at 79
        columns (bin/ps/ps.c: ``termwidth = 79`` when no TIOCGWINSZ answers; ``-w``
        twice makes it UNLIMITED), ``command=`` for the command and its arguments with
        no header. ps joins the arguments with blanks, so they are split on blanks:
        enough to recognise a program, not to rebuild an argument holding a space."""
        if self.system == "linux":
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return None
            return [word.decode(errors="replace") for word in raw.split(b"\0") if word]
        out = self.run(["ps", "-ww", "-o", "command=", "-p", str(pid)])
        if out is None or not out.strip():
            return None
        return out.split()

    def process_age(self, pid: int) -> float | None:
        """Seconds since process ``pid`` started; None when it is gone or unreadable.

        Linux: field 22 of /proc/PID/stat (its start, in clock ticks after boot) against
        /proc/uptime. FreeBSD: ps(1)'s ``etimes`` keyword (bin/ps/keyword.c: elapsed
        time in whole seconds), ``=`` for no header line."""
        if self.system == "linux":
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                uptime = Path("/proc/uptime").read_text()
                # The command name (field 2) may hold blanks and parentheses: fields
                # after it are counted from its closing parenthesis.
                start = int(stat.rpartition(")")[2].split()[19])
                return max(float(uptime.split()[0]) - start / os.sysconf("SC_CLK_TCK"), 0.0)
            except (OSError, ValueError, IndexError):
                return None
        out = self.run(["ps", "-o", "etimes=", "-p", str(pid)])
        text = (out or "").strip()
        return float(text) if text.isdigit() else None

    # -- neighbor table -------------------------------------------------------------

    def neighbor_table(self) -> tuple[Neighbor, ...] | None:
        """The complete entries of the host's ARP and NDP tables (read-only: the
        commands only list them); None when a command failed.

        FreeBSD: ``arp -an --libxo json`` (usr.sbin/arp/arp.c: container ``arp``,
        list ``arp-cache``) and ``ndp -an`` (usr.sbin/ndp/ndp.c, its text columns,
        which every version prints); a failing ``ndp`` (a kernel without INET6)
        leaves the ARP entries, a failing ``arp`` fails the table. Linux: ``ip -json
        neigh`` (iproute2), both families at once."""
        if self.freebsd:
            arp = self.run(["arp", "-an", "--libxo", "json"])
            if arp is None:
                return None
            return parse_arp_libxo(arp) + parse_ndp(self.run(["ndp", "-an"]) or "")
        out = self.run(["ip", "-json", "neigh", "show"])
        return None if out is None else parse_ip_neigh(out)

    # -- ICMP sockets -------------------------------------------------------------

    @property
    def ping_sockets(self) -> bool:
        """Whether unprivileged ICMP datagram ("ping") sockets can exist here. FreeBSD
        has none: no protocol switch entry takes (SOCK_DGRAM, IPPROTO_ICMP), so
        socket() fails with EPROTONOSUPPORT (sys/kern/uipc_socket.c, socreate), and
        raw sockets need root (sys/netinet/raw_ip.c, rip_attach: PRIV_NETINET_RAW)."""
        return self.system == "linux"

    def icmp_unavailable_hint(self, privileged: bool) -> str:
        """What the operator can do when no ICMP socket can be opened."""
        if not privileged and not self.ping_sockets:
            return (
                f"{_DISPLAY.get(self.system, self.system)} has no unprivileged ICMP sockets: start jailsyncd as root "
                "(with daemon.user it switches to that user once its sockets are open), or set health.enabled = false"
            )
        if not privileged:
            return (
                "start jailsyncd as root (with daemon.user it switches to that user once its sockets are open), "
                "add its group to net.ipv4.ping_group_range, or set health.enabled = false"
            )
        return (
            "as root this means raw sockets are not allowed here (in a jail: allow.raw_sockets) "
            "or a resource limit was hit; or set health.enabled = false"
        )

    # -- receive buffers ------------------------------------------------------------

    def receive_buffer_options(self, privileged: bool) -> tuple[int, ...]:
        """Socket options to try, best first, to enlarge a receive buffer.

        Linux clamps SO_RCVBUF to net.core.rmem_max silently; as root SO_RCVBUFFORCE
        goes past it. FreeBSD has no such option: SO_RCVBUF fails with ENOBUFS above
        sb_max_adj (sys/kern/uipc_sockbuf.c, sbreserve_locked), so the caller must ask
        for less until the kernel accepts."""
        if self.system == "linux" and privileged:
            return (_LINUX_SO_RCVBUFFORCE, _socket.SO_RCVBUF)
        return (_socket.SO_RCVBUF,)

    def replies_fit(self, granted: int) -> int:
        """How many echo replies a receive buffer of ``granted`` bytes (as getsockopt
        reports it) holds before the kernel drops the next one; on the low side, so
        that the prober drains early rather than late.

        FreeBSD: a raw socket's record is its sockaddr plus the packet (~100 bytes for a
        64-byte echo) counted in sb_ccc against the buffer, and two mbufs (2 x MSIZE =
        512 bytes) counted in sb_mbcnt against min(8 x buffer, kern.ipc.maxsockbuf)
        (sballoc, sbreserve_locked and sbspace in sys/kern/uipc_sockbuf.c): the default
        9,216 bytes (net.inet.raw.recvspace) hold ~90 replies. Linux: getsockopt reports
        twice what was set and each reply costs its skb's truesize (~770 bytes)."""
        if not self.freebsd:
            return max(1, granted // 1024)
        sb_max = _int(self.sysctl("kern.ipc.maxsockbuf")) or 2 * 1024 * 1024
        return max(1, min(granted // 100, min(8 * granted, sb_max) // 512))

    # -- ICMP echo rate -------------------------------------------------------------

    def echo_limit(self) -> EchoLimit | None:
        """The kernel's limit on the echo replies this host sends, or None (unlimited).

        Only FreeBSD limits echo replies by default: net.inet.icmp.icmplim (200 per
        second, per VNET; 0 disables it), plus or minus net.inet.icmp.icmplim_jitter
        (16), counted per one-second window by badport_bandlim(BANDLIM_ICMP_ECHO) in
        icmp_input (sys/netinet/ip_icmp.c). Non-VNET jails' addresses are the host's own
        aliases, so the host answers their pings and this limit applies to all of them.
        Linux limits echo replies only if net.ipv4.icmp_ratemask says so (not by
        default)."""
        if not self.freebsd:
            return None
        limit = _int(self.sysctl("net.inet.icmp.icmplim"))
        if not limit:
            return None
        jitter = _int(self.sysctl("net.inet.icmp.icmplim_jitter"))
        return EchoLimit(limit, 16 if jitter is None else jitter, "net.inet.icmp.icmplim")

    def default_rate_limit(self) -> int:
        """Echo requests per second jailsyncd sends when ``health.rate_limit`` is unset:
        below the kernel's limit less its jitter, leaving a tenth for other pingers
        (monitoring, consul-esm); 0 (unlimited) where the kernel sets no limit."""
        return _rate_below(self.echo_limit())


    # -- file events ----------------------------------------------------------------

    def file_events(self) -> "FileEvents":
        """The kernel's file event interface here: inotify on Linux, kqueue where
        ``select`` has it (FreeBSD). Raises ``OSError`` when there is none or it cannot
        be set up (out of inotify instances, a seccomp filter): the caller then polls."""
        if self.system == "linux":
            return Inotify()
        if hasattr(self.select_module, "kqueue"):
            return Kqueue(self.select_module)
        raise OSError(_errno.ENOSYS, f"no file events on {self.system}")

    def raise_limit_hint(self, needed: float, explicit: bool) -> str:
        """What to change so that ``needed`` echo requests per second are allowed;
        ``explicit``: the rate in force comes from ``health.rate_limit``."""
        rate = math.ceil(needed)
        limit = self.echo_limit()
        if limit is None:  # only health.rate_limit paces (0 = unlimited would always fit)
            return f"raise health.rate_limit to {rate}"
        # the smallest icmplim whose default_rate_limit() reaches ``needed``
        value = math.ceil(needed * 10 / 9) + limit.jitter + 1
        if explicit and _rate_below(limit) >= rate:
            return f"raise health.rate_limit to {rate} (below {limit.sysctl}={limit.limit})"
        fix = f"sysctl {limit.sysctl}={value} (and in /etc/sysctl.conf)"
        return f"{fix}, and raise health.rate_limit to {rate} or remove it" if explicit else fix


def _rate_below(limit: EchoLimit | None) -> int:
    """``default_rate_limit`` for a kernel limit already read (each read of a sysctl
    is a process on FreeBSD)."""
    if limit is None:
        return 0
    return max(1, (limit.limit - limit.jitter) * 9 // 10)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# -- file events ------------------------------------------------------------------


@dataclass(frozen=True)
class FileEvent:
    """Something happened to ``path`` (a watched file, a name in a watched directory,
    or a watched directory itself); ``overflow``: the kernel dropped events, so
    anything may have changed (``path`` is then empty)."""

    path: str
    overflow: bool = False


class FileEvents(Protocol):
    """One kernel file event queue. ``watch`` says what to watch (idempotent: called
    again after every batch of events, it adds what is new, drops what is gone and
    re-opens what was replaced); ``read`` returns the events queued now, without
    blocking; ``fileno`` becomes readable when there are some."""

    name: str

    def fileno(self) -> int: ...

    def watch(self, dirs: Collection[str], files: Collection[str]) -> None: ...

    def read(self) -> list[FileEvent]: ...

    def close(self) -> None: ...


# From linux/inotify.h (the same numbers on every architecture).
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
#: struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len].
_INOTIFY_EVENT = struct.Struct("iIII")


class Inotify:
    """Linux inotify on directories: a directory watch reports every change to the
    names in it (content written, created, deleted, renamed over) with the name, so
    one watch per directory follows a file across replacements and a ``-wal`` that
    comes and goes, without re-adding anything. A missing directory is skipped (the
    next ``watch`` adds it once it exists); other failures (``ENOSPC``: out of
    ``fs.inotify.max_user_watches``) raise ``OSError``."""

    name = "inotify"
    #: No IN_ACCESS/IN_OPEN: reading the DB (ourselves) is not a change.
    MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR

    def __init__(self, libc: Any = None) -> None:
        # The C library already loaded into this process (find_library would start
        # ldconfig to look for it).
        self._libc = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
        for fn in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(self._libc, fn)  # AttributeError: a libc without inotify
        self._libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self._fd: int = fd
        self._wds: dict[str, int] = {}  # directory -> watch descriptor
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory

    def fileno(self) -> int:
        return self._fd

    def watch(self, dirs: Collection[str], files: Collection[str] = ()) -> None:
        for path in [d for d in self._wds if d not in dirs]:
            wd = self._wds.pop(path)
            self._dirs.pop(wd, None)
            self._libc.inotify_rm_watch(self._fd, wd)
        for path in dirs:
            if path in self._wds:
                continue
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), self.MASK)
            if wd < 0:
                code = ctypes.get_errno()
                if code in (_errno.ENOENT, _errno.ENOTDIR):
                    continue  # not there (yet): the next watch() tries again
                raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}")
            self._wds[path] = wd
            self._dirs[wd] = path

    def read(self) -> list[FileEvent]:
        events: list[FileEvent] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return events
            if not buf:
                return events
            events.extend(self._parse(buf))

    def _parse(self, buf: bytes) -> list[FileEvent]:
        events = []
        offset = 0
        while offset + _INOTIFY_EVENT.size <= len(buf):
            wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(buf, offset)
            raw = buf[offset + _INOTIFY_EVENT.size : offset + _INOTIFY_EVENT.size + length]
            offset += _INOTIFY_EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                events.append(FileEvent("", overflow=True))
                continue
            directory = self._dirs.get(wd)
            if directory is None:
                continue  # a watch removed since
            if mask & (IN_IGNORED | IN_MOVE_SELF):
                # The directory is gone, unmounted or renamed away: the next watch()
                # adds whatever directory has the name then.
                if mask & IN_MOVE_SELF:
                    self._libc.inotify_rm_watch(self._fd, wd)
                del self._dirs[wd]
                if self._wds.get(directory) == wd:
                    del self._wds[directory]
            name = os.fsdecode(raw.rstrip(b"\0"))
            events.append(FileEvent(os.path.join(directory, name) if name else directory))
        return events

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Kqueue:
    """FreeBSD kqueue: ``EVFILT_VNODE`` on open descriptors (kqueue(2)).

    A vnode filter watches one file, not a name, and a directory's knote fires only
    for its entries (``NOTE_WRITE`` when a name in it is created, removed or renamed:
    vop_create_post, vop_remove_post, vop_rename_post in sys/kern/vfs_subr.c), never
    for writes to the files in it. So each watched file is opened and registered with
    NOTE_WRITE | NOTE_EXTEND (a write; EXTEND when it grew: VOP_WRITE_POST in
    sys/sys/vnode.h), NOTE_ATTRIB (vop_setattr_post), NOTE_DELETE (its last name
    removed, or a rename over it) and NOTE_RENAME (renamed away), and each directory
    with NOTE_WRITE (plus NOTE_DELETE | NOTE_RENAME for the directory itself). After
    NOTE_DELETE/NOTE_RENAME the descriptor is closed, and ``watch`` opens whatever
    file has the name then (a DB replaced by rename, a ``-wal`` created again); it
    also re-opens a file whose (dev, inode) no longer matches its name, whatever
    events were seen. EV_CLEAR resets the state after each retrieval, as state
    transitions are what is reported. A kqueue descriptor is readable when events
    are pending (kqueue_poll in sys/kern/kern_event.c), so it waits in ``poll``
    with everything else.

    Descriptors are opened read-only and only watched, never read. Closing one drops
    this process's POSIX locks on that file (fcntl(2)); that happens only to a file
    that was replaced (SQLite's own descriptors then point to the replacement) or at
    stop. ``kq`` is the module providing ``kqueue``, ``kevent`` and the ``KQ_*``
    constants (``select``; tests pass one that answers like FreeBSD's kernel)."""

    name = "kqueue"

    def __init__(self, kq: Any, opener: Callable[[str, int], int] = os.open) -> None:
        self._k = kq
        self._open = opener
        self._kq = kq.kqueue()
        #: The notes registered for a file, for a directory, and those after which the
        #: descriptor no longer stands for the name (reopened by the next ``watch``).
        self.file_notes = kq.KQ_NOTE_WRITE | kq.KQ_NOTE_EXTEND | kq.KQ_NOTE_ATTRIB | kq.KQ_NOTE_DELETE | kq.KQ_NOTE_RENAME
        self.dir_notes = kq.KQ_NOTE_WRITE | kq.KQ_NOTE_DELETE | kq.KQ_NOTE_RENAME
        self.gone_notes = kq.KQ_NOTE_DELETE | kq.KQ_NOTE_RENAME | getattr(kq, "KQ_NOTE_REVOKE", 0)
        self._fds: dict[str, tuple[int, tuple[int, int]]] = {}  # path -> (fd, (dev, inode))
        self._paths: dict[int, str] = {}  # fd -> path

    def fileno(self) -> int:
        return int(self._kq.fileno())

    def watch(self, dirs: Collection[str], files: Collection[str]) -> None:
        wanted = {**{f: self.file_notes for f in files}, **{d: self.dir_notes for d in dirs}}
        for path, (_fd, identity) in list(self._fds.items()):
            if path not in wanted or _identity(path) != identity:
                self._drop(path)
        for path, fflags in wanted.items():
            if path in self._fds:
                continue
            try:
                fd = self._open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except (FileNotFoundError, NotADirectoryError):
                continue  # not there (yet): a NOTE_WRITE on its directory says when
            try:
                st = os.fstat(fd)
                k = self._k
                self._kq.control([k.kevent(fd, filter=k.KQ_FILTER_VNODE, flags=k.KQ_EV_ADD | k.KQ_EV_CLEAR, fflags=fflags)], 0, 0)
            except BaseException:
                os.close(fd)
                raise
            self._fds[path] = (fd, (st.st_dev, st.st_ino))
            self._paths[fd] = path

    def read(self) -> list[FileEvent]:
        events = []
        for kev in self._kq.control(None, 64, 0):
            path = self._paths.get(kev.ident)
            if path is None:
                continue
            events.append(FileEvent(path))
            if kev.fflags & self.gone_notes:
                self._drop(path)  # watch() opens what has the name now
        return events

    def _drop(self, path: str) -> None:
        fd, _identity = self._fds.pop(path)
        del self._paths[fd]
        os.close(fd)  # closing a descriptor removes its knotes (kqueue(2))

    def close(self) -> None:
        for path in list(self._fds):
            self._drop(path)
        self._kq.close()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def current() -> Platform:
    """The platform jailsyncd runs on, with the real seams."""
    return Platform(_system_name(sys.platform))
