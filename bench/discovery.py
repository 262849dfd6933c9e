"""The added cost of address discovery per cycle (``sync.discover_addresses``); prints a table.

Usage: scripts/setup && .venv/bin/python bench/discovery.py [N] [--rounds R]
(default N 1000, R 20). Root and ``ip`` are needed for the neighbor-table rows (a
private network namespace holding one permanent neighbor entry per VM, listed by
the real ``ip -json neigh``); without them those rows say so.

What one cycle pays for discovery, measured in this process exactly as ``reconcile``
calls it: the CBSD read with MACs minus the read without them, plus
``leases.targets`` and ``AddressDiscovery.discover``. No Consul is involved: the
writes discovery causes are ordinary registrations (see bench/run.py). Scenarios, N
environments each, written the way CBSD writes them:

- ``workload``: bench/workload.py's mix (10% DHCP jails without a MAC: nothing to find);
- ``leases``: every environment needs discovery: N/2 VNET jails with their own
  dhclient lease, N/2 DHCP VMs (with a ``bhyvenic`` MAC) with a dnsmasq lease;
- ``neighbor``: N DHCP VMs found only in the neighbor table (N permanent entries).

``first`` is the first cycle (every file parsed, per-VM DBs opened); ``no-op`` a later
cycle where nothing changed (median of R; files are stat'ed, not parsed). ``skip`` is
what discovery adds to a periodic cycle that ``run`` skips because nothing changed
(``Reconciler._discovery_unchanged``: ``leases.targets`` on the last state and
``AddressDiscovery.discover``, no DB read; median of R): with targets, a skip is no
longer free, since no change feed covers lease files and the neighbor table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testing/: the repository's helpers

from workload import build as build_workload  # noqa: E402

from jailsyncd.adapters.cbsd import CbsdSource  # noqa: E402
from jailsyncd.adapters.discovery import AddressDiscovery  # noqa: E402
from testing.devnet import NetNS, available  # noqa: E402
from jailsyncd.leases import targets  # noqa: E402
from jailsyncd.platform import Platform, _run  # noqa: E402
from testing.sample import Workdir, dhclient_lease  # noqa: E402


def mac(i: int) -> str:
    return f"58:9c:fc:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def build_leases(root: Path, n: int) -> tuple[Workdir, tuple[Path, ...]]:
    wd = Workdir.create(root / "cbsd")
    until = time.time() + 86400
    lines = []
    for i in range(n):
        a, b = divmod(i, 250)
        if i % 2:
            wd.add(f"vnet{i}", jid=i + 1, status=1, ip4_addr="REALDHCP", vnet=1)
            wd.add_nic(f"vnet{i}", mac(i))
            wd.write_dhclient_lease(f"vnet{i}", "eth0", dhclient_lease(f"10.1.{a}.{b + 1}", until - 7200) + dhclient_lease(f"10.2.{a}.{b + 1}", until))
        else:
            wd.add(f"vm{i}", jid=10000 + i, status=0, emulator="bhyve", ip4_addr="DHCP")
            wd.add_nic(f"vm{i}", mac(i))
            lines.append(f"{int(until)} {mac(i)} 10.3.{a}.{b + 1} vm{i} *")
    leases = root / "dnsmasq.leases"
    leases.write_text("\n".join(lines) + "\n")
    return wd, (leases,)


def build_neighbor(root: Path, n: int, ns: NetNS) -> Workdir:
    wd = Workdir.create(root / "cbsd")
    ns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ns.ip("link", "set", "d0", "up")
    ns.ip("link", "set", "d1", "up")
    ns.ip("addr", "add", "10.4.0.1/16", "dev", "d0")
    batch = root / "neigh.batch"
    entries = []
    for i in range(n):
        wd.add(f"vm{i}", jid=10000 + i, status=0, emulator="bhyve", ip4_addr="DHCP")
        wd.add_nic(f"vm{i}", mac(i))
        a, b = divmod(i, 250)
        entries.append(f"neigh add 10.4.{a + 1}.{b + 1} lladdr {mac(i)} dev d0 nud permanent")
    batch.write_text("\n".join(entries) + "\n")
    ns.ip("-batch", str(batch))
    return wd


def measure(wd: Workdir, lease_files: tuple[Path, ...], plat: Platform, rounds: int) -> dict:
    """First and median no-op cost of discovery, and what it did."""
    plain, with_macs = CbsdSource(wd.root), CbsdSource(wd.root, read_macs=True)
    discovery = AddressDiscovery(wd.root, lease_files, plat, clock=lambda: time.time() + 10)  # files count as settled

    def cycle() -> tuple[float, float, int, int]:
        """(discovery's share, read with MACs + targets + discover, targets, found)"""
        t0 = time.perf_counter()
        plain.read()
        t1 = time.perf_counter()
        state = with_macs.read()
        wanted = targets(state.environments)
        found = discovery.discover(wanted, time.time())
        t2 = time.perf_counter()
        return (t2 - t1) - (t1 - t0), t2 - t1, len(wanted), sum(1 for d in found.values() if d.addresses)

    # The first cycle of a fresh process: fresh readers (every per-VM DB opened, every
    # lease file parsed), so the difference is what discovery adds to it. Median of 5.
    firsts = []
    for _ in range(5):
        t0 = time.perf_counter()
        CbsdSource(wd.root).read()
        t1 = time.perf_counter()
        fresh = AddressDiscovery(wd.root, lease_files, plat, clock=lambda: time.time() + 10)
        state = CbsdSource(wd.root, read_macs=True).read()
        fresh.discover(targets(state.environments), time.time())
        t2 = time.perf_counter()
        firsts.append((t2 - t1) - (t1 - t0))
    first = cycle()
    first = (statistics.median(firsts), *first[1:])
    first_parsed, first_runs = discovery.parsed, discovery.neighbor_runs
    noops = [cycle() for _ in range(rounds)]
    noop_parsed, noop_runs = discovery.parsed, discovery.neighbor_runs
    last = with_macs.read()

    def skip() -> float:
        t0 = time.perf_counter()
        discovery.discover(targets(last.environments), time.time())
        return time.perf_counter() - t0

    skips = [skip() for _ in range(rounds)]
    return {
        "skip_ms": statistics.median(skips) * 1000,
        "targets": first[2],
        "found": first[3],
        "first_ms": first[0] * 1000,
        "noop_ms": statistics.median(c[0] for c in noops) * 1000,
        "noop_total_ms": statistics.median(c[1] for c in noops) * 1000,
        "first_parsed": first_parsed,
        "noop_parsed": noop_parsed,
        "neighbor_runs": noop_runs,
        "first_runs": first_runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    opts = parser.parse_args()
    n = opts.n
    rows: list[tuple[str, dict | str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        wd = build_workload(base / "w" / "cbsd", n).workdir
        rows.append(("workload (10% DHCP, no MAC)", measure(wd, (), Platform("linux", run=lambda argv: "[]"), opts.rounds)))
        wd, files = build_leases(base / "l", n)
        rows.append(("leases (N/2 dhclient, N/2 dnsmasq)", measure(wd, files, Platform("linux", run=lambda argv: "[]"), opts.rounds)))
        why = available()
        if why is None:
            with NetNS("jsd-bench") as ns:
                wd = build_neighbor(base / "n", n, ns)
                plat = Platform("linux", run=lambda argv: _run([*ns.prefix(), *argv]))
                rows.append(("neighbor (N VMs, ip -json neigh)", measure(wd, (), plat, opts.rounds)))
        else:
            rows.append(("neighbor (N VMs, ip -json neigh)", f"skipped: {why}"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; N = {n}, {opts.rounds} no-op rounds")
    header = ("scenario", "targets", "found", "first cycle +ms", "no-op cycle +ms", "no-op read+discover ms", "skipped cycle +ms", "files parsed first/no-op", "neighbor runs first/no-op")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in rows:
        if isinstance(r, str):
            print(f"| {name} | {r} |" + " |" * (len(header) - 2))
            continue
        print(
            f"| {name} | {r['targets']} | {r['found']} | {r['first_ms']:.1f} | {r['noop_ms']:.1f} | {r['noop_total_ms']:.1f} | {r['skip_ms']:.1f} | "
            f"{r['first_parsed']}/{r['noop_parsed']} | {r['first_runs']}/{r['neighbor_runs']} |"
        )


if __name__ == "__main__":
    main()
