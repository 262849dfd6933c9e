"""CBSD workdirs of N environments with a realistic mix, for ``bench/run.py``.

The mix, by ``i % 10`` (so every size has the same proportions):

| i % 10 | environment | registered |
|---|---|---|
| 0 | running bhyve VM (``status=0``, ``jid`` = PID); address in its own per-VM DB | yes |
| 1 | stopped jail | no |
| 2 | running jail on ``DHCP`` (no address CBSD knows) | no (skipped: unaddressable) |
| 3 | running multi-IP jail: two IPv4 and one IPv6, ``consul.port=80``, tags | yes |
| 4-9 | running jail, ``em0#``-prefixed IPv4, one tag | yes |

So 80% of N are registered. Rows are written like CBSD writes them (``testing.sample``:
WAL, full CBSD 14.1 column set, a per-VM ``local.sqlite`` for every VM); the node
rows go in one transaction so that building 5,000 environments takes seconds.

Addresses never reach a real host: ``host_address`` gives 127.1.x.y (answered by
Linux's ``lo``) and ``netns_address`` gives 10.200.x.y ("up": put on the ``lo`` of a
private network namespace) or, for every tenth registered environment, 10.201.x.y
("down": no route in that namespace). IPv6 addresses are in 2001:db8::/32 (RFC 3849)
and are never the registered address (IPv4 comes first).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from testing.sample import Workdir

OWNER = "bench"


def host_address(i: int) -> str:
    a, b = divmod(i, 250)
    return f"127.1.{a}.{b + 1}"


def netns_address(i: int) -> str:
    """10% of every kind is "down" (no route), the rest "up" (on the namespace's lo)."""
    a, b = divmod(i, 250)
    return f"10.{201 if is_down(i) else 200}.{a}.{b + 1}"


def is_down(i: int) -> bool:
    return (i // 10) % 10 == 0


def second_address(i: int, first: str) -> str:
    head, _, last = first.rpartition(".")
    parts = head.split(".")
    return f"{parts[0]}.{int(parts[1]) + 50}.{parts[2]}.{last}"


@dataclass
class Workload:
    workdir: Workdir
    n: int
    #: jname -> the address that should be registered, for every registered environment.
    registered: dict[str, str] = field(default_factory=dict)
    #: Running plain jails (no VM), in creation order: the ones the change-latency test
    #: stops and starts again.
    plain_jails: list[tuple[str, int]] = field(default_factory=list)
    #: Every address a registered environment is probed at (health on), and whether it is up.
    probe_addresses: dict[str, bool] = field(default_factory=dict)
    #: The address of environment ``i`` (``host_address`` or ``netns_address``).
    address: Callable[[int], str] = host_address
    #: Environments added later by ``add_jail``.
    added: int = 0

    def add_jail(self) -> tuple[str, str]:
        """A new running jail, inserted the way ``cbsd jcreate`` + ``jstart`` leave
        its row (``Workdir.add``: one write to the WAL DB): (jname, registered address)."""
        i = self.n + self.added
        self.added += 1
        jname, ip = f"new{i}", self.address(i)
        self.workdir.add(jname, jid=i + 1, status=1, ip4_addr=f"em0#{ip}/24", tags="app")
        return jname, ip


def build(root: Path, n: int, address: Callable[[int], str] = host_address) -> Workload:
    wd = Workdir.create(root, nodename="bench1")
    load = Workload(wd, n, address=address)
    rows: list[dict] = []
    vms: list[tuple[str, str]] = []
    for i in range(n):
        ip = address(i)
        kind = i % 10
        if kind == 0:
            jname = f"vm{i}"
            rows.append(dict(jname=jname, jid=20000 + i, status=0, emulator="bhyve", ip4_addr="DHCP", tags="0"))
            vms.append((jname, ip))
            load.registered[jname] = ip
        elif kind == 1:
            rows.append(dict(jname=f"off{i}", jid=0, status=0, ip4_addr=f"{ip}/24"))
        elif kind == 2:
            rows.append(dict(jname=f"dhcp{i}", jid=i + 1, status=1, ip4_addr="DHCP"))
        elif kind == 3:
            jname = f"j{i}"
            addrs = f"{ip}/24,{second_address(i, ip)}/24,2001:db8::{i:x}/64"
            rows.append(dict(jname=jname, jid=i + 1, status=1, ip4_addr=addrs, tags="web,prod,consul.port=80"))
            load.registered[jname] = ip
            load.plain_jails.append((jname, i + 1))
        else:
            jname = f"j{i}"
            rows.append(dict(jname=jname, jid=i + 1, status=1, ip4_addr=f"em0#{ip}/24", tags="app"))
            load.registered[jname] = ip
            load.plain_jails.append((jname, i + 1))
        if jname_registered(i):
            load.probe_addresses[ip] = not is_down(i)
    _insert(wd, rows)
    for jname, ip in vms:
        wd.set_vm(jname, ip4_addr=ip, tags="vm")
    return load


def jname_registered(i: int) -> bool:
    return i % 10 not in (1, 2)


def _insert(wd: Workdir, rows: list[dict]) -> None:
    """Insert node rows the way ``Workdir.add`` does (same defaults, same columns), in
    one transaction."""
    present = wd.columns()
    conn = sqlite3.connect(wd.node_db, timeout=25, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        for values in rows:
            row = {"jname": values["jname"], "host_hostname": f"{values['jname']}.my.domain", **values}
            row = {k: v for k, v in row.items() if k in present}
            conn.execute(f"INSERT INTO jails ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))
        conn.execute("COMMIT")
    finally:
        conn.close()
