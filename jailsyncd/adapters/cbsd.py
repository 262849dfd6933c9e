"""Read CBSD's state from its SQLite DBs, strictly read-only (the node DB through an
SQLAlchemy engine whose ``sqlite3`` connection runs the queries; the per-VM DBs, one
per running VM, on plain ``sqlite3`` connections: the engine's checkout and checkin
were a third of each such read).

Called by ``reconcile`` once per cycle through ``CbsdSource.read()``, or
``CbsdSource.begin()`` for the same read handed over in parts: ``begin()`` reads the
node DB and the node name (a failure raises there, before anything is handed over),
its ``CbsdReading.parts(size)`` hands the environments over complete, in jname order
and groups of at most ``size``, opening each group's per-VM DBs only when the group is
asked for, and ``state()`` is then exactly what ``read()`` returns (``read()`` is
these three steps). The only module that imports SQLAlchemy.

How CBSD's files are treated, and why:
- the node DB is ``$workdir/var/db/local.sqlite``; peers' ``<node>.sqlite`` copies
  beside it are never opened, so their jails are never taken as local;
- opened as ``file:...?mode=ro`` (a wrong path is an error, never a new empty file),
  never ``immutable=1`` (that skips the WAL and returns stale rows);
- one short read transaction per DB, a busy timeout, and no pooled connection kept
  between cycles (``NullPool``), so CBSD's writers are never blocked by us; the one
  SQLAlchemy engine kept between reads holds no connection;
- the node DB is read in full on every ``read()``. A running VM's per-VM DB is read
  again only when it may have changed: its settings are cached under the identity,
  size and mtime of the DB file and of its ``-wal`` (any committed write changes one
  of them; the DB's ctime too, so a file put back with its old mtime is noticed),
  and an entry is not trusted while the files were modified less than
  ``RACY_WINDOW`` seconds before they were read (a second write in the same
  timestamp granule could otherwise go unnoticed). So a no-op cycle opens one
  SQLite file, not one per running VM;
- columns are selected by name: column order differs between hosts, old hosts lack
  ``tags``, and unknown columns are ignored. The node DB's are looked up with
  ``PRAGMA table_info``; a per-VM DB is first asked directly for the columns CBSD
  writes today, and looked up only when SQLite answers "no such column"/"no such
  table" (the lookup of its hundred-odd ``settings`` columns cost more than the query);
- the per-VM DB is read for bhyve, xen and qemu VMs (``VM_KINDS``), whose
  ``ip4_addr`` (and bhyve's ``tags``) CBSD keeps there;
- with ``read_macs`` (address discovery on), the MACs of a running VM's NICs are
  read from its ``bhyvenic`` (``xennic``, ``qemunic``) table in the same transaction as its settings, and
  those of a running VNET jail with no usable address from ``jailnic`` in its own
  ``jails-system/<jname>/local.sqlite`` (cached the same way; a jail without that
  file simply has no known MAC);
- any failure raises a ``SourceError``: a failed read must never look like "no jails".
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import urllib.parse
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from jailsyncd.addresses import parse_ip4_addr
from jailsyncd.errors import SourceCorrupt, SourceError, SourceLocked, SourceMissing, SourceUnreadable
from jailsyncd.leases import normalize_mac
from jailsyncd.model import CbsdState, Environment

_T = TypeVar("_T")

#: Columns of ``jails`` that must exist; ``_OPTIONAL`` ones may be missing on older CBSD.
_REQUIRED = ("jname", "jid", "status", "ip4_addr")
_OPTIONAL = ("emulator", "host_hostname", "tags", "astart", "vnet")
#: Per-VM ``settings`` columns that override the node DB row for VMs (xen and qemu
#: VMs have no ``tags`` there: theirs stays the node DB's).
_VM_COLUMNS = ("ip4_addr", "tags")
#: The emulators whose VMs keep their settings in their own DB (``bset``, ``xset``,
#: ``qset`` write ``ip4_addr`` there; CBSD's ``bls``/``xls``/``qls`` read it there), with
#: a node DB table of that name holding ``astart`` and a ``<emulator>nic`` table of
#: NICs. A ``qemu-*-static`` cross-arch jail is a jail (``Environment.kind``).
VM_KINDS = ("bhyve", "xen", "qemu")
_UNSET = {"", "0", "(null)"}
#: Seconds: a per-VM DB (or its ``-wal``) modified or changed less than this long
#: before a read is re-read next time even if its stamp is the same, because file
#: timestamps are coarse (a kernel tick, or a second on some file systems).
RACY_WINDOW = 2.0

#: A file's identity and version: (device, inode, size, mtime_ns, ctime_ns or 0).
_FileStamp = tuple[int, int, int, int, int]


def unset_to_none(value: object) -> str | None:
    """CBSD spells "unset" as ``'0'``, ``''``, NULL or ``(null)``; all become None."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in _UNSET else text


def _as_int(value: object) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0


class CbsdSource:
    """Reads one CBSD workdir. Holds no open file or connection between ``read()``
    calls; keeps one SQLAlchemy engine (no pooled connection) and the settings of
    running VMs, by file stamp (see the module docstring)."""

    def __init__(self, workdir: Path, busy_timeout: float = 5.0, *, read_macs: bool = False) -> None:
        self.workdir = workdir
        #: Read NIC MACs for address discovery (``sync.discover_addresses``).
        self.read_macs = read_macs
        self.node_db = node_db_path(workdir)
        self.busy_timeout = busy_timeout
        #: The URI the engine's next connection opens (set just before each connect).
        self._uri: ContextVar[str] = ContextVar("cbsd_uri")
        # Made now, at start-up: building it imports SQLAlchemy's SQLite dialect, some
        # 10 ms the first cycle would otherwise spend before its first read. NullPool:
        # every connect() opens a new read-only connection to the URI set just before
        # it, and closing it really closes the file.
        self._engine: Engine = create_engine("sqlite+pysqlite://", creator=self._connect, poolclass=NullPool)
        self._vm_dir = str(workdir / "jails-system")
        #: Per-VM DB path -> (stamp of the DB and its -wal when read, settings read).
        self._vm_cache: dict[str, tuple[tuple[_FileStamp | None, _FileStamp | None], dict[str, Any]]] = {}
        #: Per-VM DBs actually opened by the last ``read()`` (the others came from cache).
        self.vm_reads = 0
        #: The per-VM DBs the last read used, and the stamps ``unchanged`` compares
        #: (None: the last read cannot vouch for itself).
        self._vm_paths: frozenset[str] = frozenset()
        self._last: tuple[frozenset[str], tuple[Any, ...]] | None = None
        #: The reading of the last ``begin()`` until its ``state()``.
        self._reading: CbsdReading | None = None

    def nodename(self) -> str:
        """CBSD's node name, from ``$workdir/nodename`` (written by ``cbsd initenv``),
        read now. The one place jailsyncd learns it: it is the ``cbsd-host`` meta and,
        when ``host.name`` is unset, the owner identity. A missing, unreadable or empty
        file raises a ``SourceError`` (retryable: at boot the workdir may not be
        mounted yet); nothing is ever guessed in its place."""
        path = nodename_path(self.workdir)
        try:
            name = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SourceMissing(f"{path}: CBSD's node name file not found (is cbsd.workdir mounted and CBSD initialised?)") from None
        except PermissionError:
            raise SourceUnreadable(f"{path}: permission denied reading CBSD's node name") from None
        except (OSError, ValueError) as exc:
            what = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else getattr(exc, "strerror", None) or type(exc).__name__
            raise SourceUnreadable(f"{path}: cannot read CBSD's node name ({what})") from None
        if not name:
            raise SourceCorrupt(f"{path}: CBSD's node name file is empty")
        return name

    def unchanged(self) -> bool:
        """Whether a read now would return what the last complete read did, told by a
        few stats and no DB open (``reconcile`` skips a periodic cycle on it): the node
        DB and its ``-wal``, the node name file and the per-VM DBs that read used keep
        the stamps they had around it. False after a failed read, when a file changed
        during the read, or was written within ``RACY_WINDOW`` of it (a second write
        in the same timestamp granule would leave the same stamp)."""
        if self._last is None:
            return False
        return self._stamps(self._last[0]) == self._last

    def _stamps(self, vm_paths: frozenset[str]) -> tuple[frozenset[str], tuple[Any, ...]]:
        return vm_paths, (db_stamp(str(self.node_db)), file_stamp(str(nodename_path(self.workdir))), tuple(db_stamp(p) for p in sorted(vm_paths)))

    def read(self) -> CbsdState:
        """A complete, consistent read of CBSD's node name, the node DB and the per-VM
        DBs of running VMs: ``begin()``, every part, then ``state()``."""
        reading = self.begin()
        for _ in reading.parts(max(1, len(reading.listed))):
            pass
        return reading.state()

    def begin(self) -> CbsdReading:
        """Start a read: the node DB and the node name are read now (a failure raises
        here, before anything is handed over); the per-VM DBs as the reading's
        ``parts`` are iterated. The stamp bookkeeping of ``unchanged`` is done by the
        reading's ``state()`` (until then ``unchanged()`` is False)."""
        self._last = None
        self._reading = None
        before = self._stamps(frozenset())
        read_at = time.time_ns()
        raw_rows = self._read_db(self.node_db, self._read_node)  # first: a missing workdir names the DB
        nodename = self.nodename()
        self.vm_reads = 0
        reading = CbsdReading(self, nodename, [_environment(row) for row in raw_rows], before, read_at)
        self._reading = reading
        return reading

    def _complete(self, env: Environment) -> tuple[Environment, str | None, str | None]:
        """``env`` with what its own DB adds (a VM's settings and NICs, or the NICs of a
        VNET jail that address discovery will need), the path of that DB when it has
        one to read, and why it could not be read (None when it could)."""
        if env.kind in VM_KINDS and env.running:
            merge = self._merge_vm_settings
        elif self.read_macs and env.vnet and env.kind == "jail" and env.running and not parse_ip4_addr(env.ip4_addr).all:
            merge = self._merge_jail_nics
        else:
            return env, None, None
        path = f"{self._vm_dir}/{env.jname}/local.sqlite"
        try:
            return merge(env, path), path, None
        except SourceError as exc:
            return env, path, str(exc)

    def _finish(self, reading: CbsdReading, running_vms: set[str]) -> None:
        """What a complete read leaves for the next: the per-VM cache pruned, and the
        stamps ``unchanged`` compares (only for the latest ``begin()``'s reading)."""
        if self._reading is not reading:
            return  # a later begin() started another read: that one vouches, or not
        self._reading = None
        self._vm_paths = frozenset(running_vms)
        for gone in self._vm_cache.keys() - running_vms:
            del self._vm_cache[gone]  # stopped or destroyed: read afresh when it runs again
        after = self._stamps(self._vm_paths)
        # A per-VM DB is vouched for by the stamp taken before its settings were read
        # (the cache's), or by being absent; one read but not cached was racy.
        vms = tuple(self._vm_cache[p][0] if p in self._vm_cache else (None, None) for p in sorted(self._vm_paths))
        node, name = after[1][0], after[1][1]
        before, read_at = reading._before, reading._read_at
        if before[1][:2] == after[1][:2] and vms == after[1][2] and node[0] is not None and not _racy(node, read_at) and not _racy((name, None), read_at):
            self._last = after

    # -- node DB ---------------------------------------------------------------

    def _read_node(self, conn: sqlite3.Connection, path: Path) -> list[dict[str, Any]]:
        present = _columns(conn, "jails")
        if not present:
            raise SourceCorrupt(f"{path}: no table 'jails' (is this a CBSD node DB?)")
        missing = [c for c in _REQUIRED if c not in present]
        if missing:
            raise SourceCorrupt(f"{path}: table 'jails' lacks column(s) {', '.join(missing)}")
        wanted = [c for c in _REQUIRED + _OPTIONAL if c in present]
        rows = [dict(zip(wanted, r)) for r in conn.execute(f"SELECT {_names(wanted)} FROM jails")]
        # A VM's astart lives in its own DB; `cbsd bset` (`xset`) also writes it to the
        # node DB's `bhyve` (`xen`) table (jails.astart is left as created), so read it
        # there: no per-VM DB is opened for a stopped VM. A fresh install has no `xen`
        # or `qemu` table until the first such VM.
        for kind in VM_KINDS:
            if not {"jname", "astart"} <= _columns(conn, kind):
                continue
            astart = {str(j).strip(): a for j, a in conn.execute(f'SELECT "jname", "astart" FROM {_names([kind])}')}
            for row in rows:
                if unset_to_none(row.get("emulator")) == kind and str(row["jname"]).strip() in astart:
                    row["astart"] = astart[str(row["jname"]).strip()]
        return rows

    # -- per-VM DB ----------------------------------------------------------------

    def _merge_jail_nics(self, env: Environment, path: str) -> Environment:
        """A VNET jail's MACs from ``jailnic`` in its own DB (none when it has no DB)."""
        if not os.path.lexists(path):
            return env
        macs = self._vm_settings(path, _read_jail_nics).get("macs", ())
        return replace(env, macs=macs)

    def _merge_vm_settings(self, env: Environment, path: str) -> Environment:
        settings = self._vm_settings(path, lambda conn, where: self._vm_reader(conn, where, env.kind))
        if not settings:
            return env
        return replace(
            env,
            ip4_addr=unset_to_none(settings["ip4_addr"]) if "ip4_addr" in settings else env.ip4_addr,
            tags=unset_to_none(settings["tags"]) if "tags" in settings else env.tags,
            macs=settings.get("macs", ()),
        )

    def _vm_reader(self, conn: sqlite3.Connection, path: Path, kind: str) -> dict[str, Any]:
        settings = _read_vm_settings(conn, path)
        if self.read_macs:
            settings["macs"] = _read_macs(conn, f"{kind}nic")
        return settings

    def _vm_settings(self, path: str, reader: Callable[[sqlite3.Connection, Path], dict[str, Any]]) -> dict[str, Any]:
        """The newest ``settings`` row of one per-VM DB: from the cache while the DB and
        its ``-wal`` keep the stamp they had when read, else read now."""
        stamp = db_stamp(path)
        cached = self._vm_cache.get(path)
        if cached is not None and stamp[0] is not None and cached[0] == stamp:
            return cached[1]
        self._vm_cache.pop(path, None)
        read_at = time.time_ns()
        settings = self._read_vm_db(Path(path), reader)
        self.vm_reads += 1
        # The stamp was taken before the read, so what was read is at least that new; a
        # write after it changes the stamp, unless it lands in the same timestamp granule
        # as the last one: only files older than RACY_WINDOW are trusted.
        if stamp[0] is not None and not _racy(stamp, read_at):
            self._vm_cache[path] = (stamp, settings)
        return settings

    # -- plumbing -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._uri.get(), uri=True, timeout=self.busy_timeout, check_same_thread=False)

    def _read_db(self, path: Path, reader: Callable[[sqlite3.Connection, Path], _T]) -> _T:
        """Run ``reader(conn, path)`` inside one read-only transaction on the node DB
        ``path``. The reader gets the DBAPI (``sqlite3``) connection of the engine's
        connection: its few statements run there, because SQLAlchemy's compiled queries
        and result objects cost more than SQLite's own work on these small DBs."""
        _check_db_file(path)
        token = self._uri.set(_ro_uri(path))
        try:
            with self._engine.connect() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, sqlite3.Connection)  # our creator made it
                # One explicit read transaction: every SELECT below sees one snapshot
                # (the engine rolls it back when the connection is given back).
                raw.execute("BEGIN")
                return reader(raw, path)
        except DBAPIError as exc:
            raise _wrap(path, exc.orig or exc) from exc
        except sqlite3.Error as exc:
            raise _wrap(path, exc) from exc
        finally:
            self._uri.reset(token)

    def _read_vm_db(self, path: Path, reader: Callable[[sqlite3.Connection, Path], _T]) -> _T:
        """``_read_db`` for an environment's own DB, on a plain ``sqlite3`` connection:
        the same checks, URI, busy timeout, single read transaction and error messages,
        without the engine's checkout and checkin, which cost about a third of a
        per-VM read and are paid once per running VM on a cold read
        (docs/performance.md)."""
        _check_db_file(path)
        try:
            conn = sqlite3.connect(_ro_uri(path), uri=True, timeout=self.busy_timeout)
            try:
                conn.execute("BEGIN")  # one snapshot for every SELECT of the reader
                return reader(conn, path)
            finally:
                conn.close()  # never committed: closing ends the read transaction
        except sqlite3.Error as exc:
            raise _wrap(path, exc) from exc


class CbsdReading:
    """One read of CBSD under way (``CbsdSource.begin``): the node DB's rows are read,
    the environments' own DBs are read group by group as ``parts`` is iterated, so
    that a caller can start on the first environments while the others are read.

    ``listed`` holds every named ``jails`` row as an environment, per-VM settings not
    merged yet, in jname order; ``parts`` hands the same environments over complete,
    in the same order; ``state()`` is then exactly what ``CbsdSource.read()`` returns
    (environments and unreadable entries in the node DB's row order)."""

    def __init__(self, source: CbsdSource, nodename: str, rows: list[Environment], before: tuple[frozenset[str], tuple[Any, ...]], read_at: int) -> None:
        self.nodename = nodename
        #: The named rows in the node DB's order (``state()``'s order).
        self._rows = [env for env in rows if env.jname]
        #: Rows of ``jails`` without a jname (the primary key): not environments.
        self.nameless = len(rows) - len(self._rows)
        self._order = sorted(range(len(self._rows)), key=lambda i: self._rows[i].jname)
        self.listed: tuple[Environment, ...] = tuple(self._rows[i] for i in self._order)
        self._source = source
        self._before = before
        self._read_at = read_at
        #: How many of ``_order`` are complete; by row index, what they became.
        self._done = 0
        self._merged: dict[int, Environment] = {}
        self._unreadable: dict[int, tuple[str, str]] = {}
        self._running_vms: set[str] = set()
        self._state: CbsdState | None = None

    def parts(self, size: int) -> Iterator[tuple[tuple[Environment, ...], tuple[tuple[str, str], ...]]]:
        """The environments not handed over yet, complete, in groups of at most
        ``size``, each with the ``(jname, error)`` of its environments whose own DB
        could not be read; each group's DBs are read when the group is asked for."""
        if size < 1:
            raise ValueError(f"part size must be at least 1, not {size}")
        while self._done < len(self._order):
            yield self._advance(size)

    def state(self) -> CbsdState:
        """The complete read (what ``read()`` returns), reading first whatever
        ``parts`` has not handed over yet."""
        if self._state is None:
            while self._done < len(self._order):
                self._advance(len(self._order) - self._done)
            self._source._finish(self, self._running_vms)
            rows = range(len(self._rows))
            self._state = CbsdState(
                self.nodename,
                tuple(self._merged[i] for i in rows),
                tuple(self._unreadable[i] for i in rows if i in self._unreadable),
                self.nameless,
            )
        return self._state

    def _advance(self, size: int) -> tuple[tuple[Environment, ...], tuple[tuple[str, str], ...]]:
        group: list[Environment] = []
        unreadable: list[tuple[str, str]] = []
        for i in self._order[self._done : self._done + size]:
            env, path, error = self._source._complete(self._rows[i])
            if path is not None:
                self._running_vms.add(path)
            if error is not None:
                self._unreadable[i] = (env.jname, error)
                unreadable.append((env.jname, error))
            self._merged[i] = env
            group.append(env)
            self._done += 1
        return tuple(group), tuple(unreadable)


def _check_db_file(path: Path) -> None:
    """Raise the ``SourceError`` that says why ``path`` cannot be a readable DB, before
    SQLite is asked (its own messages are vaguer: a directory is a "disk I/O error")."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if os.path.islink(path):  # CBSD's local.sqlite -> inv.<node>.sqlite, target gone
            raise SourceMissing(f"{path}: CBSD database not found: this symlink points to {os.readlink(path)}, which does not exist") from None
        raise SourceMissing(f"{path}: CBSD database not found (check cbsd.workdir)") from None
    except PermissionError:  # a folder on the way: not "missing", and not a crash
        raise SourceUnreadable(f"{path}: permission denied (run as root or in group cbsd)") from None
    except OSError as exc:
        raise SourceUnreadable(f"{path}: cannot be reached ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):  # SQLite would call it a "disk I/O error"
        raise SourceCorrupt(f"{path}: a directory, not a CBSD database")
    if not os.access(path, os.R_OK):
        raise SourceUnreadable(f"{path}: permission denied (run as root or in group cbsd)")


def _ro_uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path)) + "?mode=ro"


#: The direct queries of a per-VM DB, for the layout CBSD writes today. Column names
#: are left unquoted: SQLite takes an unknown double-quoted name for a string literal,
#: and the query must fail instead ("no such column"), so that the layout is then
#: looked up with ``PRAGMA table_info`` (the costly part of a per-VM read with CBSD's
#: hundred-odd ``settings`` columns, so done only when the direct query fails).
_VM_SETTINGS_SQL = "SELECT ip4_addr, tags FROM settings ORDER BY created DESC, rowid DESC LIMIT 1"
_MACS_SQL = "SELECT nic_hwaddr FROM {table} ORDER BY nic_order, rowid"


def _layout_differs(exc: sqlite3.Error) -> bool:
    """Whether a direct query failed because a table or column it names is absent."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and (text.startswith("no such column") or text.startswith("no such table"))


def _read_vm_settings(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The newest ``settings`` row's ``_VM_COLUMNS`` that the table has."""
    try:
        row = conn.execute(_VM_SETTINGS_SQL).fetchone()
    except sqlite3.Error as exc:
        if not _layout_differs(exc):
            raise
        return _read_vm_settings_by_layout(conn, path)
    return dict(zip(_VM_COLUMNS, row)) if row else {}


def _read_vm_settings_by_layout(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """``_read_vm_settings`` for another layout: no ``tags`` (xen, qemu, an old CBSD),
    no ``created``, or no ``settings`` table at all."""
    present = _columns(conn, "settings")
    if not present:
        raise SourceCorrupt(f"{path}: no table 'settings' (is this a CBSD per-VM DB?)")
    wanted = [c for c in _VM_COLUMNS if c in present]
    if not wanted:
        return {}
    # The newest row wins; rowid breaks ties between rows of the same second.
    order = '"created" DESC, rowid DESC' if "created" in present else "rowid DESC"
    row = conn.execute(f"SELECT {_names(wanted)} FROM settings ORDER BY {order} LIMIT 1").fetchone()
    return dict(zip(wanted, row)) if row else {}


def _read_jail_nics(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    return {"macs": _read_macs(conn, "jailnic")}


def _read_macs(conn: sqlite3.Connection, name: str) -> tuple[str, ...]:
    """The NICs' MACs of table ``name`` in ``nic_order`` (then row order); unset
    (``0``) and malformed values are left out. No table, or no ``nic_hwaddr``
    column (an old CBSD): no MACs."""
    try:
        values = conn.execute(_MACS_SQL.format(table=_names([name]))).fetchall()
    except sqlite3.Error as exc:
        if not _layout_differs(exc):
            raise
        return _read_macs_by_layout(conn, name)
    return _macs(values)


def _read_macs_by_layout(conn: sqlite3.Connection, name: str) -> tuple[str, ...]:
    present = _columns(conn, name)
    if "nic_hwaddr" not in present:
        return ()
    order = ' ORDER BY "nic_order", rowid' if "nic_order" in present else ""
    return _macs(conn.execute(f'SELECT "nic_hwaddr" FROM {_names([name])}{order}').fetchall())


def _macs(values: list[tuple[Any, ...]]) -> tuple[str, ...]:
    macs: list[str] = []
    for (value,) in values:
        mac = normalize_mac(unset_to_none(value))
        if mac is not None and mac not in macs:
            macs.append(mac)
    return tuple(macs)


def node_db_path(workdir: Path) -> Path:
    """CBSD's node DB in a workdir (the one place this path is spelled)."""
    return workdir / "var" / "db" / "local.sqlite"


def nodename_path(workdir: Path) -> Path:
    """CBSD's node name file in a workdir (written by ``cbsd initenv``)."""
    return workdir / "nodename"


def _file_stamp(path: str, *, ctime: bool = True, st: os.stat_result | None = None) -> _FileStamp | None:
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns if ctime else 0)


def file_stamp(path: str) -> _FileStamp | None:
    """Stamp of one plain file (identity, size, modification and change times), None
    when it cannot be stat'ed: how the node name file is compared, here and by
    ``daemon``'s watcher."""
    return _file_stamp(path)


def db_stamp(path: str) -> tuple[_FileStamp | None, _FileStamp | None]:
    """Stamps of a DB and of its ``-wal`` (next to the real file, symlinks resolved):
    the one change detector, used for the per-VM cache here and by ``daemon``'s
    watcher of the node DB.
    Every committed write changes one of them: WAL frames are appended to the ``-wal``
    (or written over it from the start after a checkpoint, which changes its mtime);
    a checkpoint, or a write in another journal mode, changes the DB file itself.

    The ``-wal``'s ctime is left out: SQLite running as root re-owns the ``-wal`` on
    every open (``fchown``), even a read-only one, which moves its ctime each time.
    An empty ``-wal`` counts as none: it holds no commit, and our own read-only
    connection creates one when CBSD's writer has just removed it (and cannot remove
    it again), which must not look like a change."""
    try:
        st = os.lstat(path)
    except OSError:
        return (None, None)
    if stat.S_ISLNK(st.st_mode):  # SQLite puts the -wal next to the file the link names
        path = os.path.realpath(path)
        db = _file_stamp(path)
    else:
        db = _file_stamp(path, st=st)
    wal = _file_stamp(path + "-wal", ctime=False)
    return (db, None if wal is not None and wal[2] == 0 else wal)


def _racy(stamp: tuple[_FileStamp | None, _FileStamp | None], read_at_ns: int) -> bool:
    """Whether a file of ``stamp`` changed within ``RACY_WINDOW`` of the read (or
    claims to have changed after it: a clock step), so that a later write could
    leave the same stamp."""
    newest = max(max(s[3], s[4]) for s in stamp if s is not None)
    return newest > read_at_ns - int(RACY_WINDOW * 1e9)


def _columns(conn: sqlite3.Connection, name: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({name})")}


def _names(columns: list[str]) -> str:
    """Quoted identifiers for a SELECT (the names are this module's own constants)."""
    return ", ".join('"' + c.replace('"', '""') + '"' for c in columns)


def _environment(row: dict[str, Any]) -> Environment:
    return Environment(
        # NULL is no jname at all (str() would make it the jail "None").
        jname="" if row["jname"] is None else str(row["jname"]).strip(),
        emulator=_unset(row.get("emulator")) or "jail",
        status=_int(row["status"]),
        jid=_int(row["jid"]),
        ip4_addr=_unset(row["ip4_addr"]),
        host_hostname=_unset(row.get("host_hostname")),
        tags=_unset(row.get("tags")),
        astart=_int(row.get("astart")) == 1,
        vnet=_int(row.get("vnet")) == 1,
    )


# ``unset_to_none`` and ``_as_int`` for the node DB's thousands of values: the types
# SQLite hands back for CBSD's columns skip the conversions (same results).
def _unset(value: object) -> str | None:
    if type(value) is str:
        text = value.strip()
        return None if text in _UNSET else text
    return unset_to_none(value)


def _int(value: object) -> int:
    return value if type(value) is int else _as_int(value)


def _wrap(path: Path, exc: BaseException) -> SourceError:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return SourceLocked(f"{path}: database is locked by a writer for longer than the busy timeout")
    if "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
        return SourceUnreadable(
            f"{path}: cannot open read-only ({text}); its folder must be writable, so that SQLite can create the "
            "-wal and -shm files CBSD's writers remove after each write (root, or group cbsd with CBSD's 0770 folders)"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return SourceCorrupt(f"{path}: database is corrupt or truncated ({text})")
    return SourceError(f"{path}: read failed ({text})")
