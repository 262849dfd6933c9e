"""Build CBSD workdirs shaped exactly like CBSD's own, for the demo, tests and benchmarks.

Called by ``scripts/demo`` (``python -m testing.sample DIR``), the test fixtures and
``bench/``. It writes the way CBSD does: stdlib ``sqlite3`` (like CBSD's ``sqlite3``
CLI), WAL journal mode on every open, a 25 s busy timeout, the node DB as
``var/db/inv.<node>.sqlite`` with a ``local.sqlite`` symlink, and the full CBSD 14.1
column set (``data/cbsd-local.sql``, ``data/cbsd-vm.sql``, copied from a fresh install).
Variants: ``schema="old"`` (before ``tags``/``jnameserver``, columns reordered) and
``extra_columns`` (columns jailsyncd does not know).

The example addresses are loopback (127.0.10.x) for IPv4 and the documentation prefix
2001:db8::/32 (RFC 3849) for IPv6, so nothing that probes them can reach a real host.
That holds for the addresses address discovery finds in the sample too: the REALDHCP
jail ``vnet1`` has a dhclient lease of its own (``jails-data/vnet1-data/var/db``), and
the DHCP VM ``win10`` a lease in the host's dnsmasq file, which the sample keeps at
``<root>/dnsmasq.leases`` (``SAMPLE_DHCP_LEASES``; on a real host
``/var/db/dnsmasq.leases``) for ``sync.dhcp_leases``.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: xen and qemu VMs: what ``xcreate``/``qcreate`` add besides the ``jails`` row, in the
#: columns jailsyncd reads (CBSD's share/local-{xen,qemu}*.schema). The node DB gets a
#: table named after the emulator (created with the first such VM, as a fresh install
#: has none); the VM's own DB a ``settings`` table without ``tags`` (``xset``/``qset``
#: write it there only, ``xls``/``qls`` read ``ip4_addr`` from it) and a NIC table.
_OTHER_VM_NODE_TABLE = "CREATE TABLE IF NOT EXISTS {kind} ( jname text default 0 unique PRIMARY KEY, astart integer default 0, vm_cpus integer default 1, vm_ram integer default 536870912 )"
_OTHER_VM_DDL = (
    "CREATE TABLE settings ( created TIMESTAMP DATE DEFAULT (datetime('now','localtime')), astart integer default 0, "
    "vm_cpus integer default 1, vm_ram integer default 536870912, vm_os_type text default freebsd, ip4_addr text default 'DHCP' );\n"
    "CREATE TABLE {kind}nic ( id INTEGER PRIMARY KEY AUTOINCREMENT, name text default 0, nic_order integer default 0, "
    "nic_driver text default 0, nic_hwaddr text default 0 );\n"
)
#: The emulators whose VMs have a per-VM DB of the kind above.
OTHER_VM_KINDS = ("xen", "qemu")

#: Columns added by CBSD upgrades that an older host lacks (``tags`` came in 13.0.2).
_NEWER_COLUMNS = ("tags", "ci_gw4", "zfs_encryption", "boot_delay", "allow_nfsd", "jnameserver")


def _ddl(name: str) -> str:
    return (Path(__file__).resolve().parent / "data" / name).read_text()


def jails_ddl(*, schema: str = "current", extra_columns: tuple[str, ...] = ()) -> str:
    """The node DB's DDL; ``old`` drops the newer columns and reverses the column order."""
    ddl = _ddl("cbsd-local.sql")
    if schema == "current" and not extra_columns:
        return ddl
    match = re.search(r"CREATE TABLE jails \((.*?)\);", ddl, re.S)
    assert match, "cbsd-local.sql has no jails table"
    cols = [c.strip() for c in match.group(1).split(", ") if c.strip()]
    if schema == "old":
        cols = [c for c in cols if c.split()[0] not in _NEWER_COLUMNS]
        # Keep jname first (it is the primary key) and reverse the rest: hosts that
        # were upgraded have their columns in another order than fresh installs.
        cols = cols[:1] + cols[:0:-1]
    cols += [f"{name} text default 0" for name in extra_columns]
    return ddl.replace(match.group(0), f"CREATE TABLE jails ( {', '.join(cols)} );")


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A CBSD-like writer connection: WAL on every open, 25 s busy timeout, closed after use."""
    conn = sqlite3.connect(path, timeout=25, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        yield conn
    finally:
        conn.close()


class Workdir:
    """A CBSD workdir on disk, with the writes CBSD makes on create/start/stop/set."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node_db = root / "var" / "db" / "local.sqlite"

    @classmethod
    def create(
        cls, root: Path, *, nodename: str = "node1", schema: str = "current", extra_columns: tuple[str, ...] = ()
    ) -> "Workdir":
        (root / "var" / "db").mkdir(parents=True, exist_ok=True)
        (root / "jails-system").mkdir(exist_ok=True)
        (root / "nodename").write_text(nodename + "\n")
        real = root / "var" / "db" / f"inv.{nodename}.sqlite"
        with _connect(real) as conn:
            conn.executescript(jails_ddl(schema=schema, extra_columns=extra_columns))
            conn.execute("INSERT INTO local (nodename, hostname, workdir) VALUES (?, ?, ?)", (nodename, f"{nodename}.my.domain", str(root)))
        workdir = cls(root)
        workdir.node_db.symlink_to(real.name)
        return workdir

    def columns(self) -> set[str]:
        with _connect(self.node_db) as conn:
            return {r[1] for r in conn.execute("PRAGMA table_info(jails)")}

    def add(self, jname: str, **values: Any) -> None:
        """Insert a row like ``cbsd jcreate``/``bcreate``; unknown-to-this-schema keys are dropped."""
        row = {"jname": jname, "host_hostname": f"{jname}.my.domain", **values}
        present = self.columns()
        row = {k: v for k, v in row.items() if k in present}
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with _connect(self.node_db) as conn:
            conn.execute(f"INSERT INTO jails ({names}) VALUES ({marks})", tuple(row.values()))
        if values.get("emulator") == "bhyve":
            # `bcreate` registers a VM in the node DB's `bhyve` table as well.
            with _connect(self.node_db) as conn:
                conn.execute("INSERT INTO bhyve (jname, astart) VALUES (?, ?)", (jname, values.get("astart", 0)))
            self.set_vm(jname, ip4_addr=values.get("ip4_addr", "DHCP"), tags=values.get("tags", "0"), astart=values.get("astart", 0))
        elif values.get("emulator") in OTHER_VM_KINDS:
            kind = values["emulator"]
            with _connect(self.node_db) as conn:
                conn.execute(_OTHER_VM_NODE_TABLE.format(kind=kind))
                conn.execute(f"INSERT INTO {kind} (jname, astart) VALUES (?, ?)", (jname, values.get("astart", 0)))
            with self._vm_db(jname, ddl=_OTHER_VM_DDL.format(kind=kind)) as conn:
                conn.execute("INSERT INTO settings (ip4_addr, astart) VALUES (?, ?)", (values.get("ip4_addr", "DHCP"), values.get("astart", 0)))

    def vm_set(self, jname: str, **values: Any) -> None:
        """``xset``/``qset``: update the VM's own ``settings`` row (and ``astart`` in the
        node DB's table of its emulator, as ``xset`` does), leaving the ``jails`` row as
        it was."""
        kind = self.get(jname, "emulator")
        with self._vm_db(jname) as conn:
            conn.execute(f"UPDATE settings SET {', '.join(f'{k} = ?' for k in values)}", tuple(values.values()))
        if "astart" in values:
            with _connect(self.node_db) as conn:
                conn.execute(f"UPDATE {kind} SET astart = ? WHERE jname = ?", (values["astart"], jname))

    def set(self, jname: str, **values: Any) -> None:
        """``cbsd jset``: update columns of one row."""
        assignments = ", ".join(f"{k} = ?" for k in values)
        with _connect(self.node_db) as conn:
            cur = conn.execute(f"UPDATE jails SET {assignments} WHERE jname = ?", (*values.values(), jname))
            if cur.rowcount != 1:
                raise KeyError(jname)

    def start(self, jname: str, jid: int) -> None:
        """What ``cbsd jstart`` leaves behind (for a VM, ``jid`` is the bhyve PID)."""
        emulator = self.get(jname, "emulator")
        self.set(jname, jid=jid, status=0 if emulator == "bhyve" else 1)

    def stop(self, jname: str) -> None:
        self.set(jname, jid=0, status=0)

    def destroy(self, jname: str) -> None:
        with _connect(self.node_db) as conn:
            conn.execute("DELETE FROM jails WHERE jname = ?", (jname,))

    def get(self, jname: str, col: str) -> Any:
        with _connect(self.node_db) as conn:
            row = conn.execute(f"SELECT {col} FROM jails WHERE jname = ?", (jname,)).fetchone()
        if row is None:
            raise KeyError(jname)
        return row[0]

    @contextmanager
    def _vm_db(self, jname: str, ddl: str | None = None) -> Iterator[sqlite3.Connection]:
        """The environment's own DB (``jails-system/<jname>/local.sqlite``), created with
        the per-VM schema (bhyve's unless ``ddl``) on first use (autocommit, like
        ``_connect``)."""
        folder = self.root / "jails-system" / jname
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "local.sqlite"
        fresh = not path.exists()
        with _connect(path) as conn:
            if fresh:
                conn.executescript(ddl or _ddl("cbsd-vm.sql"))
            yield conn

    def set_vm(self, jname: str, **values: Any) -> None:
        """``cbsd bset``: append a row to the per-VM ``settings`` table (newest wins)."""
        with self._vm_db(jname) as conn:
            names = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            # ``created`` has one-second resolution: several bsets in one second tie,
            # and CBSD readers (and jailsyncd) then take the last inserted row.
            conn.execute(f"INSERT INTO settings ({names}) VALUES ({marks})", tuple(values.values()))
        if "astart" in values:
            # `bset astart=...` also writes it to the node DB's `bhyve` table ("back
            # compatible"), but not to `jails.astart`.
            with _connect(self.node_db) as conn:
                conn.execute("UPDATE bhyve SET astart = ? WHERE jname = ?", (values["astart"], jname))


    def add_nic(self, jname: str, mac: str, *, order: int = 0) -> None:
        """``cbsd bhyve-nic``/``jail nic`` add: a NIC with ``mac`` in the environment's
        own DB (``bhyvenic`` for a VM, ``jailnic`` for a jail; created with the per-VM
        schema when the jail has none yet)."""
        emulator = self.get(jname, "emulator")
        with self._vm_db(jname) as conn:
            if emulator == "bhyve":
                conn.execute("INSERT INTO bhyvenic (jname, nic_order, nic_hwaddr) VALUES (?, ?, ?)", (jname, order, mac))
            elif emulator in OTHER_VM_KINDS:
                conn.execute(f"INSERT INTO {emulator}nic (name, nic_order, nic_hwaddr) VALUES (?, ?, ?)", (f"nic{order}", order, mac))
            else:
                conn.execute("INSERT INTO jailnic (name, nic_order, nic_hwaddr) VALUES (?, ?, ?)", (f"eth{order}", order, mac))

    def write_dhclient_lease(self, jname: str, interface: str, text: str) -> Path:
        """What dhclient inside a VNET jail writes: ``var/db/dhclient.leases.<if>`` under
        the jail's data directory (``jails-data/<jname>-data``)."""
        folder = self.root / "jails-data" / f"{jname}-data" / "var" / "db"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"dhclient.leases.{interface}"
        path.write_text(text)
        return path


def dhclient_lease(address: str, expire: float | None, interface: str = "eth0") -> str:
    """One lease block as FreeBSD's dhclient writes it (sbin/dhclient/dhclient.c,
    write_client_lease: times in UTC as ``W YYYY/MM/DD HH:MM:SS``)."""
    when = "never" if expire is None else time.strftime("%w %Y/%m/%d %H:%M:%S", time.gmtime(expire))
    return (
        f'lease {{\n  interface "{interface}";\n  fixed-address {address};\n  option subnet-mask 255.255.255.0;\n'
        f"  option dhcp-lease-time 86400;\n  expire {when};\n}}\n"
    )


#: One environment of every kind the CBSD data-model notes list (jname, columns).
SAMPLE_ENVIRONMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("web1", dict(jid=3, status=1, ip4_addr="127.0.10.10/24", tags="web,prod", astart=1)),
    ("db1", dict(jid=5, status=1, ip4_addr="127.0.10.11/24,2001:db8:10::11/64", host_hostname="db1.example.org", tags="postgres,consul.port=5432")),
    ("mail", dict(jid=0, status=0, ip4_addr="em0#127.0.10.25/24,em0#2001:db8:25::25/64", host_hostname="mail.example.org", astart=1)),
    ("smtp", dict(jid=9, status=1, ip4_addr="em0#127.0.10.26/24,vhid_3#127.0.10.100/24")),
    ("vnet1", dict(jid=7, status=1, ip4_addr="REALDHCP", vnet=1)),
    ("dhcp1", dict(jid=8, status=1, ip4_addr="DHCP")),
    ("test2", dict(jid=0, status=0, ip4_addr="DHCP,DHCPv6")),
    ("newjail", dict(jid=0, status=3, ip4_addr="127.0.10.14", maintenance="upgrading base")),
    ("slave1", dict(jid=11, status=2, ip4_addr="127.0.10.15")),
    ("www1", dict(jid=12, status=1, ip4_addr="127.0.10.21", tags="consul.name=www,consul.port=80,prod")),
    ("www2", dict(jid=13, status=1, ip4_addr="127.0.10.22", tags="consul.name=www,consul.port=80,prod")),
    ("Build_Box", dict(jid=14, status=1, ip4_addr="127.0.10.30")),
    ("private", dict(jid=15, status=1, ip4_addr="127.0.10.31", tags="consul=off")),
    ("freebsd1", dict(jid=48213, status=0, emulator="bhyve", ip4_addr="127.0.10.50", tags="vm", astart=1)),
    ("win10", dict(jid=48377, status=0, emulator="bhyve", ip4_addr="DHCP")),
)
#: The NICs CBSD records for the sample's environments without an address (jname, MAC).
SAMPLE_NICS = (("vnet1", "58:9c:fc:00:10:40"), ("win10", "58:9c:fc:00:10:51"))
#: The host's DHCP server lease file of the sample, relative to its root (dnsmasq format).
SAMPLE_DHCP_LEASES = "dnsmasq.leases"


def create_sample(root: Path, *, nodename: str = "node1") -> Workdir:
    """A workdir holding ``SAMPLE_ENVIRONMENTS``."""
    workdir = Workdir.create(root, nodename=nodename)
    for jname, values in SAMPLE_ENVIRONMENTS:
        workdir.add(jname, **values)
    for jname, mac in SAMPLE_NICS:
        workdir.add_nic(jname, mac)
    # Valid for a year from now: the sample is built right before it is used.
    until = time.time() + 365 * 86400
    workdir.write_dhclient_lease("vnet1", "eth0", dhclient_lease("127.0.10.40", time.time() - 3600) + dhclient_lease("127.0.10.41", until))
    # win10's lease, and one for a MAC CBSD does not know (ignored).
    (root / SAMPLE_DHCP_LEASES).write_text(f"{int(until)} 58:9c:fc:00:10:51 127.0.10.51 win10 *\n{int(until)} 58:9c:fc:00:10:99 127.0.10.99 laptop *\n")
    return workdir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m testing.sample DIR", file=sys.stderr)
        raise SystemExit(2)
    create_sample(Path(sys.argv[1]))
    print(sys.argv[1])
