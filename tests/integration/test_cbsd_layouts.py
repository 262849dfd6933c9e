"""Per-VM DB layouts other than the one CBSD writes today, read from real SQLite files.

The reader selects ``ip4_addr``/``tags`` (and the NICs' ``nic_hwaddr``) directly and
looks the table up with ``PRAGMA table_info`` only when SQLite answers "no such
column"/"no such table". These check that every other layout still reads as the
PRAGMA-first reader read it: an old CBSD without ``tags``, no ``created``, no
``settings`` at all (a typed, named error for that VM alone), NIC tables without
``nic_order`` or ``nic_hwaddr``, and that an absent column is never taken for the
string of its name (SQLite's double-quoted string literals)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from jailsyncd.adapters.cbsd import CbsdSource
from testing.sample import Workdir


def _vm(workdir: Workdir, ddl: str, *rows: str) -> Path:
    """A running bhyve VM ``vm1`` whose own DB is made from ``ddl`` and ``rows`` (SQL)."""
    workdir.add("vm1", jid=0, status=0, emulator="bhyve", ip4_addr="127.0.0.40", tags="node-tags")
    workdir.start("vm1", 4242)
    path = workdir.root / "jails-system" / "vm1" / "local.sqlite"
    path.unlink()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(ddl)
        for row in rows:
            conn.execute(row)
    finally:
        conn.close()
    return path


def test_bhyve_settings_without_tags_keep_the_node_db_tags(workdir: Workdir) -> None:
    """An old CBSD (before 13.0.2) has no ``tags`` in the per-VM ``settings``."""
    _vm(workdir, "CREATE TABLE settings (created TIMESTAMP, ip4_addr text);", "INSERT INTO settings VALUES ('2099-01-01', '127.0.0.41')")
    [env] = CbsdSource(workdir.root).read().environments
    assert (env.ip4_addr, env.tags) == ("127.0.0.41", "node-tags")


def test_settings_without_created_take_the_last_row(workdir: Workdir) -> None:
    _vm(
        workdir,
        "CREATE TABLE settings (ip4_addr text, tags text);",
        "INSERT INTO settings VALUES ('127.0.0.42', 'a')",
        "INSERT INTO settings VALUES ('127.0.0.43', 'b')",
    )
    [env] = CbsdSource(workdir.root).read().environments
    assert (env.ip4_addr, env.tags) == ("127.0.0.43", "b")


def test_settings_without_either_column_leave_the_node_db_row(workdir: Workdir) -> None:
    _vm(workdir, "CREATE TABLE settings (created TIMESTAMP, vm_ram integer);", "INSERT INTO settings VALUES ('2099-01-01', 1)")
    state = CbsdSource(workdir.root).read()
    assert state.unreadable == ()
    assert (state.environments[0].ip4_addr, state.environments[0].tags) == ("127.0.0.40", "node-tags")


def test_a_per_vm_db_without_settings_is_unreadable_and_says_so(workdir: Workdir) -> None:
    path = _vm(workdir, "CREATE TABLE other (x);")
    state = CbsdSource(workdir.root).read()
    assert state.unreadable == (("vm1", f"{path}: no table 'settings' (is this a CBSD per-VM DB?)"),)
    assert state.environments[0].ip4_addr == "127.0.0.40"


def test_nic_tables_of_other_layouts(workdir: Workdir) -> None:
    """No ``nic_order``: row order; no ``nic_hwaddr`` or no NIC table: no MACs."""
    settings = "CREATE TABLE settings (created TIMESTAMP, ip4_addr text, tags text); INSERT INTO settings VALUES ('2099-01-01', 'DHCP', '0');"
    path = _vm(
        workdir,
        settings + "CREATE TABLE bhyvenic (nic_hwaddr text);",
        "INSERT INTO bhyvenic VALUES ('58:9c:fc:00:00:02')",
        "INSERT INTO bhyvenic VALUES ('0')",
        "INSERT INTO bhyvenic VALUES ('58:9c:fc:00:00:01')",
    )
    [env] = CbsdSource(workdir.root, read_macs=True).read().environments
    assert env.macs == ("58:9c:fc:00:00:02", "58:9c:fc:00:00:01")
    for ddl in ("CREATE TABLE bhyvenic (nic_order integer);", ""):
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE IF EXISTS bhyvenic")
            if ddl:
                conn.execute(ddl)
        conn.close()
        [env] = CbsdSource(workdir.root, read_macs=True).read().environments
        assert env.macs == ()
