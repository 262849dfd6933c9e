"""Time ``jailsyncd once`` against a real dev Consul for N environments; print a table.

Usage: scripts/setup && CONSUL_BIN=$(scripts/get-consul) .venv/bin/python bench/once.py [N ...]
(default N: 100 1000). Each N gets a fresh workdir and a fresh dev Consul on loopback.
Columns: cold = empty Consul to all registered; noop = the next cycle, nothing to do;
wall = the whole process (start-up included), cycle = the cycle's own duration_ms.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testing/: the repository's helpers

from testing.devconsul import ConsulServer  # noqa: E402
from testing.sample import Workdir  # noqa: E402


def build(root: Path, n: int) -> Workdir:
    """A realistic mix: 70% running jails (some multi-IP/IPv6), 10% stopped, 10% bhyve, 10% DHCP."""
    wd = Workdir.create(root)
    for i in range(n):
        a, b = divmod(i, 250)
        ip = f"127.1.{a}.{b + 1}"
        kind = i % 10
        if kind == 0:
            wd.add(f"vm{i}", jid=10000 + i, status=0, emulator="bhyve", ip4_addr=ip)
        elif kind == 1:
            wd.add(f"off{i}", jid=0, status=0, ip4_addr=ip)
        elif kind == 2:
            wd.add(f"dhcp{i}", jid=i + 1, status=1, ip4_addr="DHCP")
        elif kind == 3:
            wd.add(f"j{i}", jid=i + 1, status=1, ip4_addr=f"{ip}/24,2001:db8::{i:x}/64", tags="web,prod,consul.port=80")
        else:
            wd.add(f"j{i}", jid=i + 1, status=1, ip4_addr=f"em0#{ip}/24", tags="app")
    return wd


def once(config: Path) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jailsyncd", "--config", str(config), "once"], capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"once failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    summary = [json.loads(line) for line in proc.stderr.splitlines() if '"cycle_finished"' in line][-1]
    return wall, summary


def main(sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            wd = build(Path(tmp) / "cbsd", n)
            consul = ConsulServer(os.environ["CONSUL_BIN"]).start()
            try:
                config = Path(tmp) / "c.toml"
                config.write_text(f'[cbsd]\nworkdir = "{wd.root}"\n[consul]\naddress = "{consul.address}"\n[host]\nname = "bench"\n')
                cold_wall, cold = once(config)
                noop_wall, noop = once(config)
                rows.append((n, cold["registered"], cold_wall, cold["duration_ms"], cold["writes"], noop_wall, noop["duration_ms"], noop["writes"], noop["requests"]))
            finally:
                consul.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    header = ("N", "registered", "cold wall s", "cold cycle ms", "cold writes", "noop wall s", "noop cycle ms", "noop writes", "noop requests")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.0f} | {r[4]} | {r[5]:.2f} | {r[6]:.0f} | {r[7]} | {r[8]} |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
