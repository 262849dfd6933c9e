"""Least privilege: ``jailsyncd run`` started as root switches for good to ``daemon.user``.

Called by ``cli``: ``run`` resolves the identity at start, opens what needs root (the
ICMP sockets, the pidfile), then ``Daemon.run`` calls ``drop`` before anything serves
a request or runs a cycle; right after it ``needed_files`` are checked as the new
user. ``check-config --service`` runs the same checks in a child process that drops
to the user first (``as_user``), so ``service jailsyncd configtest`` (run as root)
sees what the dropped daemon would see.

The switch is the one FreeBSD's own tools make (ping(8) opens its raw sockets, then
setuid(2)s away): supplementary groups first (``setgroups``, from the group database
as initgroups(3) would), then real, effective and saved group ID, then user ID
(``setresgid``/``setresuid``), then a check that root cannot be regained. A socket
keeps working after the switch: FreeBSD checks the raw-socket privilege when the
socket is created (``rip_attach`` in sys/netinet/raw_ip.c), and so does Linux.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jailsyncd.adapters.cbsd import node_db_path, nodename_path
from jailsyncd.errors import ConfigError, JailsyncdError, PrivilegeError
from jailsyncd.settings import Settings


@dataclass(frozen=True)
class Identity:
    """Who ``run`` becomes: user name, uid, primary gid and every group it is in."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.user} (uid {self.uid}, gid {self.gid})"


def _passwd(user: str) -> pwd.struct_passwd:
    """The passwd entry of ``user``, a name or a number (KeyError, OverflowError)."""
    return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)


def resolve(user: str, group: str, where: str) -> Identity | None:
    """The identity for ``daemon.user``/``daemon.group``; None when no user is set.
    ``where`` names the source in errors (the settings file, or a command-line option)."""
    if not user:
        return None
    try:
        pw = _passwd(user)
    except (KeyError, OverflowError):
        raise ConfigError(f"{where}: daemon.user: no such user {user!r} (create it, e.g. with pw useradd)") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except (KeyError, OverflowError):
            raise ConfigError(f"{where}: daemon.group: no such group {group!r}") from None
    groups = tuple(dict.fromkeys([gid, *os.getgrouplist(pw.pw_name, gid)]))
    return Identity(pw.pw_name, pw.pw_uid, gid, groups)


def uid_of(user: str) -> int | None:
    """The uid of ``user`` (a name or a number), or None when unset or unknown."""
    if not user:
        return None
    try:
        return _passwd(user).pw_uid
    except (KeyError, OverflowError):
        return None


def drop(identity: Identity | None) -> None:
    """Become ``identity`` for good: groups, gid, uid (real, effective and saved).
    Nothing to do without an identity, or when already running as it; refuses (exit 77)
    when started as another user than root, and when root can be regained afterwards."""
    if identity is None:
        return
    if os.geteuid() != 0:
        if os.getresuid() == (identity.uid,) * 3:
            return
        raise PrivilegeError(f"daemon.user: started as uid {os.geteuid()}, not root: cannot switch to {identity.describe()}")
    try:
        os.setgroups(list(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise PrivilegeError(f"daemon.user: cannot switch to {identity.describe()}: {exc.strerror}") from None
    verify(identity)


def verify(identity: Identity) -> None:
    """Raise unless this process is ``identity`` in every ID and cannot become root again."""
    uids, gids = os.getresuid(), os.getresgid()
    if uids != (identity.uid,) * 3 or gids != (identity.gid,) * 3:
        raise PrivilegeError(f"daemon.user: after switching to {identity.describe()} the process has uids {uids}, gids {gids}")
    if not set(os.getgroups()) <= set(identity.groups):
        raise PrivilegeError(f"daemon.user: after switching to {identity.describe()} the process keeps groups {sorted(os.getgroups())}")
    if identity.uid == 0:
        return
    for attempt in (lambda: os.setuid(0), lambda: os.seteuid(0), lambda: os.setresuid(0, 0, 0)):
        try:
            attempt()
        except PermissionError:
            continue
        raise PrivilegeError(f"daemon.user: root could be regained after switching to {identity.describe()}; refusing to run")


def needed_files(settings: Settings) -> list[tuple[str, Path]]:
    """Every file ``run`` reads after start, by the settings key that names it: the
    Python installation and jailsyncd's own package (modules are imported lazily), the
    settings file (SIGHUP reloads it), the token file (read every cycle), the TLS
    files, CBSD's ``nodename`` (the default ``host.name`` on reload) and node DB, and
    the DHCP server lease files of address discovery."""
    consul = settings.consul
    files: list[tuple[str, Path | None]] = [
        ("python", Path(os.__file__)),
        ("jailsyncd", Path(__file__)),
        ("config", settings.source),
        ("consul.token_file", consul.token_file),
        ("consul.ca_file", consul.ca_file),
        ("consul.cert_file", consul.cert_file),
        ("consul.key_file", consul.key_file),
    ]
    nodename = nodename_path(settings.cbsd.workdir)
    if os.path.lexists(nodename):
        files.append(("cbsd.workdir", nodename))
    files.append(("cbsd.workdir", node_db_path(settings.cbsd.workdir)))
    if settings.sync.discover_addresses:
        files += [("sync.dhcp_leases", path) for path in settings.sync.dhcp_leases]
    return [(key, path) for key, path in files if path is not None]


def unreadable(files: list[tuple[str, Path]]) -> str | None:
    """A one-line reason naming the first file this process cannot open for reading
    (permission denied on it or on a folder above it), else None. A missing file is
    not a permission problem: whoever reads it reports that."""
    user = describe_self()
    for key, path in files:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except PermissionError:
            return f"{path} ({key}) is not readable by {user}: permission denied on the file or a folder above it"
        except OSError:
            continue
    return None


def check_readable(files: list[tuple[str, Path]]) -> None:
    problem = unreadable(files)
    if problem is not None:
        raise PrivilegeError(problem)


def as_user(identity: Identity | None, check: Callable[[], None]) -> None:
    """Run ``check`` as ``identity`` and re-raise what it raised (a ``JailsyncdError``
    with the same message and exit code). Without an identity, or when this process
    already is it, ``check`` runs here; otherwise in a forked child that drops first,
    so this process keeps its privileges. Only for single-threaded callers."""
    if identity is None or os.getresuid() == (identity.uid,) * 3:
        check()
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop, check, report one line, never return
        try:
            os.close(read_end)
            try:
                drop(identity)
                check()
            except JailsyncdError as exc:
                os.write(write_end, f"{exc.exit_code} {exc}".encode())
            except Exception as exc:  # noqa: BLE001 - reported to the parent as an internal error
                os.write(write_end, f"1 internal error while checking as {identity.user}: {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        report = fh.read().decode(errors="replace")
    os.waitpid(pid, 0)
    if report:
        code, _, message = report.partition(" ")
        error = JailsyncdError(message)
        error.exit_code = int(code)
        raise error


def describe_self() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
