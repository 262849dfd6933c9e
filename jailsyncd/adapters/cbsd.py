"""Read CBSD's state from its SQLite DBs, strictly read-only (SQLAlchemy Core).

Called by ``reconcile`` once per cycle through ``CbsdSource.read()``. The only module
that imports SQLAlchemy.

How CBSD's files are treated, and why:
- the node DB is ``$workdir/var/db/local.sqlite``; peers' ``<node>.sqlite`` copies
  beside it are never opened, so their jails are never taken as local;
- opened as ``file:...?mode=ro`` (a wrong path is an error, never a new empty file),
  never ``immutable=1`` (that skips the WAL and returns stale rows);
- one short read transaction per DB, a busy timeout, and no pooled connection kept
  between cycles (``NullPool``), so CBSD's writers are never blocked by us;
- columns are selected by name after ``PRAGMA table_info``: column order differs
  between hosts, old hosts lack ``tags``, and unknown columns are ignored;
- any failure raises a ``SourceError``: a failed read must never look like "no jails".
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

from sqlalchemy import column, create_engine, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from jailsyncd.errors import SourceCorrupt, SourceError, SourceLocked, SourceMissing, SourceUnreadable
from jailsyncd.model import CbsdState, Environment

#: Columns of ``jails`` that must exist; ``_OPTIONAL`` ones may be missing on older CBSD.
_REQUIRED = ("jname", "jid", "status", "ip4_addr")
_OPTIONAL = ("emulator", "host_hostname", "tags")
#: Per-VM ``settings`` columns that override the node DB row for bhyve VMs.
_VM_COLUMNS = ("ip4_addr", "tags")
_UNSET = {"", "0", "(null)"}


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
    """Reads one CBSD workdir. Holds no open handle between ``read()`` calls."""

    def __init__(self, workdir: Path, busy_timeout: float = 5.0) -> None:
        self.workdir = workdir
        self.node_db = workdir / "var" / "db" / "local.sqlite"
        self.busy_timeout = busy_timeout

    def read(self) -> CbsdState:
        """A complete, consistent read of the node DB (and per-VM DBs of running VMs)."""
        rows = self._read_db(self.node_db, self._read_node)
        nodename, raw_rows = rows
        environments: list[Environment] = []
        unreadable: list[tuple[str, str]] = []
        for row in raw_rows:
            env = _environment(row)
            if not env.jname:
                continue  # a row without its primary key is not an environment
            if env.emulator == "bhyve" and env.running:
                try:
                    env = self._merge_vm_settings(env)
                except SourceError as exc:
                    unreadable.append((env.jname, str(exc)))
            environments.append(env)
        return CbsdState(nodename, tuple(environments), tuple(unreadable))

    # -- node DB ---------------------------------------------------------------

    def _read_node(self, conn: Connection, path: Path) -> tuple[str | None, list[dict]]:
        present = _columns(conn, "jails")
        if not present:
            raise SourceCorrupt(f"{path}: no table 'jails' (is this a CBSD node DB?)")
        missing = [c for c in _REQUIRED if c not in present]
        if missing:
            raise SourceCorrupt(f"{path}: table 'jails' lacks column(s) {', '.join(missing)}")
        wanted = [c for c in _REQUIRED + _OPTIONAL if c in present]
        jails = table("jails", *(column(c) for c in wanted))
        rows = [dict(r._mapping) for r in conn.execute(select(*jails.c))]
        return self._nodename(conn), rows

    def _nodename(self, conn: Connection) -> str | None:
        try:
            name = (self.workdir / "nodename").read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name:
            return name
        if "nodename" in _columns(conn, "local"):
            local = table("local", column("nodename"))
            row = conn.execute(select(local.c.nodename).limit(1)).first()
            return unset_to_none(row[0]) if row else None
        return None

    # -- per-VM DB ----------------------------------------------------------------

    def _merge_vm_settings(self, env: Environment) -> Environment:
        path = self.workdir / "jails-system" / env.jname / "local.sqlite"
        settings = self._read_db(path, _read_vm_settings)
        if not settings:
            return env
        return Environment(
            jname=env.jname,
            emulator=env.emulator,
            status=env.status,
            jid=env.jid,
            ip4_addr=unset_to_none(settings["ip4_addr"]) if "ip4_addr" in settings else env.ip4_addr,
            host_hostname=env.host_hostname,
            tags=unset_to_none(settings["tags"]) if "tags" in settings else env.tags,
        )

    # -- plumbing -----------------------------------------------------------------

    def _read_db(self, path: Path, reader):
        """Run ``reader(conn, path)`` inside one read-only transaction on ``path``."""
        if not path.exists():
            raise SourceMissing(f"{path}: CBSD database not found (check cbsd.workdir)")
        if not os.access(path, os.R_OK):
            raise SourceUnreadable(f"{path}: permission denied (run as root or in group cbsd)")
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
        engine = create_engine(
            "sqlite+pysqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, check_same_thread=False),
            poolclass=NullPool,
        )
        try:
            with engine.connect() as conn:
                # One explicit read transaction: every SELECT below sees one snapshot.
                conn.exec_driver_sql("BEGIN")
                return reader(conn, path)
        except DBAPIError as exc:
            raise _wrap(path, exc.orig or exc) from exc
        except sqlite3.Error as exc:
            raise _wrap(path, exc) from exc
        finally:
            engine.dispose()


def _read_vm_settings(conn: Connection, path: Path) -> dict:
    present = _columns(conn, "settings")
    if not present:
        raise SourceCorrupt(f"{path}: no table 'settings' (is this a CBSD per-VM DB?)")
    wanted = [c for c in _VM_COLUMNS if c in present]
    if not wanted:
        return {}
    settings = table("settings", *(column(c) for c in wanted))
    query = select(*settings.c)
    if "created" in present:
        # The newest row wins; rowid breaks ties between rows of the same second.
        query = query.order_by(column("created").desc(), column("rowid").desc())
    else:
        query = query.order_by(column("rowid").desc())
    row = conn.execute(query.limit(1)).first()
    return dict(row._mapping) if row else {}


def _columns(conn: Connection, name: str) -> set[str]:
    return {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({name})")}


def _environment(row: dict) -> Environment:
    return Environment(
        jname=str(row["jname"]).strip(),
        emulator=unset_to_none(row.get("emulator")) or "jail",
        status=_as_int(row["status"]),
        jid=_as_int(row["jid"]),
        ip4_addr=unset_to_none(row["ip4_addr"]),
        host_hostname=unset_to_none(row.get("host_hostname")),
        tags=unset_to_none(row.get("tags")),
    )


def _wrap(path: Path, exc: BaseException) -> SourceError:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return SourceLocked(f"{path}: database is locked by a writer for longer than the busy timeout")
    if "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
        return SourceUnreadable(
            f"{path}: cannot open read-only ({text}); the folder or the -shm file must be writable (root or group cbsd)"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return SourceCorrupt(f"{path}: database is corrupt or truncated ({text})")
    return SourceError(f"{path}: read failed ({text})")
