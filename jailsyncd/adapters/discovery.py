"""Read the sources of address discovery: lease files and the neighbor table.

Called by ``reconcile`` once per cycle through ``AddressDiscovery.discover``, only
when some running environment has no address in CBSD (``leases.targets``). Parsing
and resolution are pure (``leases``); the neighbor-table command and its platform
differences are ``platform.Platform.neighbor_table``. Nothing here sends a packet.

Cost, and why it stays out of a no-op cycle:
- a lease file is parsed again only when its stamp (device, inode, size, mtime,
  ctime) changed, and not trusted from cache while it was modified less than
  ``RACY_WINDOW`` before it was read; otherwise a cycle costs one ``stat`` per file;
- the neighbor table (a command) runs at most once per cycle, and only when a
  target with a MAC was left without an address by the lease files.

A jail's own lease files lie in a tree its root user writes: every directory on the
way below ``jails-data/<jname>-data`` is opened without following symbolic links, a
lease file must be a regular file (never a FIFO that would block, nor a link to a
host file), and at most ``MAX_OWN_LEASES`` bytes are read.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from jailsyncd.leases import Discovered, Lease, Neighbor, Observations, Target, needs_neighbors, parse_dhclient, parse_server_leases, resolve
from jailsyncd.platform import Platform

#: Seconds: a file modified this recently is parsed again next cycle even if its
#: stamp is unchanged (timestamps are coarse; a second write could keep it).
RACY_WINDOW = 2.0
#: A dhclient lease file is a few KiB; a jail could write anything there.
MAX_OWN_LEASES = 1 << 20
#: ISC dhcpd rewrites its journal hourly; Kea's LFC cleans its CSV. Beyond this the
#: file is refused rather than read into memory.
MAX_SERVER_LEASES = 64 << 20
_PREFIX = "dhclient.leases."

_Stamp = tuple[int, int, int, int, int]


class DiscoverySession:
    """The sources as one cycle sees them, asked target by target
    (``AddressDiscovery.session``); ``finish`` forgets the cached files no target
    used."""

    def __init__(self, owner: AddressDiscovery, now: float) -> None:
        self.owner = owner
        self.now = now
        self._seen_paths: set[str] = set()
        self._server: tuple[tuple[Lease, ...], tuple[str, ...]] | None = None
        #: The neighbor table, once run: (entries, or None when the command failed).
        self._neighbors: tuple[tuple[Neighbor, ...] | None] | None = None

    def discover(self, wanted: tuple[Target, ...]) -> dict[str, Discovered]:
        """``leases.resolve`` for each of ``wanted``."""
        if not wanted:
            return {}
        owner = self.owner
        own: dict[str, tuple[tuple[str, tuple[Lease, ...]], ...]] = {}
        own_errors: dict[str, str] = {}
        for target in wanted:
            if target.own_leases:
                try:
                    own[target.jname] = owner._own_leases(target.jname, self._seen_paths)
                except OSError as exc:
                    own_errors[target.jname] = f"{owner.data_dir / (target.jname + '-data')}/var/db: {exc.strerror or type(exc).__name__}"
        server: tuple[Lease, ...] = ()
        errors: tuple[str, ...] = ()
        if any(t.macs for t in wanted):
            if self._server is None:
                leases: list[Lease] = []
                failed: list[str] = []
                for path in owner.lease_files:
                    try:
                        leases.extend(owner._server_leases(str(path)))
                    except OSError as exc:
                        failed.append(f"{path}: {exc.strerror or type(exc).__name__}")
                    self._seen_paths.add(str(path))
                self._server = (tuple(leases), tuple(failed))
            server, errors = self._server
        seen = Observations(own, server, None, own_errors, errors)
        found = {t.jname: resolve(t, seen, self.now) for t in wanted}
        if needs_neighbors(found, wanted):
            if self._neighbors is None:
                owner.neighbor_runs = 1
                self._neighbors = (owner.platform.neighbor_table(),)
            neighbors = self._neighbors[0]
            more = ("the neighbor table command failed",) if neighbors is None else ()
            seen = replace(seen, neighbors=neighbors, errors=seen.errors + more)
            found.update({t.jname: resolve(t, seen, self.now) for t in wanted if not found[t.jname].addresses})
        return found

    def finish(self) -> None:
        for gone in self.owner._cache.keys() - self._seen_paths:
            del self.owner._cache[gone]  # a target that got an address, stopped, or was destroyed


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class AddressDiscovery:
    """The I/O half of address discovery for one CBSD workdir."""

    def __init__(self, workdir: Path, lease_files: tuple[Path, ...], platform: Platform, *, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = workdir / "jails-data"
        self.lease_files = lease_files
        self.platform = platform
        self.clock = clock
        #: path -> (stamp when parsed, leases)
        self._cache: dict[str, tuple[_Stamp, tuple[Lease, ...]]] = {}
        #: What the last ``discover`` did (for logs, tests and the benchmark).
        self.parsed = 0
        self.neighbor_runs = 0

    def discover(self, wanted: tuple[Target, ...], now: float) -> dict[str, Discovered]:
        """``leases.resolve`` for every target, from what the sources hold now."""
        session = self.session(now)
        found = session.discover(wanted)
        session.finish()
        return found

    def session(self, now: float) -> DiscoverySession:
        """One cycle's discovery asked in parts (``reconcile`` while CBSD is still
        being read): what the parts find together is what one ``discover`` over all
        their targets finds (each target is resolved alone; the server lease files
        are read once and the neighbor table run at most once per session)."""
        self.parsed = self.neighbor_runs = 0
        return DiscoverySession(self, now)

    # -- files ----    # -- files ----------------------------------------------------------------------

    def _own_leases(self, jname: str, seen_paths: set[str]) -> tuple[tuple[str, tuple[Lease, ...]], ...]:
        """Every ``var/db/dhclient.leases.*`` of one jail's data directory; none when
        the directory does not exist (a jail that never ran dhclient)."""
        base = self.data_dir / f"{jname}-data"
        fds: list[int] = []
        try:
            try:
                fds.append(os.open(base, os.O_RDONLY | os.O_DIRECTORY))
                for part in ("var", "db"):
                    fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
            except (FileNotFoundError, NotADirectoryError):
                return ()
            except OSError as exc:
                if exc.errno == getattr(os, "ELOOP", -1) or exc.errno == getattr(os, "EMLINK", -2):
                    return ()  # a symbolic link where var or var/db should be: not followed
                raise
            db = fds[-1]
            out = []
            with os.scandir(db) as entries:
                names = sorted(e.name for e in entries if e.name.startswith(_PREFIX))
            for name in names:
                key = f"{base}/var/db/{name}"
                try:
                    st = os.stat(name, dir_fd=db, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue  # a link, FIFO or device the jail put there: never opened
                seen_paths.add(key)
                leases = self._cached(key, st, lambda: self._read_own(db, name))
                out.append((name.removeprefix(_PREFIX), leases))
            return tuple(out)
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _read_own(self, dir_fd: int, name: str) -> tuple[Lease, ...]:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ()
            data = os.read(fd, MAX_OWN_LEASES)
        finally:
            os.close(fd)
        return parse_dhclient(data.decode("utf-8", errors="replace"))

    def _server_leases(self, path: str) -> tuple[Lease, ...]:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > MAX_SERVER_LEASES:
            raise OSError(0, f"larger than {MAX_SERVER_LEASES >> 20} MiB")

        def read() -> tuple[Lease, ...]:
            with open(path, "rb") as fh:
                return parse_server_leases(fh.read(MAX_SERVER_LEASES).decode("utf-8", errors="replace"))

        return self._cached(path, st, read)

    def _cached(self, key: str, st: os.stat_result, read: Callable[[], tuple[Lease, ...]]) -> tuple[Lease, ...]:
        stamp = _stamp(st)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        read_at = self.clock()
        leases = read()
        self.parsed += 1
        newest = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
        if newest < read_at - RACY_WINDOW:
            self._cache[key] = (stamp, leases)
        else:
            self._cache.pop(key, None)
        return leases
